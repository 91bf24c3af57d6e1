"""monarch-scratch trains one model per target; shared training marks re-projections."""

from __future__ import annotations

import json

import torch

from bench.cells import expand
from bench.cli import main
from bench.suite import Suite


def suite_dict(tiny_suite: dict, params: dict) -> dict:
    tiny_suite["models"] = [{"name": "mlp", "kwargs": {"hidden": [64, 64]}}]
    tiny_suite["methods"] = [{"name": "monarch-scratch", "params": params}]
    tiny_suite["targets"] = [{"macs": 0.5}, {"macs": 0.125}]
    tiny_suite["train"]["epochs"] = 1
    tiny_suite["finetune"]["epochs"] = 0
    return tiny_suite


def test_each_target_has_its_own_training_key(tiny_suite):
    cells = expand(Suite.model_validate(suite_dict(tiny_suite, {})))
    assert len(cells) == 2 and len({c.training_key() for c in cells}) == 2
    assert {c.params["train_ratio"] for c in cells} == {0.5, 0.125}
    shared = expand(Suite.model_validate(suite_dict(tiny_suite, {"per_target": False})))
    assert len({c.training_key() for c in shared}) == 1
    assert all(c.params["train_ratio"] is None for c in shared)


def run(tiny_suite, write_suite, tmp_path, params: dict) -> dict[str, dict]:
    torch.set_num_threads(1)
    path = write_suite(suite_dict(tiny_suite, params))
    results = tmp_path / "results"
    assert main(["run", str(path), "--results", str(results)]) == 0
    return {r["target_label"]: r for r in
            (json.loads(p.read_text()) for p in (results / "cells").glob("*.json"))}


def test_targets_are_trained_from_scratch_at_their_own_nblocks(tiny_suite, write_suite,
                                                               tmp_path):
    records = run(tiny_suite, write_suite, tmp_path, {})
    loose, tight = records["macs<=0.5"], records["macs<=0.125"]
    for rec, ratio in ((loose, 0.5), (tight, 0.125)):
        info = rec["method_info"]
        assert rec["status"] == "ok" and info["trained_for"] == {"macs": ratio}
        assert info["reprojected"] is False and "reprojected_from" not in info
        assert info["nblocks"] == info["trained_nblocks"]
        assert rec["metrics"]["macs_ratio"] <= ratio
    assert tight["method_info"]["trained_nblocks"] > loose["method_info"]["trained_nblocks"]


def test_shared_training_labels_reprojected_points(tiny_suite, write_suite, tmp_path):
    records = run(tiny_suite, write_suite, tmp_path, {"per_target": False, "nblocks": 4})
    tight = records["macs<=0.125"]["method_info"]
    assert tight["reprojected"] is True
    assert tight["reprojected_from"] == {"nblocks": 4, "trained_for": None}
    assert tight["nblocks"] > 4
