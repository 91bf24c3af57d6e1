"""A tiny run's records carry the paired latency (speedup with interval) and the breakdown."""

from __future__ import annotations

import json

from bench.cli import main


def test_records_have_paired_latency_and_breakdown(tiny_suite, write_suite, tmp_path):
    path = write_suite(tiny_suite)
    results = tmp_path / "results"
    assert main(["run", str(path), "--results", str(results)]) == 0
    records = {r["method"]: r for r in
               (json.loads(p.read_text()) for p in (results / "cells").glob("*.json"))}
    assert set(records) == {"dense", "svd"}
    for method, r in records.items():
        paired = r["metrics"]["latency_paired"]
        assert "cpu" in paired
        assert ("cuda" in paired) == (r["metrics"]["cuda_status"] == "measured")
        for key in r["metrics"]["latency"]["cpu"]:
            e = paired["cpu"][key]
            s = e["speedup"]
            assert s["ci_low"] <= s["median"] <= s["ci_high"] and s["rounds"] >= 2, method
            assert isinstance(s["noisy"], bool) and e["threads"] == 1
            assert e["model"]["p50_ms"] > 0 and e["reference"]["p50_ms"] > 0
        bd = r["metrics"]["latency_breakdown"]
        assert bd["model"]["total_ms"] > 0 and bd["reference"]["matmul_conv"] > 0
