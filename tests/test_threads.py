"""Thread policy under contention: free cores, split between workers, passive OpenMP wait."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from bench.run.executors.local import LocalExecutor
from bench.threads import OVERRIDE_ENV, apply_training_threads, training_threads


def test_training_threads_from_free_cores():
    assert training_threads(2, 0.1) == 2  # idle: all cores
    assert training_threads(2, 0.6) == 1  # more than half a core busy elsewhere
    assert training_threads(2, 4.0) == 1  # saturated: one thread, never zero
    assert training_threads(16, 3.2) == 13
    assert training_threads(16, None) == 16  # load unknown: all cores count as free
    assert training_threads(16, 0.0, jobs=4) == 4  # split between workers
    assert training_threads(16, 8.0, jobs=4) == 2
    assert training_threads(2, 0.0, jobs=4) == 1
    assert training_threads(8, 6.0, own_load=4.0) == 6  # our own work is not "busy"


def test_override_wins_and_bad_override_is_named():
    assert training_threads(2, 9.0, override="3") == 3
    assert training_threads(2, 9.0, override="") == 1
    with pytest.raises(ValueError, match=f"{OVERRIDE_ENV}='zero'"):
        training_threads(2, 0.0, override="zero")
    with pytest.raises(ValueError, match="positive integer"):
        training_threads(2, 0.0, override="0")


def test_local_executor_threads(monkeypatch):
    monkeypatch.delenv(OVERRIDE_ENV, raising=False)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    assert LocalExecutor(jobs=2, cpus=16).threads == 8  # fixed split when cpus are given
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    assert LocalExecutor(jobs=2, cpus=16).threads == 1  # the user's explicit setting
    monkeypatch.setenv(OVERRIDE_ENV, "3")
    assert LocalExecutor(jobs=2).threads == 3


def test_serial_run_sets_threads_for_its_duration_only(monkeypatch):
    import torch

    monkeypatch.delenv(OVERRIDE_ENV, raising=False)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    before = torch.get_num_threads()
    lines: list[str] = []
    restore = apply_training_threads(None, lines.append)
    assert torch.get_num_threads() == 1 and "OMP_NUM_THREADS=1" in lines[0]
    restore()
    assert torch.get_num_threads() == before
    apply_training_threads(4, lines.append)()  # workers set their own: nothing happens
    assert len(lines) == 1


def _policy_after_import(env: dict) -> str:
    code = "import bench, os; print(os.environ.get('OMP_WAIT_POLICY'))"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         check=True, cwd=os.path.dirname(os.path.dirname(__file__)))
    return out.stdout.strip()


def test_importing_bench_sets_a_passive_wait_unless_the_user_chose():
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    assert _policy_after_import(env) == "PASSIVE"
    assert _policy_after_import({**env, "OMP_WAIT_POLICY": "ACTIVE"}) == "ACTIVE"
