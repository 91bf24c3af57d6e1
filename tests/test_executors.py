"""Executors give the same records as serial; a dead worker costs one cell; dry run."""

from __future__ import annotations

import json

import pytest
import torch

from bench.cli import main
from bench.run.executors import make_executor, threads_per_worker
from bench.run.executors.ray import ray_available

PLUGINS = "tests.failing_methods"


def _by_id(results) -> dict[str, dict]:
    return {p.stem: json.loads(p.read_text()) for p in (results / "cells").glob("*.json")}


def _same_science(a: dict, b: dict) -> None:
    """Equal seeds give equal results: accuracy and counts match exactly."""
    assert a.keys() == b.keys()
    for cid in a:
        ma, mb = a[cid]["metrics"], b[cid]["metrics"]
        for key in ("top1", "top5", "val_top1", "params", "macs"):
            assert ma[key] == mb[key], (cid, key)


@pytest.fixture
def serial_results(tiny_suite, write_suite, tmp_path):
    """The tiny suite (two groups) run serially with one torch thread, like the workers."""
    tiny_suite["seeds"] = [0, 1]
    path = write_suite(tiny_suite)
    results = tmp_path / "serial"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert main(["run", str(path), "--results", str(results)]) == 0
    finally:
        torch.set_num_threads(threads)
    return tiny_suite, _by_id(results)


def test_local_jobs_match_serial_and_a_killed_worker_costs_one_cell(serial_results, write_suite,
                                                                    tmp_path, capsys):
    suite, serial = serial_results
    suite["methods"].append({"name": f"{PLUGINS}:KillsWorker", "label": "killer"})
    path = write_suite(suite, "with-killer.yaml")
    results = tmp_path / "local"
    capsys.readouterr()
    assert main(["run", str(path), "--results", str(results), "--jobs", "2"]) == 1
    out = capsys.readouterr().out
    assert "local, 2 worker processes" in out and "timing 4 cell(s)" in out
    # each seed's post methods are units of their own; its baseline is trained once
    assert out.count("training dense baseline") == 2, out
    assert "of 4 cell(s) carry the timing of an identical architecture of their row" in out
    recs = _by_id(results)
    killed = [r for r in recs.values() if r["status"] == "failed"]
    assert len(killed) == 2  # one per seed: each took only its own cell down
    assert all(r["error"]["type"] == "WorkerDiedError" and "SIGKILL" in r["error"]["message"]
               for r in killed)
    ok = {cid: r for cid, r in recs.items() if r["status"] == "ok"}
    _same_science(serial, ok)
    # the timing phase timed the dense architecture once; the other seed reused it
    dense = sorted((r for r in ok.values() if r["method"] == "dense"),
                   key=lambda r: "shared_from" in r["metrics"]["timing"])
    assert "shared_from" not in dense[0]["metrics"]["timing"]
    assert dense[1]["metrics"]["timing"]["shared_from"] == dense[0]["cell_id"]


@pytest.mark.skipif(not ray_available(), reason="Ray is not installed: "
                    "pip install 'lowrank-bench[ray]' to test the ray executor")
def test_ray_executor_matches_serial(serial_results, write_suite, tmp_path, monkeypatch):
    suite, serial = serial_results
    monkeypatch.delenv("RAY_ADDRESS", raising=False)  # a local Ray instance
    path = write_suite(suite)
    results = tmp_path / "ray"
    assert main(["run", str(path), "--results", str(results), "--executor", "ray",
                 "--jobs", "2"]) == 0
    _same_science(serial, _by_id(results))


def test_threads_split_the_machine_and_unknown_executor_is_named():
    assert threads_per_worker(2, cpus=16) == 8
    assert threads_per_worker(4, cpus=2) == 1
    assert make_executor(None, 1).name == "serial"
    assert make_executor(None, 3).name == "local"
    with pytest.raises(ValueError, match="Did you mean: local"):
        make_executor("locl", 2)


def test_dry_run_lists_cells_and_estimates_from_records(tiny_suite, write_suite, tmp_path,
                                                        capsys):
    path = write_suite(tiny_suite)
    results = tmp_path / "results"
    assert main(["run", str(path), "--results", str(results), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "2 cells, 2 to run" in out and "estimated time: unknown" in out
    assert not results.exists()  # a dry run writes nothing
    assert main(["run", str(path), "--results", str(results)]) == 0
    tiny_suite["targets"].append({"macs": 0.25})
    path = write_suite(tiny_suite)
    capsys.readouterr()
    assert main(["run", str(path), "--results", str(results), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "3 cells, 1 to run" in out and "2 done, 0 failed, 0 pending, 1 todo" in out
    assert "estimated time:" in out and "for 1 of 1 cells, from 2 earlier records" in out
    line = next(ln for ln in out.splitlines() if "macs<=0.25" in ln)
    assert "todo" in line


def test_record_work_counts_the_tuning_once_and_each_training_apart():
    """A row's lr tuning lives in one cell's wall time; trainings are added by the plan."""
    from bench.run.plan import record_work

    # dense row, seed 1 (figures of a cifar-cpu record pair): the 1-epoch cell trained the
    # baseline (1,050 s) and tuned the lr; its 3-epoch sibling reused the tuning run
    trained = {"cell_s": 1633.0, "baseline_train_s": 1050.0, "compress_s": 0.0,
               "finetune_s": 65.0, "eval_s": 26.0, "measure_s": 52.0, "tune_s": 437.0}
    sibling = {"cell_s": 73.0, "baseline_train_s": 1050.0, "compress_s": 0.0,
               "finetune_s": 219.0, "eval_s": 26.0, "measure_s": 47.0, "tune_s": 437.0}
    assert record_work({"cost": trained}) == pytest.approx(583.0)
    assert record_work({"cost": sibling}) == pytest.approx(73.0)  # not its parts' 292 s
    # newer records say what they trained; the old heuristic is not consulted
    assert record_work({"cost": {**trained, "trained_here_s": 1040.0}}) == pytest.approx(593.0)
    assert record_work({"cost": {**sibling, "trained_here_s": 0.0}}) == pytest.approx(73.0)
    assert record_work({"cost": {"finetune_s": 10.0, "eval_s": 2.0}}) == pytest.approx(12.0)


def test_a_cell_records_the_training_it_paid_for(tiny_suite, write_suite, tmp_path):
    """Only the first cell of a baseline trains it; the others load it (trained_here_s 0)."""
    tiny_suite["targets"].append({"macs": 0.25})
    path = write_suite(tiny_suite)
    results = tmp_path / "results"
    assert main(["run", str(path), "--results", str(results), "--jobs", "1"]) == 0
    costs = [json.loads(p.read_text())["cost"] for p in sorted((results / "cells").glob("*.json"))]
    paid = [c["trained_here_s"] for c in costs]
    assert sum(t > 0 for t in paid) == 1
    assert max(paid) == pytest.approx(costs[0]["baseline_train_s"], rel=0.05)
