"""Lock files of dead processes do not outlive a later run."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

from bench.cli import main
from bench.store import ResultStore, _process_start


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_a_later_run_removes_stale_locks_and_keeps_live_ones(tiny_suite, write_suite, tmp_path):
    results = tmp_path / "results"
    locks = results / "locks"
    locks.mkdir(parents=True)
    host = socket.gethostname()
    dead = {"pid": _dead_pid(), "host": host, "started": "1", "since": 0}
    live = {"pid": os.getpid(), "host": host, "started": _process_start(os.getpid()), "since": 0}
    remote = {"pid": 1234, "host": "another-host", "started": "1", "since": 0}
    for name, owner in (("dead", dead), ("live", live), ("remote", remote)):
        (locks / f"{name}.lock").write_text(json.dumps(owner))
    (locks / f"old.lock.stale.{dead['pid']}").write_text(json.dumps(dead))
    assert main(["run", str(write_suite(tiny_suite)), "--results", str(results)]) == 0
    assert sorted(p.name for p in locks.iterdir()) == ["live.lock", "remote.lock"]
    assert ResultStore(results).clean_stale_locks() == 0
