"""Crash safety and concurrency: kill -9 at any moment, corrupt files, two runs at once."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from bench.cli import main
from bench.runner import run_suite
from bench.store import ResultStore
from bench.suite import load_suite

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def two_groups(tiny_suite, write_suite) -> Path:
    tiny_suite["seeds"] = [0, 1]
    tiny_suite["latency"]["min_seconds"] = 0.05  # each cell takes a moment: kill lands mid-suite
    return write_suite(tiny_suite)


def _start(suite: Path, results: Path, *extra: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "bench.cli", "run", str(suite), "--results",
                             str(results), *extra], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


def _wait_for(pattern: str, root: Path, proc: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not list(root.glob(pattern)):
        assert proc.poll() is None, proc.communicate()[0]
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def _logs(results: Path) -> dict[str, str]:
    return {p.stem: p.read_text() for p in (results / "cells").glob("*.log")}


def _check_complete(results: Path, n: int) -> dict[str, dict]:
    recs = {p.stem: json.loads(p.read_text()) for p in (results / "cells").glob("*.json")}
    assert len(recs) == n and all(r["status"] == "ok" for r in recs.values())
    assert not list((results / "pending").glob("*.pt"))
    assert not list((results / "locks").glob("*.lock"))
    return recs


def test_kill9_mid_suite_then_rerun_finishes_each_cell_once(two_groups, tmp_path):
    results = tmp_path / "results"
    proc = _start(two_groups, results)
    _wait_for("cells/*.json", results, proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    before = {p.name: p.read_bytes() for p in (results / "cells").glob("*.json")}
    assert 1 <= len(before) < 4, "the kill should land mid-suite"

    rerun = _start(two_groups, results)
    out = rerun.communicate(timeout=300)[0]
    assert rerun.returncode == 0, out
    assert f"{4 - len(before)} of 4 cells to run ({len(before)} already done)" in out
    _check_complete(results, 4)
    for name, data in before.items():  # finished cells were not recomputed
        assert (results / "cells" / name).read_bytes() == data
    for cell_id, log in _logs(results).items():
        assert log.count("== done") == 1, cell_id  # every cell finished exactly once


def test_kill9_parallel_driver_kills_workers_and_pending_cells_are_only_timed(two_groups,
                                                                               tmp_path):
    results = tmp_path / "results"
    proc = _start(two_groups, results, "--jobs", "2")
    _wait_for("pending/*.pt", results, proc)
    children = Path(f"/proc/{proc.pid}/task/{proc.pid}/children")
    workers = [int(p) for p in children.read_text().split()] if children.exists() else []
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    deadline = time.monotonic() + 10  # workers notice their parent is gone and exit
    while any(Path(f"/proc/{w}").exists() and "zombie" not in _state(w) for w in workers):
        assert time.monotonic() < deadline, "orphaned workers kept running"
        time.sleep(0.1)
    pending = {p.stem for p in (results / "pending").glob("*.pt")}
    assert pending

    rerun = _start(two_groups, results)
    out = rerun.communicate(timeout=300)[0]
    assert rerun.returncode == 0, out
    _check_complete(results, 4)
    logs = _logs(results)
    for cell_id in pending:  # trained once, then only timed
        assert logs[cell_id].count("== pending") == 1
        assert "timing" in logs[cell_id] and logs[cell_id].count("== done") == 1
    for cell_id, log in logs.items():
        assert log.count("== done") == 1, cell_id


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/status").read_text().split("State:")[1].split("\n")[0]
    except (OSError, IndexError):
        return "zombie"


def test_corrupt_and_partial_files_are_redone(two_groups, tmp_path, capsys):
    results = tmp_path / "results"
    assert main(["run", str(two_groups), "--results", str(results)]) == 0
    store = ResultStore(results)
    records = sorted((results / "cells").glob("*.json"))
    half = records[0].read_bytes()[:50]
    records[0].write_bytes(half)  # a partial write
    rec1 = json.loads(records[1].read_text())
    rec1["cell_id"] = "somebody-else"
    records[1].write_text(json.dumps(rec1))  # parses, but is not this cell's record
    rec2 = json.loads(records[2].read_text())
    del rec2["metrics"]
    records[2].write_text(json.dumps(rec2))  # an ok record without its figures
    for ckpt in (results / "checkpoints").glob("*.pt"):
        ckpt.write_bytes(ckpt.read_bytes()[:100])  # truncated checkpoints
    capsys.readouterr()
    assert main(["run", str(two_groups), "--results", str(results)]) == 0
    out = capsys.readouterr().out
    assert "3 of 4 cells to run (1 already done)" in out
    assert "training dense baseline" in out  # the broken checkpoint was not used
    assert all(store.load(p.stem) is not None for p in records)


def test_two_runs_on_one_directory_share_the_work(two_groups, tmp_path):
    results = tmp_path / "results"
    a, b = _start(two_groups, results), _start(two_groups, results)
    outs = [p.communicate(timeout=300)[0] for p in (a, b)]
    assert a.returncode == 0 and b.returncode == 0, outs
    _check_complete(results, 4)
    for cell_id, log in _logs(results).items():
        assert log.count("== attempt") == 1, cell_id  # nobody duplicated a cell


def test_a_dead_runs_lock_is_broken_and_a_live_one_is_waited_for(two_groups, tmp_path):
    results = tmp_path / "results"
    suite, _ = load_suite(two_groups)
    store = ResultStore(results)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    alive = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    from bench.cells import content_hash, expand
    from bench.runner import group_cells

    names = [content_hash(list(k)) for k in group_cells(expand(suite))]
    store.locks_dir.mkdir(parents=True)
    host = os.uname().nodename
    for name, pid in zip(names, (alive.pid, dead.pid)):
        store.lock_path(name).write_text(json.dumps({"pid": pid, "host": host}))
    lines: list[str] = []
    threading.Timer(3.0, alive.kill).start()  # the live holder dies a while later
    try:
        summary = run_suite(suite, results, say=lines.append, wait_poll_s=0.2)
    finally:
        alive.kill()
        alive.wait()
    assert summary.ok == 4 and not summary.failed, lines
    assert any("being run by pid" in line and str(alive.pid) in line for line in lines), lines
    assert any("waiting for 1 group(s)" in line for line in lines)
    _check_complete(results, 4)
