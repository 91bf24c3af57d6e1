"""Reports: statistics, curve scores, escaping, exports, README block and site.

Records here are synthetic but follow the runner's schema exactly (cell ids
come from the suite's own expansion), so the report code sees what a real run
writes, in milliseconds instead of minutes.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd
import pytest
import yaml

from bench.cells import expand
from bench.cli import main
from bench.manifest import write_manifest
from bench.record import load_record
from bench.report import build_report, md_escape, publish_site, record_view, update_readme
from bench.report.readme import markers, rebase_links
from bench.report.scores import area_scores, cross_ranking, iso_accuracy, mean_over_range
from bench.report.stats import (
    bootstrap_ci,
    estimate,
    infer_test_size,
    tie_ranks,
    wilson_interval,
)
from bench.suite import load_suite

XSS_METHOD = "<script>alert(1)</script>"
XSS_ERROR = "shape mismatch in <img src=x onerror=alert(2)> | layer *fc1*"
TEST_N = 359
# Per method label: accuracy drop (in test samples) per halving of MACs, and latency factor.
PROFILE = {"svd": (6, 0.9), "svd-global": (4, 0.8), XSS_METHOD: (20, 1.0)}


def suite_dict(seeds: list[int], wide: bool = True) -> dict:
    models = [{"name": "mlp", "kwargs": {"hidden": [32]}}]
    if wide:
        models.append({"name": "mlp", "label": "mlp-wide", "kwargs": {"hidden": [64]}})
    return {
        "name": "synth",
        "description": "Synthetic records <b>with markup</b> in the description.",
        "datasets": [{"name": "digits"}],
        "models": models,
        "methods": [{"name": "dense"}, {"name": "svd"},
                    {"name": "svd", "label": "svd-global",
                     "params": {"rank_selection": "global"}},
                    {"name": "svd", "label": XSS_METHOD, "params": {"rank_selection": "energy"}}],
        "targets": [{"macs": 0.5}, {"macs": 0.25}, {"macs": 0.125}],
        "seeds": seeds,
        "latency": {"batch_sizes": [1, 64]},
    }


def fake_record(cell, suite, seed_noise: int, fail: bool = False) -> dict:
    """A record shaped like GroupRunner.record/run_cell/measure would write it."""
    base = {
        "cell_id": cell.id, "status": "failed" if fail else "ok", "suite": suite.name,
        "suite_hash": suite.hash(), "model": cell.model.display,
        "dataset": cell.dataset.display, "seed": cell.seed, "method": cell.method_label,
        "method_name": cell.method, "params": cell.params, "target": cell.target,
        "target_label": cell.target_label, "cell": cell.model_dump(mode="json"),
        "data_info": {"source": "synthetic"}, "created": "2026-01-02T03:04:05+00:00",
        "env": {"python": "3.11.7", "torch": "2.4.0", "cpu": "Test CPU", "cpu_count": 2,
                "gpu": None, "git_commit": "abc123"},
    }
    if fail:
        base["error"] = {"type": "RuntimeError", "message": XSS_ERROR, "traceback": "tb"}
        return base
    ratio = cell.target_obj.ratio if cell.target_obj else 1.0
    halvings = -math.log2(ratio)
    drop, lat_factor = PROFILE.get(cell.method_label, (0, 1.0))
    correct = 350 - round(drop * halvings) + seed_noise
    macs_ratio = ratio * 0.97 if ratio < 1 else 1.0
    b1 = 0.2 + 0.3 * macs_ratio * lat_factor
    b64 = 2.0 + 10.0 * macs_ratio * lat_factor
    lat = {"b1": {"median_ms": b1, "p90_ms": b1 * 1.1, "iqr_ms": 0.01, "n": 50},
           "b64": {"median_ms": b64, "p90_ms": b64 * 1.1, "iqr_ms": 0.1, "n": 20}}
    cuda = ({"b1": {"median_ms": b1 / 8, "p90_ms": b1 / 7, "n": 50}}
            if cell.model.display == "mlp-wide" else None)  # a GPU measured one model only
    metrics = {"top1": correct / TEST_N, "top5": 1.0, "val_top1": 0.9, "params": 1000,
               "params_ratio": macs_ratio * 1.01, "macs": 5000, "macs_ratio": macs_ratio,
               "latency": {"cpu": lat, "cuda": cuda}, "macs_fvcore": 5000,
               "a_future_metric": 7}
    if cell.target_obj:
        metrics["budget"] = {"metric": "macs", "ratio": ratio, "achieved": macs_ratio,
                             "met": True, "over_by": 0.0}
    cost = {"baseline_train_s": 3.0, "method_train_s": 0.0, "compress_s": 0.1,
            "finetune_s": 1.0, "cell_s": 4.5}
    return {**base, "metrics": metrics, "cost": cost}


def write_synthetic(tmp_path: Path, seeds: list[int], fail_one: bool = True,
                    wide: bool = False) -> tuple[Path, Path]:
    """Suite file and results dir with one record per cell (one failed)."""
    suite_path = tmp_path / "synth.yaml"
    suite_path.write_text(yaml.safe_dump(suite_dict(seeds, wide), sort_keys=False))
    suite, _ = load_suite(suite_path)
    cells_dir = tmp_path / "results" / "cells"
    cells_dir.mkdir(parents=True)
    failed = False
    for i, cell in enumerate(expand(suite)):
        fail = (fail_one and not failed and cell.method_label == XSS_METHOD
                and cell.target == {"macs": 0.125} and cell.seed == seeds[0])
        failed |= fail
        rec = fake_record(cell, suite, seed_noise=(i * 7 + cell.seed * 3) % 5 - 2, fail=fail)
        (cells_dir / f"{cell.id}.json").write_text(json.dumps(rec))
    write_manifest(suite, tmp_path / "results")
    return suite_path, tmp_path / "results"


# -- statistics ---------------------------------------------------------------
def test_bootstrap_ci_brackets_mean_and_is_deterministic():
    vals = [0.90, 0.92, 0.91, 0.95]
    lo, hi = bootstrap_ci(vals)
    assert lo < sum(vals) / 4 < hi and 0.90 <= lo and hi <= 0.95
    assert bootstrap_ci(vals) == (lo, hi)
    assert bootstrap_ci([0.5]) == (0.5, 0.5)


def test_wilson_interval_matches_known_value():
    lo, hi = wilson_interval(0.5, 100)
    assert lo == pytest.approx(0.4038, abs=1e-3) and hi == pytest.approx(0.5962, abs=1e-3)
    assert wilson_interval(1.0, 50)[1] == 1.0


def test_infer_test_size_recovers_denominator():
    assert infer_test_size([277 / 359, 356 / 359, 300 / 359]) == 359
    assert infer_test_size([1 / 4, 2 / 4, 3 / 4]) == 4
    assert infer_test_size([0.75, 0.75, 0.5]) is None  # too few distinct values to tell
    assert infer_test_size([1.0, 0.0, 0.5]) is None
    assert infer_test_size([0.1234567, 0.2, 0.3]) is None  # not counts over any n <= max


def test_ties_within_noise_share_rank():
    a = estimate([0.900, 0.905, 0.895])
    b = estimate([0.899, 0.904, 0.897])
    c = estimate([0.50, 0.51, 0.49])
    assert tie_ranks([c, a, b]) == [(3, False), (1, True), (1, True)]
    sharp = [estimate([0.90, 0.90001]), estimate([0.80, 0.80001])]
    assert tie_ranks(sharp) == [(1, False), (2, False)]
    single = estimate([0.9], test_n=359)
    assert single.method == "wilson" and single.lo < 0.9 < single.hi


def test_a_rank_is_never_firmer_than_the_intervals():
    """A wide row is not beaten by the second row: it shares the second rank, although a
    narrow row with a higher mean sits between them (the old leader rule gave it =3)."""
    top = estimate([0.600, 0.601, 0.599])
    second = estimate([0.560, 0.561, 0.559])
    narrow = estimate([0.500, 0.501, 0.499])
    wide = estimate([0.455, 0.525, 0.49])  # mean 0.49, below narrow's, spread 7 pp
    assert tie_ranks([top, second, narrow, wide]) == [(1, False), (2, True), (3, False),
                                                       (2, True)]


# -- curve scores -------------------------------------------------------------
def test_area_over_common_range_is_mean_accuracy():
    flat = [(0.125, 0.8), (0.5, 0.8)]
    rising = [(0.25, 0.6), (1.0, 1.0)]
    assert mean_over_range(flat, 0.25, 0.5) == pytest.approx(0.8)
    # linear in log2 x from 0.6 at 1/4 to 1.0 at 1: over [1/4, 1/2] it averages 0.7
    assert mean_over_range(rising, 0.25, 0.5) == pytest.approx(0.7)
    scores, rng = area_scores({"flat": flat, "rising": rising, "one": [(0.3, 0.9)]})
    assert rng == pytest.approx((0.25, 0.5))
    assert scores == {"flat": pytest.approx(0.8), "rising": pytest.approx(0.7), "one": None}


def test_iso_accuracy_is_cheapest_point_keeping_99_percent():
    pts = [(0.5, 0.985), (0.25, 0.975), (0.125, 0.90)]
    assert iso_accuracy(pts, 0.99) == 0.5  # needs 0.9801: only 0.985 qualifies
    assert iso_accuracy(pts, 0.98) == 0.25  # needs 0.9702
    assert iso_accuracy(pts, 1.0) is None
    assert iso_accuracy(pts, None) is None


def test_cross_ranking_averages_ranks_over_groups():
    rows = [{"group": 1, "method": "a", "auc_macs": 0.9, "iso_macs": 0.2},
            {"group": 1, "method": "b", "auc_macs": 0.8, "iso_macs": 0.5},
            {"group": 2, "method": "a", "auc_macs": 0.7, "iso_macs": None},
            {"group": 2, "method": "b", "auc_macs": 0.75, "iso_macs": 0.25},
            {"group": 2, "method": "c", "auc_macs": None}]
    out = {r["method"]: r for r in cross_ranking(rows)}
    assert out["a"]["auc_macs_rank"] == 1.5 and out["b"]["auc_macs_rank"] == 1.5
    assert out["a"]["wins"] == 1 and out["b"]["iso_macs_rank"] == 1.5
    assert out["c"]["auc_macs_rank"] is None and out["c"]["groups"] == 0
    assert out["c"]["appears"] == 1 and not out["c"]["complete"]
    assert [r["method"] for r in cross_ranking(rows)][-1] == "c"


def test_cross_ranking_never_averages_over_unequal_coverage():
    """A method scored in one group of three (where it wins) is marked incomplete, gets no
    mean rank, and does not push the complete methods' ranks down; its head-to-head win
    rate counts only the comparisons it had."""
    rows = [{"group": g, "method": m, "auc_macs": v} for g, m, v in
            [(1, "a", 0.9), (1, "b", 0.8), (1, "c", 0.99),
             (2, "a", 0.9), (2, "b", 0.8), (3, "a", 0.7), (3, "b", 0.8)]]
    ranking = cross_ranking(rows)
    out = {r["method"]: r for r in ranking}
    assert [r["method"] for r in ranking] == ["a", "b", "c"]
    assert not out["c"]["complete"] and out["c"]["auc_macs_rank"] is None
    assert (out["c"]["groups"], out["c"]["n_groups"]) == (1, 3)
    assert out["a"]["auc_macs_rank"] == pytest.approx(4 / 3)  # ranks 1, 1, 2 without c
    assert out["c"]["win_rate"] == 1.0 and out["c"]["comparisons"] == 2
    assert out["a"]["win_rate"] == pytest.approx(2 / 4) and out["a"]["comparisons"] == 4


# -- escaping and flattening --------------------------------------------------
def test_md_escape_neutralises_html_and_table_syntax():
    out = md_escape("<b>x</b> | *y* `z`\nline")
    assert "<" not in out and ">" not in out and "&lt;b&gt;" in out
    assert "\\|" in out and "\\*y\\*" in out and "\\`" in out and "\n" not in out


def test_record_view_tolerates_missing_and_extra_fields():
    base = {"suite": "s", "model": "m", "dataset": "d"}
    recs = [load_record({**base, "cell_id": "x", "status": "ok", "method": "new-method",
                         "metrics": {"top1": 0.5, "size_bytes": 10, "later": {"a": 1}}}),
            load_record({**base, "cell_id": "y", "status": "failed", "method": "other",
                         "error": {"type": "E", "message": "boom"}})]
    df = record_view(recs)
    assert df.loc[0, "top1"] == 0.5 and df.loc[0, "size_bytes"] == 10
    assert math.isnan(df.loc[0, "macs_ratio"]) and df.loc[1, "error"] == "boom"
    assert df.loc[0, "target"] == "dense" and df.loc[1, "state"] == "failed"


# -- full report --------------------------------------------------------------
def test_report_end_to_end(tmp_path):
    suite_path, results = write_synthetic(tmp_path, seeds=[0, 1, 2], wide=True)
    suite, _ = load_suite(suite_path)
    out = tmp_path / "report"
    written = {p.name for p in build_report(results, out)}
    for name in ("README.md", "index.html", "results.csv", "results.json", "scores.json",
                 "summary.md"):
        assert name in written
    for kind in ("acc-vs-macs", "acc-vs-params", "acc-vs-latency", "speedup"):
        for ext in ("png", "svg"):
            assert (out / f"{kind}-mlp-digits.{ext}").stat().st_size > 1000
    md = (out / "README.md").read_text()
    # tiers are readable (no '&lt;=' in labels), methods escaped, failure listed
    assert "### MACs ≤ 0.5× dense" in md and "&lt;=" not in md
    assert "{{" not in md and "{%" not in md and "n/a" in md
    assert "| svd-global | svd | post | truncated SVD per layer" in md  # methods table
    assert XSS_METHOD not in md and "&lt;script&gt;alert(1)&lt;/script&gt;" in md
    assert "## Findings" in md and "- mlp/digits macs<=0.5: svd-global" in md
    assert "RuntimeError: shape mismatch in &lt;img" in md and "<img" not in md
    assert "\\|" in md and "| failed |" in md
    assert "| svd |" in md and "| ref | dense |" in md
    assert "top-1 % ↑" in md and "MACs ×dense ↓" in md and "GPU p50 ms ↓ (batch 1)" in md
    # mean ± std over 3 seeds, dense reference, speedups; GPU latency only where measured
    assert " ± " in md and "| ref |" in md and "×" in md
    mlp, wide = md.split("## mlp on digits")[1].split("## mlp-wide on digits")
    assert "GPU p50" not in mlp  # n/a in every row: the column is hidden
    header = next(line for line in wide.splitlines() if line.startswith("| rank |"))
    gpu_col = header.split(" | ").index("GPU p50 ms ↓ (batch 1)")
    gpu = [line.split(" | ")[gpu_col] for line in wide.splitlines() if line.startswith("| ref |")]
    assert gpu and float(gpu[0]) > 0
    assert "](acc-vs-gpu-latency-mlp-wide-digits.png)" in wide
    assert not (out / "acc-vs-gpu-latency-mlp-digits.svg").exists()
    html = (out / "index.html").read_text()
    assert "<script>alert" not in html and "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "&lt;img src=x onerror=alert(2)&gt;" in html and "{{" not in html
    assert "<b>with markup</b>" not in html and 'src="acc-vs-macs-mlp-digits.svg"' in html
    assert 'title="p90 0.550 ms, IQR 0.010 ms (median over seeds)"' in html  # dense, batch 1
    # tidy CSV: one row per cell, few columns; the long format has every metric leaf
    csv = pd.read_csv(out / "results.csv")
    assert len(csv) == len(expand(suite)) and len(csv.columns) <= 40
    assert {"top1", "macs_ratio", "cpu_b64_ms", "cost_s", "error"} <= set(csv.columns)
    long = pd.read_csv(out / "results-long.csv")
    assert set(long.columns) == {"cell_id", "metric", "value"}
    assert {"metrics.latency.cpu.b64.p90_ms", "metrics.a_future_metric",
            "cost.finetune_s", "top1"} <= set(long.metric)
    # every record is copied beside the page, as linked
    rec = json.loads((out / "records" / f"{csv.cell_id[0]}.json").read_text())
    assert rec["cell_id"] == csv.cell_id[0] and rec["schema_version"] == 2
    assert f'href="records/{csv.cell_id[0]}.json"' in html
    js = json.loads((out / "results.json").read_text())
    assert len(js) == len(csv) and all("cell_id" in r for r in js)
    scores = json.loads((out / "scores.json").read_text())
    group = scores["groups"][0]
    by_method = {s["method"]: s for s in group["scores"]}
    # svd-global loses the least accuracy per halving: it wins the curve score
    assert by_method["svd-global"]["auc_macs"] > by_method["svd"]["auc_macs"]
    # one failed seed of three: the entry stands on the other two and says so
    assert by_method[XSS_METHOD]["complete"] and "(n=2 of 3)" in md
    md_ranking = md.split("## Ranking across models and datasets")[1]
    assert "| svd-global | 2 of 2 | 100% | 4 | 1.00 |" in md_ranking


@pytest.fixture(scope="module")
def single_seed_report(tmp_path_factory) -> Path:
    """reports/synth/ rendered from one seed and no failures (built once for this module)."""
    tmp = tmp_path_factory.mktemp("single")
    suite_path, results = write_synthetic(tmp, seeds=[0], fail_one=False)
    suite, _ = load_suite(suite_path)
    build_report(results, tmp / "reports" / "synth")
    return tmp / "reports" / "synth"


def test_report_ranks_ties_and_shows_single_seed_intervals(single_seed_report):
    md = (single_seed_report / "README.md").read_text()
    assert f"Wilson interval over the {TEST_N} test samples" in md
    assert "| **=1** |" in md  # svd and svd-global are 2 samples apart on 359: a tie
    assert "Failed" not in md and "Incomplete" not in md


def test_report_tolerates_sparse_records(tmp_path):
    """No dense record, no latency or cost, unknown latency variants: n/a, not a crash."""
    suite_path, results = write_synthetic(tmp_path, seeds=[0], fail_one=False)
    suite, _ = load_suite(suite_path)
    for path in (results / "cells").glob("*.json"):
        rec = json.loads(path.read_text())
        if rec["method"] == "dense":
            path.unlink()
            continue
        rec["cost"] = {}
        rec["metrics"]["latency"] = {"cpu_channels_last": {"b1": {"median_ms": 1.0}}}
        if rec["method"] == "svd" and rec["target"] == {"macs": 0.5}:
            rec["metrics"].pop("top1")  # unranked, still exported
        path.write_text(json.dumps(rec))
    out = tmp_path / "report"
    build_report(results, out)
    md = (out / "README.md").read_text()
    assert "| ref |" not in md and "1 not run, of 10 expected" in md
    assert "| no top-1 | svd |" in md
    assert "never" not in md and "| n/a |" in md and "### MACs ≤ 0.25× dense" in md
    assert (out / "acc-vs-macs-mlp-digits.png").exists()
    assert not (out / "acc-vs-latency-mlp-digits.png").exists()


def test_summary_says_why_a_model_has_no_plot(tmp_path):
    """A model without any result gets a sentence in its plot cell, not an empty one."""
    suite_path, results = write_synthetic(tmp_path, seeds=[0], fail_one=False, wide=True)
    for path in (results / "cells").glob("*.json"):
        if json.loads(path.read_text())["model"] == "mlp-wide":
            path.unlink()
    build_report(results, tmp_path / "report")
    summary = (tmp_path / "report" / "summary.md").read_text()
    plot_row = summary.strip().splitlines()[-1]
    assert "](acc-vs-macs-mlp-digits.png)" in plot_row
    assert "| no plot: no cell of this model has a result yet |" in plot_row


def test_times_from_another_machine_than_the_reference_are_marked(tmp_path):
    """Rows computed on a faster CPU must not look faster in ms or cheaper in seconds:
    their absolute figures get a mark and the report says why; speedups stay unmarked."""
    suite_path, results = write_synthetic(tmp_path, seeds=[0, 1], fail_one=False)
    for path in (results / "cells").glob("*.json"):
        rec = json.loads(path.read_text())
        rec["env"]["cpu_capability"] = "AVX2"
        if rec["method"] == "svd-global":
            rec["env"]["cpu_capability"] = "AVX512"
        path.write_text(json.dumps(rec))
    build_report(results, tmp_path / "report")
    md = (tmp_path / "report" / "README.md").read_text()
    assert ("records were measured on several machines: Test CPU (AVX2, 2 cores) "
            in md.replace("\\", ""))
    rows = [line for line in md.splitlines() if "[s0](records/" in line]  # budget tables
    global_rows = [r for r in rows if "| svd-global |" in r]
    plain_rows = [r for r in rows if "| svd |" in r]
    assert global_rows and all("†" in r for r in global_rows)
    assert plain_rows and not any("†" in r for r in plain_rows)
    assert "† measured (on some seed) on another machine (Test CPU (AVX512, 2 cores))" in md
    csv = pd.read_csv(tmp_path / "report" / "results.csv")
    assert set(csv.machine) == {"Test CPU (AVX2, 2 cores)", "Test CPU (AVX512, 2 cores)"}


def test_rows_of_a_seed_from_two_trained_dense_models_are_flagged(tmp_path):
    """A baseline trained again (lost checkpoint, other CPU) under part of a seed's rows
    breaks the pairing on one dense model: the report says which seed and how many cells."""
    suite_path, results = write_synthetic(tmp_path, seeds=[0, 1], fail_one=False)
    for path in (results / "cells").glob("*.json"):
        rec = json.loads(path.read_text())
        weights = "b" * 16 if rec["method"] == "svd-global" and rec["seed"] == 1 else \
            f"{rec['seed']}" * 16
        rec["ledger"] = {"phases": [{"phase": "pretrain", "steps": 5, "weights": weights},
                                    {"phase": "finetune", "steps": 5}], "total_steps": 10}
        path.write_text(json.dumps(rec))
    build_report(results, tmp_path / "report")
    md = (tmp_path / "report" / "README.md").read_text().replace("\\", "")
    assert ("seed 1 of mlp on digits: its rows start from 2 different trained dense models "
            f"(weights {'1' * 16} (7 cells), {'b' * 16} (3 cells))") in md
    assert "seed 0 of mlp" not in md


def test_readme_block_is_generated_between_markers(single_seed_report):
    tmp_path = single_seed_report.parents[1]
    readme = tmp_path / "README.md"
    start, end = markers("synth")
    readme.write_text(f"# Project\n\nintro\n\n{start}\nSTALE-CONTENT\n{end}\n\n## After\n")
    assert update_readme(readme, "synth", tmp_path / "reports" / "synth")
    text = readme.read_text()
    assert "STALE-CONTENT" not in text and text.startswith("# Project")
    assert text.endswith("## After\n")
    assert "](reports/synth/acc-vs-macs-mlp-digits.png)" in text
    assert "](reports/synth/index.html)" in text and "svd-global" in text
    assert not update_readme(readme, "synth", tmp_path / "reports" / "synth")  # idempotent
    readme.write_text("no markers")
    with pytest.raises(ValueError, match="leaderboard:synth:start"):
        update_readme(readme, "synth", tmp_path / "reports" / "synth")


def test_rebase_links_leaves_absolute_targets():
    md = "[a](x.png) [b](https://e.org/y) [c](#anchor) [d](/abs)"
    assert rebase_links(md, "reports/q") == (
        "[a](reports/q/x.png) [b](https://e.org/y) [c](#anchor) [d](/abs)")


def test_cli_report_readme_and_publish(tmp_path, monkeypatch):
    suite_path, results = write_synthetic(tmp_path, seeds=[0])
    monkeypatch.chdir(tmp_path)
    start, end = markers("synth")
    Path("README.md").write_text(f"intro\n{start}\n{end}\n")
    assert main(["report", str(suite_path), "--results", str(results),
                 "--readme", "README.md"]) == 0
    assert "](reports/synth/" in Path("README.md").read_text()
    (tmp_path / "reports" / "empty").mkdir()  # not a report: ignored
    assert main(["publish"]) == 0
    index = (tmp_path / "reports" / "site" / "index.html").read_text()
    assert 'href="synth/index.html"' in index and "Ranking across suites" in index
    assert (tmp_path / "reports" / "site" / "synth" / "acc-vs-macs-mlp-digits.svg").exists()
    # a digits-only suite is an example: listed, but out of the headline ranking by default
    assert "suites left out: synth" in index and "&lt;script&gt;" not in index
    assert "Built " in index and "commit" in index
    assert main(["publish", "--include-examples"]) == 0
    index = (tmp_path / "reports" / "site" / "index.html").read_text()
    assert XSS_METHOD not in index and "&lt;script&gt;" in index


def test_publish_needs_reports(tmp_path, capsys):
    with pytest.raises(FileNotFoundError, match="no suite reports"):
        publish_site(tmp_path)
    assert main(["publish", "--reports", str(tmp_path)]) == 2
    assert "no suite reports" in capsys.readouterr().err



def test_over_budget_entries_are_shown_but_not_ranked(tmp_path):
    """A model that misses its budget must not win the tier it did not meet."""
    suite_path, results = write_synthetic(tmp_path, seeds=[0], fail_one=False)
    suite, _ = load_suite(suite_path)
    for path in (results / "cells").glob("*.json"):
        rec = json.loads(path.read_text())
        if rec["method"] == XSS_METHOD and rec["target"] == {"macs": 0.5}:
            rec["metrics"]["top1"] = 1.0  # best accuracy, but at twice the budget
            rec["metrics"]["macs_ratio"] = 1.0
            rec["metrics"]["budget"].update(met=False, achieved=1.0, over_by=0.5)
            path.write_text(json.dumps(rec))
    out = tmp_path / "report"
    build_report(results, out)
    tier = (out / "README.md").read_text().split("### MACs ≤ 0.5× dense")[1].split("###")[0]
    rows = [line for line in tier.splitlines() if line.startswith("| ")]
    over = [r for r in rows if r.startswith("| over budget |")]
    assert len(over) == 1 and "⚠ +0.500" in over[0] and "100.00" in over[0]
    assert rows.index(over[0]) == len(rows) - 1  # listed after every ranked entry
    assert any(r.startswith("| **1** |") or r.startswith("| **=1** |") for r in rows)
    # its 100% at 1.0x MACs would "keep 99% of dense" at once: over budget, it never scores
    scores = json.loads((out / "scores.json").read_text())["groups"][0]["scores"]
    xss = next(s for s in scores if s["method"] == XSS_METHOD)
    assert not xss["complete"] and xss["iso_macs"] is None and xss["auc_macs"] is None
    assert all(s["iso_macs"] is None or s["iso_macs"] < 1 for s in scores)


def test_a_row_first_only_through_its_seed_spread_is_marked_in_the_tables(tmp_path):
    """Bold alone reads as "a winner": a row that no row beats only because its seeds spread
    widely, below a steadier row the leader beats, carries a mark and its note."""
    _, results = write_synthetic(tmp_path, seeds=[0, 1, 2], fail_one=False)
    tops = {"svd": (0.90, 0.90, 0.90), "svd-global": (0.85, 0.851, 0.849),
            XSS_METHOD: (0.80, 0.95, 0.70)}
    for path in (results / "cells").glob("*.json"):
        rec = json.loads(path.read_text())
        if rec["method"] in tops and rec["target"] == {"macs": 0.5}:
            rec["metrics"]["top1"] = tops[rec["method"]][rec["seed"]]
            path.write_text(json.dumps(rec))
    build_report(results, tmp_path / "out")
    md = (tmp_path / "out" / "README.md").read_text().replace("\\", "")
    assert "rank 1 only through its wide seed spread" in md
    pivot_rows = [line.split("|") for line in md.splitlines()
                  if line.startswith("| ") and "× dense" not in line]
    wide = next(cells for cells in pivot_rows if cells[2].strip().startswith("**81.67 ("))
    assert "≈" in wide[2]  # rank 1 (bold), marked
    steady = next(cells for cells in pivot_rows if cells[1].strip() == "svd-global")
    assert steady[2].strip().startswith("85.00 (") and "≈" not in steady[2]  # beaten, plain
