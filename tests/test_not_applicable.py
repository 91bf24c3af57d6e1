"""A method that cannot reach a target gives a not-applicable cell: recorded with its
reason, not a failure, never ranked, and done for reruns."""

from __future__ import annotations

import json

import torch

from bench.cli import main
from bench.manifest import read_manifest
from bench.record import load_records
from bench.report.build import analyse
from bench.store import ResultStore


def records(results) -> list[dict]:
    return [json.loads(p.read_text()) for p in (results / "cells").glob("*.json")]


def test_unreachable_targets_are_not_applicable_cells(tiny_suite, write_suite, tmp_path, capsys):
    torch.set_num_threads(1)
    tiny_suite["methods"] = [
        {"name": "dense"},
        {"name": "svd"},
        # a selection that matches no layer: monarch has nothing it can factorize
        {"name": "monarch", "label": "monarch-none", "params": {"include": ["no.such.layer"]}},
        {"name": "tests.na_methods:TrainUnreachable", "label": "unreachable"},
    ]
    tiny_suite["targets"] = [{"macs": 0.5}, {"macs": 0.25}]
    tiny_suite["finetune"]["epochs"] = 0
    path = write_suite(tiny_suite)
    results = tmp_path / "results"
    assert main(["run", str(path), "--results", str(results)]) == 0
    out = capsys.readouterr().out
    assert "4 not applicable, 0 failed" in out
    recs = records(results)
    na = [r for r in recs if r["status"] == "not_applicable"]
    assert sorted(r["method"] for r in na) == ["monarch-none"] * 2 + ["unreachable"] * 2
    for r in na:
        assert "metrics" not in r and "error" not in r
        assert r["target_label"] in r["reason"] or "nothing to train" in r["reason"]
    assert {r["method"] for r in recs if r["status"] == "ok"} == {"dense", "svd"}
    store = ResultStore(results)
    assert all(store.is_done(r["cell_id"], retry_failed=True) for r in na)
    # a rerun, even retrying failures, leaves them alone
    assert main(["run", str(path), "--results", str(results), "--retry-failed"]) == 0
    assert "all 7 cells already have records" in capsys.readouterr().out
    assert {r["cell_id"]: r["created"] for r in records(results)} == \
        {r["cell_id"]: r["created"] for r in recs}
    # the report lists them apart: not failed, not ranked
    (tmp_path / "report").mkdir()
    ctx = analyse(read_manifest(results), load_records(results), tmp_path / "report")
    assert ctx["counts"]["not applicable"] == 4 and ctx["counts"]["failed"] == 0
    assert ctx["counts"]["not run"] == 0 and not ctx["failures"]
    assert {f["method"] for f in ctx["not_applicable"]} == {"monarch-none", "unreachable"}
    ranked = {s["method"] for g in ctx["groups"] for s in g["raw_scores"]["scores"]
              if s["complete"]}
    assert ranked and not ranked & {"monarch-none", "unreachable"}
