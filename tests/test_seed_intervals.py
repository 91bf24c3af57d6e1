"""Intervals over seeds: Student t pooled within a table, ties paired by seed, one seed."""

from __future__ import annotations

import builtins
import math
import re

import pytest

from bench.report import build_report
from bench.report.findings import check_claims, leaders
from bench.report.stats import (
    difference_interval,
    estimate,
    pooled_estimates,
    seed_noise,
    separated,
    t_quantile,
    tie_ranks,
)
from tests.test_report import write_synthetic


def test_t_quantile_matches_tables_with_and_without_scipy(monkeypatch):
    # two-sided 95% critical values of Student's t (any statistics table)
    known = {1: 12.7062, 2: 4.3027, 3: 3.1824, 4: 2.7764, 10: 2.2281, 30: 2.0423}
    for df, q in known.items():
        assert t_quantile(0.975, df) == pytest.approx(q, abs=1e-4)
    real = builtins.__import__

    def no_scipy(name, *args, **kwargs):
        if name.startswith("scipy"):
            raise ImportError(name)
        return real(name, *args, **kwargs)

    t_quantile.cache_clear()
    monkeypatch.setattr(builtins, "__import__", no_scipy)
    try:
        for df, q in known.items():
            assert t_quantile(0.975, df) == pytest.approx(q, abs=1e-4)
        assert t_quantile(0.025, 4) == pytest.approx(-2.7764, abs=1e-4)
    finally:
        monkeypatch.undo()
        t_quantile.cache_clear()


def test_two_agreeing_seeds_take_the_spread_of_their_table():
    # Alone, two seeds that agree give a sliver: sd 7.07e-5, half-width
    # t(0.975, 1) * sd / sqrt(2) = 12.706 * 5e-5 = 0.000635.
    alone = estimate([0.78, 0.7801])
    assert alone.method == "t" and alone.df == 1
    assert alone.hi - alone.lo == pytest.approx(2 * 0.000635, abs=1e-5)
    # Pooled with a row whose two seeds differ by 3.5 pp:
    # s_p^2 = (2 * 0.00005^2 + 2 * 0.0175^2) / 2, s_p = 0.0175001, df = 2,
    # half-width = t(0.975, 2) * s_p / sqrt(2) = 4.302653 * 0.0175001 / 1.414214 = 0.053243
    # for both rows (scipy.stats.t.ppf(0.975, 2) = 4.302653).
    (agree, spread), noise = pooled_estimates([{0: 0.78, 1: 0.7801}, {0: 0.75, 1: 0.785}])
    assert noise.df == 2 and noise.sd == pytest.approx(0.0175001, abs=1e-6)
    for e in (agree, spread):
        assert e.method == "pooled-t" and e.df == 2 and e.seed_based
        assert e.hi - e.mean == pytest.approx(0.053243, abs=1e-6)
        assert e.mean - e.lo == pytest.approx(0.053243, abs=1e-6)
    assert agree.mean == pytest.approx(0.78005) and agree.std == pytest.approx(7.0711e-5, abs=1e-8)
    # a row with one seed in the same table: the pooled sd over sqrt(1)
    (_, _, single), _ = pooled_estimates([{0: 0.78, 1: 0.7801}, {0: 0.75, 1: 0.785},
                                          {0: 0.70}])
    assert single.std is None and single.n == 1 and single.method == "pooled-t"
    assert single.hi - single.mean == pytest.approx(4.302653 * 0.0175001, abs=1e-6)


def test_one_seed_everywhere_falls_back_to_test_samples():
    ests, noise = pooled_estimates([{0: 0.80}, {0: 0.70}], test_n=359)
    assert noise.df == 0 and noise.sd is None
    assert [e.method for e in ests] == ["wilson", "wilson"]
    assert not any(e.seed_based for e in ests)


# Seed effects shared by the rows of a table (same seed, same dense model).
EFFECT = {0: 0.0, 1: 0.03, 2: -0.03}


def test_consistent_paired_differences_rank_apart_though_intervals_overlap():
    a = {s: 0.800 + e for s, e in EFFECT.items()}
    b = {0: 0.789, 1: 0.821, 2: 0.760}  # a - b = +1.1, +0.9, +1.0 pp
    (ea, eb), noise = pooled_estimates([a, b])
    assert ea.overlaps(eb)  # unpaired, the seed effect swamps the 1 pp gap
    d, lo, hi = difference_interval(a, b, noise)
    # residual of value = row + seed: +-0.1 pp, df = 6 - 4 = 2
    assert noise.paired_df == 2 and d == pytest.approx(0.01) and lo > 0
    assert separated(ea, eb, a, b, noise) == 1
    assert tie_ranks([eb, ea], [b, a], noise) == [(2, False), (1, False)]
    assert tie_ranks([eb, ea]) == [(1, True), (1, True)]  # without seeds: overlap


def test_paired_differences_that_disagree_tie_though_intervals_separate():
    # a - b = +4 pp on seed 0, +6 pp on seed 1: rows move against each other, so the
    # residual sd is 1 pp with df 1 and the paired half-width 12.706 * 0.01 * 1 = 12.7 pp;
    # unpaired, s_p = 0.707 pp (df 2) gives +-2.15 pp and the intervals separate.
    a, b = {0: 0.85, 1: 0.86}, {0: 0.81, 1: 0.80}
    (ea, eb), noise = pooled_estimates([a, b])
    assert not ea.overlaps(eb)
    _, lo, hi = difference_interval(a, b, noise)
    assert lo < 0 < hi and hi - lo == pytest.approx(2 * 0.127062, abs=1e-5)
    assert tie_ranks([ea, eb], [a, b], noise) == [(1, True), (1, True)]


def test_rows_without_shared_seeds_compare_unpaired():
    a, b = {0: 0.80, 1: 0.81}, {2: 0.79, 3: 0.80}
    (ea, eb), noise = pooled_estimates([a, b])
    assert difference_interval(a, b, noise) is None
    assert tie_ranks([ea, eb], [a, b], noise) == [(1, True), (1, True)]
    far = {2: 0.50, 3: 0.51}
    (ea, ef), noise = pooled_estimates([a, far])
    assert tie_ranks([ea, ef], [a, far], noise) == [(1, False), (2, False)]


def test_one_seed_never_ties_except_at_equal_accuracy():
    ests = [estimate([v], test_n=359) for v in (0.80, 0.799, 0.70, 0.80)]
    assert all(e.lo < e.mean < e.hi for e in ests)  # Wilson intervals do overlap
    assert tie_ranks(ests, [{0: e.mean} for e in ests]) == [
        (1, True), (3, False), (4, False), (1, True)]
    assert seed_noise([{0: 0.8}, {0: 0.7}]).paired_sd is None


def _rank_cells(md: str) -> list[list[tuple[str, str]]]:
    """(rank, top-1) of every ranked leaderboard row, per table of a report's Markdown."""
    out = []
    for block in md.split("\n### ")[1:]:
        lines = [x for x in block.splitlines() if x.startswith("|")]
        if not lines or not lines[0].startswith("| rank |"):
            continue
        cells = [[c.strip().strip("*") for c in x.split("|")[1:4]] for x in lines[2:]]
        out.append([(c[0], c[2]) for c in cells if c[0] != "ref"])
    return out


def test_one_seed_report_warns_and_marks_no_ties(tmp_path):
    _, results = write_synthetic(tmp_path, seeds=[0], fail_one=False)
    out = tmp_path / "report"
    build_report(results, out)
    md = (out / "README.md").read_text()
    assert "Warning: one seed: ranks are by the single run" in md
    assert "95% CI % (test samples)" in md
    tables = _rank_cells(md)
    assert len(tables) == 3
    for rows in tables:  # '=' only where the single runs score exactly the same
        for rank, acc in rows:
            if rank.startswith("="):
                assert {a for r, a in rows if r == rank} == {acc}
    assert any(rank == "2" for rows in tables for rank, _ in rows)
    assert "percentile bootstrap" not in md
    assert "better by mean (one seed: no interval over seeds" in md  # the front's basis
    assert "◆" in md


def test_seeded_report_states_its_interval(tmp_path):
    _, results = write_synthetic(tmp_path, seeds=[0, 1, 2], fail_one=False)
    out = tmp_path / "report"
    build_report(results, out)
    md = (out / "README.md").read_text()
    assert "Student t interval of the mean over the row's own seeds" in md
    assert "paired by seed" in md and "Warning: one seed" not in md
    assert "better beyond the 95% intervals over seeds" in md  # the front's basis
    assert re.search(r"\| (\*\*)?\d+\.\d\d \([\d.]+×\) ◆(\*\*)? \|", md)  # grid mark
    html = (out / "index.html").read_text()
    assert re.search(r'title="Student t interval of the mean over its own 3 seeds \(df 2\)"',
                     html)


def rec(method, top1, seed, target="macs<=0.5"):
    return {"status": "ok", "model": "m", "dataset": "d", "target_label": target,
            "method": method, "method_name": method, "seed": seed,
            "metrics": {"top1": top1, "test_n": 1000, "budget": {"met": True}}}


def test_claims_and_leaders_pair_by_seed():
    svd = {s: 0.800 + e for s, e in EFFECT.items()}
    funnel = {s: v + d for (s, v), d in zip(svd.items(), (0.011, 0.009, 0.010))}
    rs = [rec("svd", v, s) for s, v in svd.items()]
    rs += [rec("funnel", v, s) for s, v in funnel.items()]
    c = {c.key: c for c in check_claims(rs)}["funnel"]
    assert c.verdict == "supported" and c.one_seed == 0
    assert "difference paired by seed +1.00 pp" in c.supported[0]
    (line,) = leaders(rs)
    assert line.startswith("m/d macs<=0.5: funnel") and "svd" not in line
    assert math.isclose(sum(funnel.values()) / 3, 0.81)


def test_three_seeds_keep_their_own_spread_two_seeds_borrow_the_tables():
    """A noisy row does not widen a steady one once each has three seeds; with two seeds
    the table's pooled spread stands in for a row's own."""
    from bench.report.stats import difference_interval, pooled_estimates, seed_noise, t_quantile

    noisy = {0: 0.70, 1: 0.82, 2: 0.76}
    steady = {0: 0.780, 1: 0.7801, 2: 0.7802}
    (n_est, s_est), _ = pooled_estimates([noisy, steady])
    assert (n_est.method, s_est.method) == ("t", "t")
    sd = 0.0001  # the steady row's own sample sd
    assert s_est.hi - s_est.mean == pytest.approx(t_quantile(0.975, 2) * sd / 3 ** 0.5)
    assert n_est.hi - n_est.lo > 100 * (s_est.hi - s_est.lo)
    two = [{0: 0.70, 1: 0.82}, {0: 0.780, 1: 0.7801}]
    ests, noise = pooled_estimates(two)
    assert {e.method for e in ests} == {"pooled-t"}
    assert ests[1].hi - ests[1].lo == pytest.approx(ests[0].hi - ests[0].lo)
    # a pair with three shared seeds: Student t of its own per-seed differences
    a, b = {0: 0.80, 1: 0.81, 2: 0.79}, {0: 0.78, 1: 0.79, 2: 0.77}
    d, lo, hi = difference_interval(a, b, seed_noise([a, b]))
    assert d == pytest.approx(0.02) and lo == pytest.approx(0.02) and hi == pytest.approx(0.02)
