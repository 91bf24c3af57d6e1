"""Deployment runtimes beside eager: suite option, cell ids, paired timing, report."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pandas as pd
import pytest
import torch
from torch import nn

from bench.cells import expand
from bench.report import build_report
from bench.report.findings import render_findings, runtime_findings, runtime_verdict
from bench.suite import LatencySpec, SuiteError, load_suite
from tests.test_report import write_synthetic

REPO = Path(__file__).resolve().parent.parent
FAST = {"rounds": 4, "calls": 2, "min_rounds": 2, "warmup": 1}


def mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 4))


def small_mlp() -> nn.Module:
    torch.manual_seed(1)
    return nn.Sequential(nn.Linear(16, 4), nn.ReLU(), nn.Linear(4, 4))


def tiny_conv() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                         nn.Flatten(), nn.Linear(8, 4))


class DataDependent(nn.Module):
    """Branches in Python on a tensor's value: torch.export (hence ONNX export) cannot
    trace it, eager runs it."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(16, 4)

    def forward(self, x):
        if float(x.sum()) > 0:
            return self.fc(x)
        return -self.fc(x)


def assert_entries(entries: dict, keys: set[str]) -> None:
    assert set(entries) == keys
    for e in entries.values():
        s = e["speedup"]
        assert s["ci_low"] <= s["median"] <= s["ci_high"]
        assert s["median"] > 0 and s["rounds"] >= 2
        assert e["model"]["p50_ms"] > 0 and e["reference"]["p50_ms"] > 0


# -- suite option and cell ids -------------------------------------------------
def test_runtimes_default_and_validation():
    assert LatencySpec().runtimes == ("eager",)
    spec = LatencySpec(runtimes=["onnxruntime", "eager", "compile", "eager"])
    assert spec.runtimes == ("eager", "compile", "onnxruntime")  # canonical order
    with pytest.raises(ValueError, match="leaves out 'eager'"):
        LatencySpec(runtimes=["onnxruntime"])
    with pytest.raises(ValueError, match="at least 'eager'"):
        LatencySpec(runtimes=[])
    with pytest.raises(ValueError):
        LatencySpec(runtimes=["eager", "tensorrt"])


def test_suite_file_names_the_bad_runtime(tiny_suite, write_suite):
    tiny_suite["latency"]["runtimes"] = ["onnxruntime"]
    with pytest.raises(SuiteError, match="latency.runtimes"):
        load_suite(write_suite(tiny_suite))
    tiny_suite["latency"]["runtimes"] = ["eager", "onnx"]
    with pytest.raises(SuiteError, match="onnxruntime"):
        load_suite(write_suite(tiny_suite))


def test_default_runtimes_leave_the_hashed_latency_spec_unchanged():
    dump = LatencySpec().model_dump(mode="json")
    assert "runtimes" not in dump and "ort_graph_optimization" not in dump
    on = LatencySpec(runtimes=["eager", "onnxruntime"]).model_dump(mode="json")
    assert on["runtimes"] == ["eager", "onnxruntime"]


def test_quick_suite_cell_ids_and_hash_are_unchanged():
    suite, _ = load_suite("quick", check_models=False)
    ids = {c.id for c in expand(suite)}
    records = sorted((REPO / "results" / "quick" / "cells").glob("*.json"))
    if len(records) < 2:
        pytest.skip("no committed quick records")
    for path in (records[0], records[-1]):
        rec = json.loads(path.read_text())
        assert rec["cell_id"] in ids
        assert rec["suite_hash"] == suite.hash()


def test_a_suite_using_runtimes_gets_other_cell_ids(tiny_suite, write_suite):
    plain = {c.id for c in expand(load_suite(write_suite(tiny_suite))[0])}
    tiny_suite["latency"]["runtimes"] = ["eager", "onnxruntime"]
    other = {c.id for c in expand(load_suite(write_suite(tiny_suite, "rt.yaml"))[0])}
    assert plain and other and not plain & other


# -- timing under onnxruntime and torch.compile ---------------------------------
def test_onnxruntime_timing_mlp_and_conv():
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    from bench.measure.runtimes import time_runtime

    entries, info = time_runtime(small_mlp(), mlp(), (16,), [1, 8], "onnxruntime",
                                 threads=1, **FAST)
    assert info["state"] == "measured" and entries is not None
    assert_entries(entries, {"b1", "b8"})
    assert info["exporter"] == "dynamo" and info["graph_optimization"] == "ORT_ENABLE_ALL"
    assert info["opset"] and info["onnxruntime"] and info["intra_op_num_threads"] == 1
    conv = tiny_conv()
    entries, info = time_runtime(conv, conv, (3, 8, 8), [2], "onnxruntime", threads=1,
                                 graph_optimization="basic", **FAST)
    assert info["graph_optimization"] == "ORT_ENABLE_BASIC"
    assert_entries(entries, {"b2"})


def test_the_reference_export_is_reused_and_the_model_export_is_not(monkeypatch):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    from bench.measure import runtimes

    calls: list[tuple[int, ...]] = []
    real = runtimes.export_onnx

    def counting(module, x):
        calls.append(tuple(x.shape))
        return real(module, x)

    monkeypatch.setattr(runtimes, "export_onnx", counting)
    monkeypatch.setattr(runtimes, "_exports", runtimes.OrderedDict())
    ref = mlp()
    for _ in range(2):  # two cells timed against the same dense reference
        entries, info = runtimes.time_runtime(small_mlp(), ref, (16,), [1, 8], "onnxruntime",
                                              threads=1, **FAST)
        assert info["state"] == "measured"
    assert len(calls) == 2 * 2 + 2  # the model per cell and batch, the reference once per batch
    reloaded = mlp()  # the same weights loaded again: the same export
    assert runtimes.export_key(reloaded, torch.zeros(1, 16)) == runtimes.export_key(
        ref, torch.zeros(1, 16))
    with torch.no_grad():
        reloaded[0].bias.add_(1e-3)  # other weights: another export
    assert runtimes.export_key(reloaded, torch.zeros(1, 16)) != runtimes.export_key(
        ref, torch.zeros(1, 16))
    assert runtimes.export_key(ref, torch.zeros(2, 16)) != runtimes.export_key(
        ref, torch.zeros(1, 16))


def test_not_exportable_model_is_a_state_not_a_failure():
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    import bench
    from bench.measure.runtimes import RuntimeUnavailable, time_runtime

    model = DataDependent()
    model(torch.randn(2, 16))  # eager is fine
    entries, info = time_runtime(model, mlp(), (16,), [1], "onnxruntime", threads=1, **FAST)
    assert entries is None
    assert info["state"] == "not exportable" and info["error"].startswith("model: ")
    assert "\x1b[" not in info["error"]
    with pytest.raises(RuntimeUnavailable) as exc:
        bench.time_against(model, mlp(), torch.randn(1, 16), runtime="onnxruntime",
                           batch_sizes=[1], **FAST)
    assert exc.value.state == "not exportable"


def test_measure_deployable_records_runtimes_and_keeps_the_cell_ok():
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    from bench.measure import measure_deployable
    from bench.method import Cost

    spec = LatencySpec(batch_sizes=(1,), min_runs=2, min_seconds=0.0, warmup=1,
                       paired_rounds=4, paired_min_rounds=2, paired_calls=2,
                       runtimes=["eager", "onnxruntime"])
    cost = Cost(params=10**4, macs=10**4)
    out = measure_deployable(small_mlp(), (16,), spec, cost, None, reference=mlp())
    assert out["runtime_info"]["onnxruntime"]["state"] == "measured"
    assert_entries(out["latency_paired_runtimes"]["onnxruntime"], {"b1"})
    assert "b1" in out["latency_paired"]["cpu"]
    bad = measure_deployable(DataDependent(), (16,), spec, cost, None, reference=mlp())
    assert bad["runtime_info"]["onnxruntime"]["state"] == "not exportable"
    assert "onnxruntime" not in bad["latency_paired_runtimes"]
    assert "b1" in bad["latency_paired"]["cpu"]  # the eager figures are still there
    plain = measure_deployable(small_mlp(), (16,), LatencySpec(
        batch_sizes=(1,), min_runs=2, min_seconds=0.0, warmup=1, paired_rounds=4,
        paired_min_rounds=2, paired_calls=2), cost, None, reference=mlp())
    assert "runtime_info" not in plain and "latency_paired_runtimes" not in plain


def test_time_against_eager_and_onnxruntime():
    import bench

    t = bench.time_against(small_mlp(), mlp(), torch.randn(1, 16), batch_sizes=[1, 4], **FAST)
    assert_entries(t, {"b1", "b4"})
    assert t.info["runtime"] == "eager"
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    t = bench.time_against(small_mlp(), mlp(), torch.randn(3, 16), runtime="onnxruntime",
                           batch_sizes=None, **FAST)
    assert_entries(t, {"b3"})
    assert t.info["opset"]


@pytest.fixture(scope="module")
def compile_works():
    if not hasattr(torch, "compile"):
        pytest.skip("torch.compile is not available")
    t0 = time.perf_counter()
    try:
        torch.compile(nn.Linear(4, 4), dynamic=False)(torch.randn(1, 4))
    except Exception as exc:  # no compiler on this machine
        pytest.skip(f"torch.compile does not work here: {exc}")
    if time.perf_counter() - t0 > 60:
        pytest.skip("torch.compile takes over 60 s here")


def test_compile_timing(compile_works):
    from bench.measure.runtimes import time_runtime

    entries, info = time_runtime(small_mlp(), mlp(), (16,), [2], "compile", threads=1, **FAST)
    assert info["state"] == "measured", info.get("error")
    assert info["backend"] == "inductor" and info["dynamic"] is False and info["torch"]
    assert_entries(entries, {"b2"})


# -- report ---------------------------------------------------------------------
def sp(median, lo, hi):
    return {"model": {"p50_ms": 1.0}, "reference": {"p50_ms": median},
            "speedup": {"median": median, "ci_low": lo, "ci_high": hi, "rounds": 8,
                        "noisy": False}}


def add_runtimes(results: Path) -> None:
    """svd: eager 1.3x; onnxruntime 2.0x (grows); svd-global: not exportable."""
    for path in (results / "cells").glob("*.json"):
        rec = json.loads(path.read_text())
        if rec["status"] != "ok":
            continue
        m = rec["metrics"]
        m["latency_paired"] = {"cpu": {"b1": sp(1.1, 1.0, 1.2), "b64": sp(1.3, 1.25, 1.35)}}
        info = {"runtime": "onnxruntime", "exporter": "dynamo", "opset": 20,
                "onnxruntime": "1.20.0", "graph_optimization": "ORT_ENABLE_ALL"}
        if rec["method"] == "svd-global":
            m["runtime_info"] = {"onnxruntime": {**info, "state": "not exportable",
                                                 "error": "model: TorchExportError: boom"}}
            m["latency_paired_runtimes"] = {}
        else:
            m["runtime_info"] = {"onnxruntime": {**info, "state": "measured"}}
            m["latency_paired_runtimes"] = {"onnxruntime": {
                "b1": sp(1.5, 1.4, 1.6), "b64": sp(2.0, 1.9, 2.1)}}
        path.write_text(json.dumps(rec))


def test_report_shows_runtime_columns_plot_and_findings(tmp_path):
    _, results = write_synthetic(tmp_path, seeds=[0], fail_one=False)
    add_runtimes(results)
    out = tmp_path / "report"
    written = {p.name for p in build_report(results, out)}
    md = (out / "README.md").read_text()
    tier = md.split("### MACs ≤ 0.5× dense")[1].split("###")[0]
    header = next(line for line in tier.splitlines() if "speedup" in line)
    assert "speedup ORT × ↑ (batch 1)" in header and "speedup ORT × ↑ (batch 64)" in header
    assert "compile" not in header  # no data, no column
    svd = next(line for line in tier.splitlines() if "| svd |" in line)
    assert "2.00× \\[1.90, 2.10\\]" in svd and "1.30× \\[1.25, 1.35\\]" in svd
    glob = next(line for line in tier.splitlines() if "| svd-global |" in line)
    assert "not exportable" in glob
    assert any(n.startswith("speedup-runtimes-") and n.endswith(".png") for n in written)
    assert "svd under onnxruntime: **grows**" in md
    assert "svd-global under onnxruntime: not exportable in 3 cells" in md
    csv = pd.read_csv(out / "results.csv")
    assert "speedup_onnxruntime_b64" in csv and "runtime_onnxruntime_state" in csv
    assert set(csv.runtime_onnxruntime_state.dropna()) == {"measured", "not exportable"}


def test_report_without_runtimes_has_no_runtime_columns_or_plot(tmp_path):
    _, results = write_synthetic(tmp_path, seeds=[0], fail_one=False)
    out = tmp_path / "report"
    written = {p.name for p in build_report(results, out)}
    md = (out / "README.md").read_text()
    assert "ORT" not in md and "under onnxruntime" not in md
    assert not any(n.startswith("speedup-runtimes-") for n in written)
    assert "speedup_onnxruntime_b1" not in pd.read_csv(out / "results.csv")


def test_runtime_verdict_rule():
    assert runtime_verdict(1.3, 1.9, 2.1) == "grows"
    assert runtime_verdict(1.3, 1.2, 1.4) == "holds"
    assert runtime_verdict(1.3, 1.05, 1.2) == "shrinks"
    assert runtime_verdict(1.3, 0.8, 0.9) == "reverses"  # a speedup turned slowdown
    assert runtime_verdict(0.8, 1.1, 1.2) == "reverses"  # a slowdown turned speedup
    assert runtime_verdict(1.3, 0.9, 1.1) == "shrinks"  # interval straddles 1.0


def test_findings_per_method_and_runtime():
    def rec(method, eager, rt, runtime="compile", state="measured"):
        m = {"top1": 0.8, "test_n": 1000, "budget": {"met": True},
             "latency_paired": {"cpu": {"b1": sp(*eager), "b64": sp(*eager)}},
             "runtime_info": {runtime: {"state": state}},
             "latency_paired_runtimes": {runtime: {"b64": sp(*rt)}} if rt else {}}
        return {"status": "ok", "model": "m", "dataset": "d", "target_label": "macs<=0.5",
                "method": method, "method_name": method, "seed": 0, "metrics": m}

    rs = [rec("svd", (1.3, 1.2, 1.4), (0.8, 0.7, 0.9)),
          rec("svd", (1.3, 1.2, 1.4), (0.85, 0.8, 0.95)),
          rec("funnel", (1.5, 1.4, 1.6), (1.5, 1.45, 1.55)),
          rec("lorita", (1.5, 1.4, 1.6), None, state="not compilable"),
          rec("dense", (1.0, 0.98, 1.02), (1.0, 0.97, 1.03))]
    lines = runtime_findings(rs)
    assert any(line.startswith("svd under compile: **reverses** (2 reverses of 2") and
               "batch 64" in line for line in lines)
    assert any(line.startswith("funnel under compile: **holds**") for line in lines)
    assert "lorita under compile: not compilable in 1 cell" in lines
    assert not any(line.startswith("dense") for line in lines)
    assert "**reverses** when" in render_findings(rs)
    plain = rec("svd", (1.3, 1.2, 1.4), None)
    del plain["metrics"]["runtime_info"]
    assert runtime_findings([plain]) == []


def test_cells_with_runtimes_round_trip_with_their_ids(tiny_suite, write_suite):
    from bench.cells import Cell

    tiny_suite["latency"]["runtimes"] = ["eager", "compile"]
    tiny_suite["latency"]["ort_graph_optimization"] = "basic"
    for cell in expand(load_suite(write_suite(tiny_suite))[0]):
        back = Cell.model_validate(json.loads(json.dumps(cell.model_dump(mode="json"))))
        assert back.id == cell.id and back.latency.runtimes == ("eager", "compile")
