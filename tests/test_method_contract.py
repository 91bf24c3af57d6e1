"""Every registered method honours the plugin contract, end to end through the runner.

Registry-driven: a new method is exercised here without anyone writing a test
for it. Each one runs on a tiny MLP on digits at one MACs budget and must
produce an ok record that meets the budget and a deployable model made of
plain layers.
"""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from bench import Method, get_method, method_names
from bench.cli import main

# Modules a deployable model may contain: real compute layers, no masks, gates or hooks.
PLAIN_LAYER_TYPES = (nn.Linear, nn.Conv2d, nn.ReLU, nn.Flatten, nn.Sequential, nn.Identity,
                     nn.GELU, nn.LayerNorm, nn.BatchNorm2d, nn.Dropout)


def test_every_method_has_a_name_kind_and_validated_params():
    names = method_names()
    assert {"dense", "svd"} <= set(names)
    for name in names:
        cls = get_method(name)
        assert issubclass(cls, Method) and cls.name == name
        assert cls.kind in ("post", "train")
        cls()  # defaults validate
        with pytest.raises(Exception, match="not_a_parameter|Extra inputs"):
            cls({"not_a_parameter": 1})


def test_every_method_runs_and_meets_a_macs_budget(tiny_suite, write_suite, tmp_path):
    torch.set_num_threads(1)
    tiny_suite["models"] = [{"name": "mlp", "kwargs": {"hidden": [64, 64]}}]
    tiny_suite["methods"] = [{"name": n} for n in method_names()]
    tiny_suite["targets"] = [{"macs": 0.5}]
    tiny_suite["train"]["epochs"] = 1
    path = write_suite(tiny_suite)
    results = tmp_path / "results"
    code = main(["run", str(path), "--results", str(results)])
    records = {r["method_name"]: r for r in
               (json.loads(p.read_text()) for p in (results / "cells").glob("*.json"))}
    failed = {k: r["error"]["message"] for k, r in records.items() if r["status"] != "ok"}
    assert code == 0 and not failed, failed
    assert set(records) == set(method_names())
    for name, record in records.items():
        m = record["metrics"]
        if name == "dense":
            assert m["macs_ratio"] == pytest.approx(1.0)
            continue
        assert m["budget"]["met"], (name, m["budget"])
        assert m["macs_ratio"] <= 0.5 + 1e-9, name
        assert 0.0 <= m["top1"] <= 1.0
