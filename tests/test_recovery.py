"""Recovery budgets as an axis: validation, cell ids, one compression per row, equal ledgers."""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path

import pytest

from bench.cells import expand
from bench.cli import main
from bench.suite import SuiteError, load_suite

ROOT = Path(__file__).resolve().parent.parent


def recovery_suite(tiny_suite: dict) -> dict:
    suite = dict(tiny_suite)
    suite["finetune"] = {k: v for k, v in suite["finetune"].items() if k not in ("epochs", "lr")}
    suite["recovery"] = {"epochs": [2, 1], "lr_grid": [1.0e-3, 4.0e-3]}
    suite["methods"] = [{"name": "dense"}, {"name": "svd"}, {"name": "prune-l1"},
                        {"name": "funnel"}, {"name": "monarch-scratch"}]
    return suite


def test_a_suite_without_the_axis_keeps_its_cell_ids():
    """quick has no recovery block: every expanded cell id is a committed record."""
    suite, _ = load_suite("quick", check_models=False)
    committed = {p.stem for p in (ROOT / "results" / "quick" / "cells").glob("*.json")}
    ids = {c.id for c in expand(suite)}
    assert ids and ids <= committed
    assert "recovery" not in suite.model_dump(mode="json")


def test_each_budget_is_a_cell_and_ids_differ(tiny_suite, write_suite):
    suite, _ = load_suite(write_suite(recovery_suite(tiny_suite)), check_models=False)
    cells = expand(suite)
    assert Counter(c.recovery_epochs for c in cells) == {1: 5, 2: 5}
    assert [c.recovery_epochs for c in cells[:2]] == [1, 2]  # budgets sorted
    assert len({c.id for c in cells}) == len(cells)
    for c in cells:
        assert c.finetune.epochs == c.recovery_epochs
        assert c.recovery["budgets"] == [1, 2] and c.recovery["lr_grid"] == [1e-3, 4e-3]
    # the two budgets of a row share its family; rows differ
    fams = Counter(c.family_key() for c in cells)
    assert len(fams) == 5 and set(fams.values()) == {2}


@pytest.mark.parametrize("recovery, finetune, message", [
    ({"epochs": [1, 1], "lr_grid": [1e-3]}, {}, "recovery budgets must differ"),
    ({"epochs": [0, 2], "lr_grid": [1e-3]}, {},
     "recovery.epochs[0]: Input should be greater than or equal to 1"),
    ({"epochs": [1], "lr_grid": [-1.0]}, {}, "recovery.lr_grid[0]"),
    ({"epochs": [1], "lr_grid": []}, {}, "recovery.lr_grid"),
    ({"epochs": [1], "lr_grid": [1e-3], "lr": 3}, {},
     "recovery.lr: Unknown field 'lr'. Available: epochs, lr_chosen_on, lr_grid"),
    ({"epochs": [1, 2], "lr_grid": [1e-3]}, {"epochs": 1}, "finetune.epochs: set by recovery"),
    ({"epochs": [1, 2], "lr_grid": [1e-3]}, {"lr": 1e-3}, "finetune.lr: set by recovery"),
    ({"epochs": [1, 2], "lr_grid": [1e-3], "lr_chosen_on": "last-seed"}, {},
     "recovery.lr_chosen_on"),
])
def test_bad_recovery_blocks_are_refused_with_the_field(tiny_suite, write_suite, recovery,
                                                        finetune, message):
    suite = recovery_suite(tiny_suite)
    suite["recovery"] = recovery
    suite["finetune"] = {**suite["finetune"], **finetune}
    path = write_suite(suite)
    with pytest.raises(SuiteError) as err:
        load_suite(path, check_models=False)
    assert str(path) in str(err.value) and message in str(err.value)


def test_one_compression_per_row_one_lr_choice_and_equal_ledgers(
        tiny_suite, write_suite, tmp_path, monkeypatch, capsys):
    """Runs the suite: post methods compress once per row whatever the budgets and lrs
    (funnel, whose gate phase spends recovery budget, once per budget and lr it runs);
    the train method trains once; every row of a budget has the same ledger totals."""
    from bench.plugins import get_method

    calls: Counter = Counter()
    for name in ("svd", "prune-l1", "funnel", "dense", "monarch-scratch"):
        cls = get_method(name)
        for hook in ("compress", "uncompressed", "prepare"):
            original = getattr(cls, hook)

            def counted(self, *args, _original=original, _key=(name, hook), **kwargs):
                calls[_key] += 1
                return _original(self, *args, **kwargs)

            monkeypatch.setattr(cls, hook, counted)
    results = tmp_path / "results"
    assert main(["run", str(write_suite(recovery_suite(tiny_suite))),
                 "--results", str(results)]) == 0
    # the run's work counts a row's shared compression and tuning once, not per budget
    work, wall = map(float, re.search(r"and timing: ([\d.]+)s of ([\d.]+)s wall",
                                      capsys.readouterr().out).groups())
    assert work <= wall
    records = [json.loads(p.read_text()) for p in (results / "cells").glob("*.json")]
    assert len(records) == 10 and all(r["status"] == "ok" for r in records), \
        [(r["method"], r.get("error")) for r in records if r["status"] != "ok"]
    assert calls[("svd", "compress")] == 1
    assert calls[("prune-l1", "compress")] == 1
    assert calls[("dense", "uncompressed")] == 1
    assert calls[("funnel", "compress")] == 3  # two lrs at the largest budget, one more
    assert calls[("monarch-scratch", "prepare")] == 1  # trained once, fine-tuned per budget

    by_budget: dict[int, list[dict]] = {}
    for r in records:
        by_budget.setdefault(r["recovery"]["epochs"], []).append(r)
    def recovery_steps(r: dict) -> int:
        return sum(p["steps"] for p in r["ledger"]["phases"]
                   if p["phase"] in ("finetune", "regularize"))

    per_epoch = recovery_steps(by_budget[1][0])  # optimizer steps in one recovery epoch
    for epochs, rows in by_budget.items():
        totals = {r["ledger"]["total_steps"] for r in rows}
        tuning = {r["ledger"]["tuning"]["steps"] for r in rows}
        assert len(totals) == 1 and len(tuning) == 1, (epochs, totals, tuning)
        assert all(r["ledger"]["violation"] is None for r in rows), \
            [r["ledger"]["violation"] for r in rows]
        for r in rows:
            assert recovery_steps(r) == epochs * per_epoch
            t = r["ledger"]["tuning"]
            assert t["chosen_lr"] in t["lr_grid"] and set(t["val_top1"]) == {"0.001", "0.004"}
            assert t["steps"] == 2 * 2 * per_epoch  # every lr at the largest budget
            used = {p["optimizer"]["lr"] for p in r["ledger"]["phases"]
                    if p["phase"] == "finetune"}
            assert used == {t["chosen_lr"]}
    # the lr choice is the row's, shared by its budgets
    chosen: dict[tuple, set] = {}
    for r in records:
        key = (r["method"], json.dumps(r["target"]))
        chosen.setdefault(key, set()).add(r["ledger"]["tuning"]["chosen_lr"])
    assert all(len(v) == 1 for v in chosen.values())
    # the lr chosen at the largest budget is that budget's own validation winner
    for r in by_budget[2]:
        t = r["ledger"]["tuning"]
        assert r["metrics"]["val_top1"] == pytest.approx(max(t["val_top1"].values()))


def test_the_report_has_a_table_per_budget_the_recovery_view_and_a_summary_at_the_largest(
        tiny_suite, write_suite, tmp_path):
    suite = recovery_suite(tiny_suite)
    suite["methods"] = [{"name": "dense"}, {"name": "svd"}]
    path = write_suite(suite)
    results, out = tmp_path / "results", tmp_path / "report"
    assert main(["run", str(path), "--results", str(results)]) == 0
    assert main(["report", str(path), "--results", str(results), "--out", str(out)]) == 0
    md = (out / "README.md").read_text()
    assert "## mlp on digits: top-1 against the recovery budget" in md
    assert "## mlp on digits · recovery 1 epoch\n" in md
    assert "## mlp on digits · recovery 2 epochs" in md
    assert "### At 1 recovery epoch" in md and "### At 2 recovery epochs" in md
    assert "Every row's recovery lr is chosen from \\[0.001, 0.004\\]" in md
    assert "the same for every row" in md and "(lr " in md
    summary = (out / "summary.md").read_text()
    assert "Shown at 2 recovery epochs" in summary
    assert "recovery 2 epochs" in summary and "recovery 1 epoch" not in summary
    html = (out / "index.html").read_text()
    assert 'id="recovery-pick"' in html and 'data-recovery="1"' in html
    assert (out / "recovery-mlp-digits.png").exists()
    # the site card shows the main (largest) budget, not the first file name
    assert json.loads((out / "scores.json").read_text())["thumb"] == \
        "acc-vs-macs-mlp-digits-recovery-2.svg"
    from bench.report.site import publish_site

    site = publish_site(tmp_path, include_examples=True).read_text()
    assert site.count("mlp on digits") == 1  # one model x dataset, not one per budget
    csv = (out / "results.csv").read_text().splitlines()
    assert "recovery_epochs" in csv[0] and "recovery_lr" in csv[0]


def _entry(method: str, by_seed: dict[int, float]) -> dict:
    from bench.report.stats import estimate

    return {"method": method, "target": "macs<=0.25", "state": "ok", "by_seed": by_seed,
            "est": estimate(list(by_seed.values())), "detail": ""}


def test_an_order_flip_beyond_the_intervals_is_a_finding_and_one_within_noise_is_not():
    from bench.report.recovery_view import mean_order_changes, order_flips, recovery_findings

    def analysis(entries: list[dict]) -> dict:
        return {"ref": None, "tiers": [{"label": "macs<=0.25", "title": "MACs ≤ 0.25× dense",
                                        "entries": entries, "noise": None}]}

    one = analysis([_entry("svd", {0: 0.60, 1: 0.61, 2: 0.62}),
                    _entry("funnel", {0: 0.50, 1: 0.51, 2: 0.52}),
                    _entry("prune", {0: 0.55, 1: 0.65, 2: 0.45})])
    five = analysis([_entry("svd", {0: 0.70, 1: 0.71, 2: 0.72}),
                     _entry("funnel", {0: 0.80, 1: 0.81, 2: 0.82}),
                     _entry("prune", {0: 0.75, 1: 0.60, 2: 0.90})])
    flips = order_flips({1: one, 5: five})
    assert [(f["first"], f["second"], f["budgets"]) for f in flips] == [("svd", "funnel", (1, 5))]
    assert mean_order_changes({1: one, 5: five}) == (3, 3)  # prune swaps too, within noise
    lines = recovery_findings([("resnet on cifar", {"flips": ["x"], "mean_changes": "y"})])
    assert lines == ["resnet on cifar: x."]


def test_post_methods_share_the_workers_once_the_baseline_is_a_checkpoint(tiny_suite,
                                                                          write_suite):
    from bench.run.plan import group_cells

    suite, _ = load_suite(write_suite(recovery_suite(tiny_suite)), check_models=False)
    cells = expand(suite)
    together = group_cells(cells)
    split = group_cells(cells, baseline_cached=lambda key: True)
    post = {"dense", "svd", "prune-l1", "funnel"}
    assert sum(1 for g in together.values() if g[0].method in post) == 1
    assert sum(1 for g in split.values() if g[0].method in post) == 4
    for g in split.values():  # a method's budgets and targets stay in one unit
        assert len({c.method for c in g}) == 1
    train = [g for g in split.values() if g[0].method == "monarch-scratch"]
    assert train == [g for g in together.values() if g[0].method == "monarch-scratch"]
    assert sorted(c.id for g in split.values() for c in g) == sorted(c.id for c in cells)


def test_workers_on_one_disk_split_the_post_methods_before_the_baseline_exists(tiny_suite,
                                                                              write_suite):
    """The unit that trains the baseline goes first, the units that need none next, the
    other post methods last: by then the baseline is a checkpoint, not trained twice."""
    from bench.run.plan import group_cells

    suite, _ = load_suite(write_suite(recovery_suite(tiny_suite)), check_models=False)
    cells = expand(suite)
    units = list(group_cells(cells, baseline_cached=lambda key: False, split=True).values())
    methods = [g[0].method for g in units]
    assert methods == ["dense", "monarch-scratch", "svd", "prune-l1", "funnel"], methods
    for g in units:
        assert len({c.method for c in g}) == 1
    assert sorted(c.id for g in units for c in g) == sorted(c.id for c in cells)
    # one worker (or workers without a shared disk): the baseline's unit keeps them all
    assert list(group_cells(cells, baseline_cached=lambda key: False).keys()) == list(
        group_cells(cells).keys())


def test_the_recovery_view_shows_rows_without_a_result_by_their_state(tmp_path):
    from bench.report.build import environments
    from bench.report.recovery_view import recovery_section

    def analysis(state: str, est) -> dict:
        entry = {"method": "svd", "target": "macs<=0.25", "state": state, "by_seed": {},
                 "est": est, "detail": "no record yet"}
        return {"ref": None, "tiers": [{"label": "macs<=0.25", "title": "MACs ≤ 0.25× dense",
                                        "entries": [entry], "noise": None}]}

    from bench.report.stats import estimate

    sec = recovery_section({1: analysis("ok", estimate([0.5, 0.52, 0.51])),
                            3: analysis("not run", None)}, {}, "m on d", {}, tmp_path, "x")
    cells = sec["tables"][0]["rows"][0]["cells"]
    assert cells[1]["text"] == "not run" and cells[1]["lr"] == ""
    md_env, _ = environments()
    template = md_env.from_string("{% for c in cells %}{{ c.text }}{% if c.lr %} (lr {{ c.lr }})"
                                  "{% endif %};{% endfor %}")
    assert template.render(cells=cells).endswith("not run;")


def test_the_recovery_plot_names_every_method_when_the_last_panel_has_no_data(tmp_path,
                                                                             monkeypatch):
    import matplotlib.pyplot as plt

    from bench.report import recovery_view

    def analysis(entries_by_tier: dict[str, list[dict]]) -> dict:
        return {"ref": None, "tiers": [{"label": label, "title": label, "entries": entries,
                                        "noise": None} for label, entries in
                                       entries_by_tier.items()]}

    pending = {"method": "svd", "target": "macs<=0.125", "state": "not run", "by_seed": {},
               "est": None, "detail": "no record yet"}
    analyses = {b: analysis({"macs<=0.25": [_entry("svd", {0: v, 1: v + 0.01}),
                                            _entry("funnel", {0: v - 0.1, 1: v - 0.09})],
                             "macs<=0.125": [pending]}) for b, v in ((1, 0.5), (3, 0.6))}
    figures = []
    monkeypatch.setattr(recovery_view, "_save", lambda fig, *a: figures.append(fig) or "saved")
    assert recovery_view.recovery_plot(analyses, "m on d", {}, tmp_path, "x") == "saved"
    last = figures[0].axes[-1]
    assert not last.get_legend_handles_labels()[0]  # the 0.125x panel drew no line
    assert [t.get_text() for t in last.texts] == ["no results"]
    assert [t.get_text() for t in last.get_legend().get_texts()] == ["svd", "funnel"]
    plt.close(figures[0])


def test_a_report_without_results_draws_no_empty_plots_and_the_site_shows_no_picture(
        tiny_suite, write_suite, tmp_path):
    from bench.report.site import publish_site

    path = write_suite(recovery_suite(tiny_suite))
    results, reports = tmp_path / "results", tmp_path / "reports"
    assert main(["run", str(path), "--results", str(results), "--dry-run"]) == 0
    out = reports / "tiny"
    assert main(["report", str(path), "--results", str(results), "--out", str(out)]) == 0
    assert not list(out.glob("acc-vs-*.png")) and not list(out.glob("recovery-*.png"))
    assert "No plots: no cell of this table has a result yet." in (out / "README.md").read_text()
    assert json.loads((out / "scores.json").read_text())["thumb"] is None
    site = publish_site(reports, include_examples=True).read_text()
    assert "<img" not in site


def test_lr_chosen_on_each_seed_by_default_keeps_the_committed_ids_and_hash():
    """cifar-cpu was computed before the setting existed: its ids and hash stay."""
    suite, _ = load_suite("cifar-cpu", check_models=False)
    assert suite.recovery is not None and suite.recovery.lr_chosen_on == "each-seed"
    committed = {p.stem for p in (ROOT / "results" / "cifar-cpu" / "cells").glob("*.json")}
    assert committed and committed <= {c.id for c in expand(suite)}
    hashes = {json.loads(p.read_text())["suite_hash"]
              for p in (ROOT / "results" / "cifar-cpu" / "cells").glob("*.json")}
    assert hashes == {suite.hash()}


def first_seed_suite(tiny_suite: dict) -> dict:
    suite = recovery_suite(tiny_suite)
    suite["recovery"]["lr_chosen_on"] = "first-seed"
    suite["methods"] = [{"name": "dense"}, {"name": "svd"}]
    suite["seeds"] = [0, 1]
    return suite


def test_first_seed_tuning_chooses_once_per_row_and_the_other_seeds_reuse_it(
        tiny_suite, write_suite, tmp_path, capsys):
    path = write_suite(first_seed_suite(tiny_suite))
    results = tmp_path / "results"
    # a slice of seed 1 alone cannot run before seed 0 has chosen: stopped before compute
    assert main(["run", str(path), "--results", str(results), "--only", "seed=1"]) == 2
    err = capsys.readouterr().err
    assert "lr_chosen_on is first-seed" in err and "add seed=0 to --only" in err
    assert not list((results / "cells").glob("*.json"))
    assert main(["run", str(path), "--results", str(results), "--jobs", "2"]) == 0
    assert "other cell(s) reuse its recovery-lr choices" in capsys.readouterr().out
    records = [json.loads(p.read_text()) for p in (results / "cells").glob("*.json")]
    assert len(records) == 8 and all(r["status"] == "ok" for r in records)
    chosen = {}
    for r in records:
        t = r["ledger"]["tuning"]
        row = (r["method_name"], r["target_label"])
        if r["seed"] == 0:
            assert "from_seed" not in t and t["steps"] > 0 and r["cost"]["tune_s"] > 0
            chosen[row] = t["chosen_lr"]
        else:  # no tuning of its own: the first seed's lr, its steps shown apart
            assert t["from_seed"] == 0 and t["steps"] == 0 and t["tuned_steps"] > 0
            assert r["cost"]["tune_s"] == 0
    for r in records:
        row = (r["method_name"], r["target_label"])
        assert r["ledger"]["tuning"]["chosen_lr"] == chosen[row]
        # every budget's fine-tune ran at the chosen lr, seed 1's largest budget included
        finetune = [ph for ph in r["ledger"]["phases"] if ph["phase"] == "finetune"]
        assert finetune and all(ph["optimizer"]["lr"] == chosen[row] for ph in finetune)
    out = tmp_path / "report"
    assert main(["report", str(path), "--results", str(results), "--out", str(out)]) == 0
    md = (out / "README.md").read_text()
    assert "on the validation split, on seed 0 and reused for the other seeds" in md
    assert "optimizer steps per row (" in md
    # verify of seed 1 alone lends it the committed seed-0 choice and recomputes equal
    capsys.readouterr()
    assert main(["verify", str(path), "--results", str(results), "--only", "seed=1"]) == 0
    assert "4 same" in capsys.readouterr().out


def test_the_recovery_table_lists_rows_by_mean_at_the_largest_budget(tmp_path):
    """It has no rank column: a row ranked high for a wide interval must not sit above a
    higher mean."""
    from bench.report.recovery_view import recovery_section
    from bench.report.stats import estimate

    def analysis(means: dict[str, float | None]) -> dict:
        entries = [{"method": m, "target": "macs<=0.25", "state": "ok" if v else "not run",
                    "by_seed": {}, "est": estimate([v - 0.01, v, v + 0.01]) if v else None,
                    "detail": ""} for m, v in means.items()]
        return {"ref": None, "tiers": [{"label": "t", "title": "t", "entries": entries,
                                        "noise": None}]}

    sec = recovery_section({1: analysis({"a": 0.6, "b": 0.5, "c": 0.4, "d": None}),
                            3: analysis({"c": 0.7, "a": 0.55, "b": 0.65, "d": None})},
                           {}, "m on d", {}, tmp_path, "x")
    assert [r["method"] for r in sec["tables"][0]["rows"]] == ["c", "b", "a", "d"]


def test_the_lr_a_row_chose_is_per_model_not_merged_over_models():
    """funnel chose 5e-4 on one model and 2e-3 on another: each model's recovery table
    shows its own choice, not '5e-04 ×3, 2e-03 ×2' pooled over both."""
    import pandas as pd

    from bench.report.recovery_view import chosen_lrs

    rows = [{"model": model, "dataset": "fmnist", "method": "funnel", "target": "macs<=0.25",
             "recovery_epochs": 3, "recovery_lr": lr, "seed": seed}
            for model, lr in (("vit", 5e-4), ("resnet", 2e-3)) for seed in (0, 1, 2)]
    rows.append({**rows[0], "seed": 3, "recovery_lr": 2e-3})  # one vit seed chose otherwise
    lrs = chosen_lrs(pd.DataFrame(rows))
    assert lrs[("resnet", "fmnist", "funnel", "macs<=0.25", 3)] == "2e-03"
    assert lrs[("vit", "fmnist", "funnel", "macs<=0.25", 3)] == "5e-04 ×3, 2e-03 ×1"
