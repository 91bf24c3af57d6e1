"""A row's architecture is timed once on a machine; its other seeds and budgets reuse it."""

from __future__ import annotations

import copy
import json
from collections import defaultdict

import torch
from torch import nn

from bench.cells import Cell
from bench.cli import main
from bench.measure.fingerprint import architecture_fingerprint
from bench.run.driver import run_suite
from bench.run.timing_share import SharedTimings
from bench.slice import slice_suite
from bench.store import ResultStore
from bench.suite import load_suite


def test_the_fingerprint_ignores_weights_and_sees_shapes_dtypes_and_settings():
    a = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 4, 1))
    b = copy.deepcopy(a)
    with torch.no_grad():
        for p in b.parameters():
            p.mul_(-3.0)
    assert architecture_fingerprint(a) == architecture_fingerprint(b)
    narrower = nn.Sequential(nn.Conv2d(3, 6, 3), nn.ReLU(), nn.Conv2d(6, 4, 1))
    strided = nn.Sequential(nn.Conv2d(3, 8, 3, stride=2), nn.ReLU(), nn.Conv2d(8, 4, 1))
    gelu = nn.Sequential(nn.Conv2d(3, 8, 3), nn.GELU(), nn.Conv2d(8, 4, 1))
    double = copy.deepcopy(a).double()
    prints = {architecture_fingerprint(m) for m in (a, narrower, strided, gelu, double)}
    assert len(prints) == 5


def sharing_suite(tiny_suite: dict) -> dict:
    suite = dict(tiny_suite)
    suite["finetune"] = {k: v for k, v in suite["finetune"].items() if k not in ("epochs", "lr")}
    suite["recovery"] = {"epochs": [1, 2], "lr_grid": [1.0e-3]}
    suite["methods"] = [{"name": "dense"}, {"name": "prune-l1"}]
    suite["seeds"] = [0, 1]
    return suite


def _rows(store: ResultStore) -> dict[str, list[dict]]:
    rows: dict[str, list[dict]] = defaultdict(list)
    for rec in store.records():
        rows[rec["method"]].append(rec)
    return rows


def test_a_rows_seeds_and_budgets_reuse_one_timing_and_each_cell_can_be_timed(
        tiny_suite, write_suite, tmp_path):
    path = write_suite(sharing_suite(tiny_suite))
    suite, _ = load_suite(path, check_models=False)
    first = ResultStore(tmp_path / "first")
    run_suite(slice_suite(suite, "seed=0"), first.root, say=lambda line: None)
    run_suite(suite, first.root, say=lambda line: None)  # seed 1 in a later run
    for method, recs in _rows(first).items():
        assert len(recs) == 4  # 2 seeds x 2 budgets, one architecture per row
        prints = {r["metrics"]["timing"]["architecture"] for r in recs}
        assert len(prints) == 1, method
        timed = [r for r in recs if "shared_from" not in r["metrics"]["timing"]]
        assert len(timed) == 1, method
        for r in recs:
            if r is not timed[0]:
                assert r["metrics"]["timing"]["shared_from"] == timed[0]["cell_id"]
                assert r["metrics"]["latency"] == timed[0]["metrics"]["latency"]
                assert r["metrics"]["latency_paired"] == timed[0]["metrics"]["latency_paired"]
                assert r["cost"]["measure_s"] < timed[0]["cost"]["measure_s"]
        assert timed[0]["seed"] == 0  # the earlier run's record lent its figures to seed 1
    # counts are still taken per cell
    assert all("macs" in r["metrics"] for rs in _rows(first).values() for r in rs)

    each = ResultStore(tmp_path / "each")
    run_suite(suite, each.root, say=lambda line: None, share_timing=False)
    assert all("shared_from" not in r["metrics"]["timing"] for r in each.records())

    # the report says how many cells carry another cell's timing
    assert main(["report", str(path), "--results", str(first.root),
                 "--out", str(tmp_path / "rep")]) == 0
    md = (tmp_path / "rep" / "README.md").read_text()
    assert "\n\nLatency: 2 of 8 ok cells were timed; the other 6 deploy" in md
    assert "Latency: 2 of 8" in (tmp_path / "rep" / "index.html").read_text()
    assert main(["report", str(path), "--results", str(each.root),
                 "--out", str(tmp_path / "rep-each")]) == 0
    assert "ok cells were timed" not in (tmp_path / "rep-each" / "README.md").read_text()


def test_a_record_from_another_cpu_lends_no_timing(tiny_suite, write_suite, tmp_path):
    tiny_suite["seeds"] = [0]
    path = write_suite(tiny_suite)
    suite, _ = load_suite(path, check_models=False)
    store = ResultStore(tmp_path / "r")
    run_suite(suite, store.root, say=lambda line: None)
    rec = next(r for r in store.records() if r["method"] == "dense")
    cell = Cell.model_validate(rec["cell"]).at_seed(5)  # the same row on a seed not yet run
    fingerprint = rec["metrics"]["timing"]["architecture"]
    donor = SharedTimings(store).find(cell, fingerprint)
    assert donor is not None and donor.cell_id == rec["cell_id"]
    assert SharedTimings(store).find(cell, "0" * 16) is None  # another architecture
    assert SharedTimings(store).find(Cell.model_validate(rec["cell"]), fingerprint) is None

    path_of = store.record_path(rec["cell_id"])
    moved = json.loads(path_of.read_text())
    moved["env"]["cpu"] = "Some Other CPU"
    path_of.write_text(json.dumps(moved))
    assert SharedTimings(store).find(cell, fingerprint) is None
