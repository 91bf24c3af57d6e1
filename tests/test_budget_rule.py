"""One budget for every row, end to end through the runner and the method registry.

Every registered method runs on a tiny MLP on digits; its record's ledger must
show the suite's total optimizer steps with no violation, the dense reference
must be fine-tuned like the others, and methods that train longer, change
their weight decay without a declared parameter or run their own optimizer
must be flagged.
"""

from __future__ import annotations

import json
import math

import torch

from bench import method_names
from bench.cli import main
from bench.data import load_dataset


def run(tiny_suite, write_suite, tmp_path, methods: list[dict]) -> dict[str, dict]:
    torch.set_num_threads(1)
    tiny_suite["models"] = [{"name": "mlp", "kwargs": {"hidden": [48, 48]}}]
    tiny_suite["methods"] = methods
    tiny_suite["targets"] = [{"macs": 0.5}]
    tiny_suite["train"].update(epochs=1, batch_size=256)
    tiny_suite["finetune"].update(epochs=2, batch_size=256)
    path = write_suite(tiny_suite)
    results = tmp_path / "results"
    main(["run", str(path), "--results", str(results)])
    return {r["method"]: r for r in
            (json.loads(p.read_text()) for p in (results / "cells").glob("*.json"))}


def test_every_registered_method_spends_the_same_total_steps(tiny_suite, write_suite,
                                                             tmp_path):
    records = run(tiny_suite, write_suite, tmp_path, [{"name": n} for n in method_names()])
    failed = {k: r["error"]["message"] for k, r in records.items() if r["status"] != "ok"}
    assert not failed and set(records) == set(method_names()), failed
    spe = math.ceil(len(load_dataset("digits").train) / 256)
    budget = (1 + 2) * spe
    for name, r in records.items():
        ledger = r["ledger"]
        assert ledger["budget_steps"] == budget, name
        assert ledger["total_steps"] == budget, (name, ledger)
        assert ledger["violation"] is None, (name, ledger["violation"])
        assert sum(p["steps"] for p in ledger["phases"]) == budget
        assert ledger["phases"][-1]["phase"] == "finetune", name
    dense = records["dense"]["ledger"]["phases"]
    assert [p["phase"] for p in dense] == ["pretrain", "finetune"]
    assert dense[1]["steps"] == 2 * spe and dense[1]["optimizer"]["lr"] == 1e-3
    assert records["dense"]["cost"]["finetune_s"] > 0
    funnel = [p["phase"] for p in records["funnel"]["ledger"]["phases"]]
    assert funnel == ["pretrain", "regularize", "finetune"]
    for name in ("lorita", "maestro", "monarch-scratch", "dense-small"):
        assert records[name]["ledger"]["phases"][0]["phase"] == "method_train", name
    assert 0 <= records["maestro"]["method_info"]["full_rank_top1"] <= 1
    # one trained dense model behind every post-training row, named by its weights
    weights = {r["ledger"]["phases"][0].get("weights") for r in records.values()
               if r["ledger"]["phases"][0]["phase"] == "pretrain"}
    assert len(weights) == 1 and None not in weights, weights
    for r in records.values():  # what the report's "reference may be undertrained" needs
        assert 0 <= r["metrics"]["top1"] <= 1 and r["metrics"]["test_n"] > 0


def test_methods_that_break_the_budget_are_flagged(tiny_suite, write_suite, tmp_path):
    records = run(tiny_suite, write_suite, tmp_path, [
        {"name": "dense"},
        {"name": "tests.budget_methods:TrainsLonger", "label": "longer"},
        {"name": "tests.budget_methods:OwnWeightDecay", "label": "own-wd"},
        {"name": "tests.budget_methods:OwnOptimizer", "label": "own-opt"},
        {"name": "lorita", "label": "lorita-wd", "params": {"weight_decay": 0.01}},
    ])
    assert all(r["status"] == "ok" for r in records.values())
    assert records["dense"]["ledger"]["violation"] is None
    longer = records["longer"]["ledger"]
    assert longer["total_steps"] > longer["budget_steps"]
    assert "optimizer steps in all, the suite's budget is" in longer["violation"]
    own_wd = records["own-wd"]["ledger"]["violation"]
    assert "method_train: weight_decay 0.1 instead of the suite's" in own_wd
    assert "not declared" in own_wd
    assert "3 optimizer steps outside the harness's training loop" in \
        records["own-opt"]["ledger"]["violation"]
    lorita = records["lorita-wd"]
    assert lorita["ledger"]["violation"] is None  # declared: a parameter, shown in params
    assert lorita["params"]["weight_decay"] == 0.01
    assert lorita["ledger"]["phases"][0]["optimizer"]["weight_decay"] == 0.01
