"""Failure isolation: a failing cell becomes a failed record and the suite goes on."""

from __future__ import annotations

import json

import pytest

from bench.cli import main

PLUGINS = "tests.failing_methods"


def _records(results) -> dict[str, dict]:
    out = {}
    for p in (results / "cells").glob("*.json"):
        r = json.loads(p.read_text())
        out[r["method"] + " " + r["target_label"]] = r
    return out


def test_raise_nan_oom_are_recorded_and_the_rest_finishes(tiny_suite, write_suite, tmp_path,
                                                         capsys):
    tiny_suite["targets"] = [{"macs": 0.5}, {"macs": 0.25}]
    tiny_suite["methods"] += [
        {"name": f"{PLUGINS}:Raises", "label": "raises"},
        {"name": f"{PLUGINS}:NaNLoss", "label": "nan"},
        {"name": f"{PLUGINS}:OutOfMemory", "label": "oom", "targets": [{"macs": 0.5}]},
    ]
    path = write_suite(tiny_suite)
    results = tmp_path / "results"
    assert main(["run", str(path), "--results", str(results)]) == 1
    out = capsys.readouterr().out
    recs = _records(results)
    assert len(recs) == 8
    for key in ("dense dense", "svd macs<=0.5", "svd macs<=0.25"):
        assert recs[key]["status"] == "ok", key
    raised = recs["raises macs<=0.5"]
    assert raised["status"] == "failed"
    assert raised["error"]["type"] == "RuntimeError"
    assert "deliberate failure in compress" in raised["error"]["message"]
    assert "Traceback" in raised["error"]["traceback"]
    assert raised["cell"]["method"] == f"{PLUGINS}:Raises"  # the cell config travels along
    # the NaN training runs once; its second target fails on the cached failure
    nan = sorted((recs["nan macs<=0.5"], recs["nan macs<=0.25"]),
                 key=lambda r: r["error"]["type"])
    assert [r["error"]["type"] for r in nan] == ["NonFiniteLossError", "StageFailedError"]
    assert "NonFiniteLossError" in nan[1]["error"]["message"]
    assert out.count("training nan") == 1
    assert recs["oom macs<=0.5"]["error"]["type"] == "OutOfMemoryError"
    assert "5 failed cell(s)" in out and "--retry-failed" in out
    log = (results / "cells" / f"{raised['cell_id']}.log").read_text()
    assert "deliberate failure in compress" in log and "== failed" in log

    ok_before = {k: r["created"] + r["cell_id"] for k, r in recs.items() if r["status"] == "ok"}
    assert main(["run", str(path), "--results", str(results)]) == 0  # failures are kept
    assert "nothing to recompute" in capsys.readouterr().out
    assert main(["run", str(path), "--results", str(results), "--retry-failed"]) == 1
    out = capsys.readouterr().out
    assert "5 of 8 cells to run" in out
    recs = _records(results)
    assert {k: r["created"] + r["cell_id"] for k, r in recs.items()
            if r["status"] == "ok"} == ok_before


@pytest.mark.parametrize("jobs", ["1", "2"])
def test_failing_dense_baseline_fails_its_group_once(tiny_suite, write_suite, tmp_path, capsys,
                                                     jobs):
    """With two workers the dense row and svd are units of their own that share the
    baseline: whichever trains it first fails, the other fails with its error, untrained."""
    tiny_suite["train"].update(optimizer="sgd", lr=1e30)  # diverges to inf/NaN at once
    tiny_suite["targets"] = [{"macs": 0.5}, {"macs": 0.25}]
    path = write_suite(tiny_suite)
    results = tmp_path / "results"
    assert main(["run", str(path), "--results", str(results), "--jobs", jobs]) == 1
    out = capsys.readouterr().out
    assert out.count("training dense baseline") == 1
    recs = _records(results)
    assert len(recs) == 3 and all(r["status"] == "failed" for r in recs.values())
    types = sorted(r["error"]["type"] for r in recs.values())
    assert types == ["NonFiniteLossError", "StageFailedError", "StageFailedError"]
    assert not list((results / "checkpoints").glob("*.pt"))  # nothing cached from a failure
