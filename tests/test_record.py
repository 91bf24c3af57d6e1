"""The typed record, its versions, the metric table and the run manifest."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import pandas as pd
import pytest

import bench.record as record_mod
from bench.manifest import ManifestError, read_manifest, write_manifest
from bench.record import (
    SCHEMA_VERSION,
    Metric,
    RecordError,
    load_record,
    load_records,
    metric_columns,
)
from bench.report import build_report, record_view
from bench.suite import load_suite
from tests.test_report import write_synthetic

V1 = {"schema": 1, "cell_id": "abc", "status": "ok", "suite": "s", "suite_hash": "h",
      "model": "mlp", "dataset": "digits", "seed": 0, "method": "svd[r=1]",
      "method_name": "svd", "params": {"r": 1}, "target": {"macs": 0.5},
      "target_label": "macs<=0.5", "cell": {"seed": 0}, "data_info": {"sizes": {"test": 9}},
      "env": {"cpu": "X"}, "created": "2026-01-01T00:00:00+00:00",
      "metrics": {"top1": 0.9, "latency": {"cpu": {"b1": {"median_ms": 1.5}}, "cuda": None},
                  "budget": {"met": True}},
      "cost": {"baseline_train_s": 1.0, "finetune_s": 2.0, "cell_s": 4.0},
      "method_info": {"ranks": {"fc": 3}}}


def test_version_1_records_are_upgraded_not_misread():
    r = load_record(dict(V1))
    assert r.schema_version == SCHEMA_VERSION and r.status == "ok"
    assert r.target_metric == "macs" and r.target_ratio == 0.5
    assert r.get("metrics.latency.cpu.b1.median_ms") == 1.5
    assert r.get("metrics.latency.cuda.b1.median_ms") is None
    assert r.cost.total_s == 3.0 and r.ledger is None
    assert r.model_extra["data_info"] == {"sizes": {"test": 9}}  # unknown fields are kept
    no_key = {k: v for k, v in V1.items() if k != "schema"}
    assert load_record(no_key).to_json() == r.to_json()
    again = load_record(r.to_json())  # version 2 round trip
    assert again == r and again.to_json()["schema_version"] == 2


def test_unknown_versions_and_bad_records_name_the_file(tmp_path):
    path = tmp_path / "cells" / "abc.json"
    path.parent.mkdir()
    path.write_text(json.dumps({**V1, "schema_version": 3}))
    with pytest.raises(RecordError, match=r"abc\.json: record schema_version 3 is not "
                                          r"supported; this lowrank-bench reads versions 1, 2"):
        load_record(path)
    with pytest.raises(RecordError, match="abc.json"):
        load_records(tmp_path)  # never skipped silently
    path.write_text(json.dumps({**V1, "status": "exploded"}))
    with pytest.raises(RecordError, match=r"abc\.json: invalid record \(version 1\): status"):
        load_record(path)
    path.write_text("{half a record")
    assert load_records(tmp_path) == []  # an interrupted write: the cell did not run


def test_new_statuses_ledger_and_reason():
    r = load_record({**V1, "schema_version": 2, "status": "not_applicable",
                     "reason": "nothing to factorize", "metrics": {},
                     "ledger": {"phases": [{"phase": "finetune", "epochs": 1, "steps": 10,
                                            "optimizer": {"name": "adamw"}}],
                                "total_steps": 10, "budget_steps": 10, "violation": None}})
    assert r.status == "not_applicable" and r.reason == "nothing to factorize"
    assert r.ledger.total_steps == 10 and r.get("ledger.phases")[0].phase == "finetune"


def test_one_metric_entry_reaches_view_csv_and_leaderboard(tmp_path, monkeypatch):
    """Adding a metric is one METRICS entry: no other file changes."""
    suite_path, results = write_synthetic(tmp_path, seeds=[0], fail_one=False)
    energy = Metric("energy_mj", "energy", "metrics.a_future_metric", "mJ", ".1f", "lower",
                    csv=True, leaderboard=True, description="energy per inference")
    monkeypatch.setattr(record_mod, "METRICS", [*record_mod.METRICS, energy])
    records = load_records(results)
    view = record_view(records)
    assert "energy_mj" in view and set(view.energy_mj.dropna()) == {7.0}
    out = tmp_path / "report"
    build_report(results, out)
    csv = pd.read_csv(out / "results.csv")
    assert "energy_mj" in csv.columns and set(csv.energy_mj.dropna()) == {7.0}
    md = (out / "README.md").read_text()
    assert "| energy mJ ↓ |" in md and "| 7.0 |" in md
    html = (out / "index.html").read_text()
    assert '<th title="energy per inference" class="num">energy mJ ↓</th>' in html


def test_metric_table_expands_per_batch():
    cols = [c for _, c, _, _ in metric_columns({"cpu": ["b1", "b64"], "cuda": []},
                                                "leaderboard")]
    assert "cpu_b1_ms" in cols and "speedup_b64" in cols and "cuda_b1_ms" not in cols
    assert len({m.name for m in record_mod.METRICS}) == len(record_mod.METRICS)


def test_manifest_round_trip_and_errors(tmp_path):
    suite_path, results = write_synthetic(tmp_path, seeds=[0, 1], fail_one=False)
    suite, _ = load_suite(suite_path)
    m = read_manifest(results)
    assert m.suite == "synth" and m.suite_hash == suite.hash() and len(m.seeds) == 2
    assert m.reference_names() == {"dense"} and m.kind("svd") == "post"
    assert m.methods["svd"].description.startswith("truncated SVD")
    assert len(m.cells) == len({c.cell_id for c in m.cells}) == 20
    assert m.targets == ["macs<=0.5", "macs<=0.25", "macs<=0.125"]
    before = (results / "manifest.json").stat().st_mtime_ns
    write_manifest(suite, results)  # unchanged content: file untouched
    assert (results / "manifest.json").stat().st_mtime_ns == before
    (results / "manifest.json").write_text(json.dumps({"manifest_version": 9}))
    with pytest.raises(ManifestError, match="manifest.json: manifest_version 9"):
        read_manifest(results)
    (results / "manifest.json").unlink()
    with pytest.raises(FileNotFoundError, match="lowrank-bench report"):
        build_report(results, tmp_path / "out")


REPORT_DIR = Path(__file__).resolve().parents[1] / "bench" / "report"
FORBIDDEN_IMPORTS = ("bench.cells", "bench.plugins", "bench.runner", "bench.run", "methods",
                     "bench.suite", "bench.store", "torch")


def test_reports_import_only_records_and_the_manifest():
    for path in sorted(REPORT_DIR.glob("*.py")):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            for name in names:
                assert not any(name == f or name.startswith(f + ".")
                               for f in FORBIDDEN_IMPORTS), f"{path.name} imports {name}"
            # findings.py checks named papers' claims and takes the reference as a parameter
            if (isinstance(node, ast.Constant) and node.value == "dense"
                    and path.name != "findings.py"):
                raise AssertionError(f"{path.name} hard-codes the reference method 'dense'")


def test_a_run_writes_the_manifest_and_its_records_render(tiny_suite, write_suite, tmp_path):
    from bench.cli import main

    path = write_suite(tiny_suite)
    results = tmp_path / "results"
    assert main(["run", str(path), "--results", str(results)]) == 0
    manifest = read_manifest(results)
    records = load_records(results)
    assert {c.cell_id for c in manifest.cells} == {r.cell_id for r in records}
    assert all(r.status == "ok" and r.get("metrics.top1") is not None for r in records)
    build_report(results, tmp_path / "report")
    assert "| ref | dense |" in (tmp_path / "report" / "README.md").read_text()
