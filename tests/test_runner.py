"""End to end on a tiny suite: records, report, and reruns that recompute nothing."""

from __future__ import annotations

import json

from bench.cli import main


def test_run_report_and_rerun(tiny_suite, write_suite, tmp_path, capsys):
    path = write_suite(tiny_suite)
    results, out = tmp_path / "results", tmp_path / "report"
    assert main(["run", str(path), "--results", str(results)]) == 0
    records = [json.loads(p.read_text()) for p in (results / "cells").glob("*.json")]
    assert len(records) == 2 and all(r["status"] == "ok" for r in records)
    svd = next(r for r in records if r["method"] == "svd")
    m = svd["metrics"]
    assert m["macs_ratio"] <= 0.5 and m["budget"]["met"]
    assert 0 <= m["top1"] <= 1 and m["latency"]["cpu"]["b1"]["median_ms"] > 0
    assert svd["env"]["torch"] and svd["cost"]["baseline_train_s"] > 0
    capsys.readouterr()

    assert main(["run", str(path), "--results", str(results)]) == 0
    assert "nothing to recompute" in capsys.readouterr().out

    assert main(["report", str(path), "--results", str(results), "--out", str(out)]) == 0
    md = (out / "README.md").read_text()
    assert "| svd |" in md and "| dense |" in md
    assert (out / "index.html").exists() and list(out.glob("*.png"))


def test_changed_target_runs_only_new_cells(tiny_suite, write_suite, tmp_path, capsys):
    path = write_suite(tiny_suite)
    results = tmp_path / "results"
    assert main(["run", str(path), "--results", str(results)]) == 0
    tiny_suite["targets"].append({"params": 0.4})
    path = write_suite(tiny_suite)
    capsys.readouterr()
    assert main(["run", str(path), "--results", str(results)]) == 0
    out = capsys.readouterr().out
    assert "1 of 3 cells to run" in out
    assert "cached checkpoint" in out
