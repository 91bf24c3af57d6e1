"""The ray executor against a real two-node Ray cluster, started the way a user starts one.

``ray start --head`` and a second node joined with ``ray start --address``, both with one
CPU, so the suite's two groups run one per node. One node's worker is killed mid-run: its
unfinished cells get no record, the rerun computes them, and in the end every cell was
computed exactly once and equals the serial run's record. Runs in CI, where the ``ray``
extra is installed; skipped elsewhere.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import torch

from bench.cli import main
from bench.run.executors.ray import ray_available

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.skipif(not ray_available(), reason="Ray is not installed: "
                                "pip install 'lowrank-bench[ray]' to test the ray executor")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def processes() -> dict[int, tuple[int, str]]:
    """pid -> (parent pid, command line) of every process we can see."""
    out = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmd = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode().strip()
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        out[int(entry.name)] = (ppid, cmd)
    return out


def cluster_pids(marks: list[str]) -> list[int]:
    """Processes of this cluster (their command line names its temp dir or port) and children."""
    procs = processes()
    ours = {pid for pid, (_, cmd) in procs.items() if any(m in cmd for m in marks)}
    grew = True
    while grew:
        kids = {pid for pid, (ppid, _) in procs.items() if ppid in ours} - ours
        ours |= kids
        grew = bool(kids)
    return sorted(ours - {os.getpid()})


class Cluster:
    """A head node and a second node on this machine, in their own temp dir and ports."""

    def __init__(self, env: dict[str, str]):
        self.env, self.port = env, free_port()
        self.temp = tempfile.mkdtemp(prefix="lrb-ray-", dir="/tmp")  # unix socket paths: short
        self.address = f"127.0.0.1:{self.port}"
        self.ray = str(Path(sys.executable).with_name("ray"))

    def start(self) -> None:
        def common() -> list[str]:  # each node its own ports (fixed defaults would clash)
            return ["--num-cpus=1", "--object-store-memory=100000000", "--disable-usage-stats",
                    f"--dashboard-agent-listen-port={free_port()}",
                    f"--metrics-export-port={free_port()}"]

        self._ray("start", "--head", f"--port={self.port}", f"--temp-dir={self.temp}",
                  "--include-dashboard=false", f"--ray-client-server-port={free_port()}",
                  *common())
        self._ray("start", f"--address={self.address}", *common())

    def _ray(self, *args: str) -> None:
        proc = subprocess.run([self.ray, *args], env=self.env, capture_output=True, text=True,
                              timeout=120)
        assert proc.returncode == 0, f"ray {' '.join(args)}:\n{proc.stdout}\n{proc.stderr}"

    def stop(self) -> None:
        """Like ``ray stop``, but only this cluster's processes (others may share the machine)."""
        for pid in cluster_pids([self.temp, f":{self.port}"]):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        shutil.rmtree(self.temp, ignore_errors=True)


def group_workers(marks: list[str]) -> list[int]:
    """Ray worker processes running a group right now (Ray titles them after the function)."""
    procs = processes()
    mine = set(cluster_pids(marks))
    return [pid for pid, (_, cmd) in procs.items() if pid in mine and "_run_group" in cmd]


SUITE_TARGETS = [{"macs": 0.5}, {"macs": 0.25}, {"macs": 0.125}]


def science(results: Path) -> dict[str, tuple]:
    out = {}
    for p in (results / "cells").glob("*.json"):
        r = json.loads(p.read_text())
        m = r["metrics"]
        out[p.stem] = (r["status"], m["top1"], m["val_top1"], m["params"], m["macs"])
    return out


def test_two_node_cluster_with_a_killed_worker_completes_every_cell_once(
        tiny_suite, write_suite, tmp_path):
    tiny_suite["seeds"] = [0, 1]  # two groups: one per node
    tiny_suite["targets"] = SUITE_TARGETS  # four cells per group, so a kill lands mid-group
    tiny_suite["finetune"]["epochs"] = 3
    path = write_suite(tiny_suite)
    serial = tmp_path / "serial"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # like each Ray worker: one CPU each
    try:
        assert main(["run", str(path), "--results", str(serial)]) == 0
    finally:
        torch.set_num_threads(threads)
    # RAY_AUTH_MODE explicit: newer Ray turns token auth on for a head that finds a
    # ~/.ray/auth_token (left by any local ray.init) and the joining node must match it
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1",
           "RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "disabled"}
    cluster = Cluster(env)
    results = tmp_path / "ray"
    cmd = [sys.executable, "-m", "bench.cli", "run", str(path), "--results", str(results),
           "--executor", "ray", "--jobs", "2"]
    try:
        cluster.start()
        env["RAY_ADDRESS"] = cluster.address
        first = subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=subprocess.PIPE,
                                 stderr=subprocess.STDOUT, text=True)
        marks = [cluster.temp, f":{cluster.port}"]
        killed, deadline = None, time.monotonic() + 90
        while killed is None and first.poll() is None and time.monotonic() < deadline:
            workers = group_workers(marks)
            if len(workers) == 2 and list((results / "pending").glob("*.pt")):
                killed = workers[0]  # both groups are running: one of them dies mid-group
                os.kill(killed, signal.SIGKILL)
            time.sleep(0.05)
        out, _ = first.communicate(timeout=120)
        assert killed is not None, out
        assert first.returncode == 1, out
        assert "Ray lost this group's worker" in out and "run the same command again" in out
        after_first = {p.name: p.read_bytes() for p in (results / "cells").glob("*.json")}
        assert 0 < len(after_first) < 8  # the lost group's cells were not stored as failures
        assert all(json.loads(b)["status"] == "ok" for b in after_first.values())
        second = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True,
                                timeout=180)
        assert second.returncode == 0, second.stdout + second.stderr
    finally:
        cluster.stop()
    assert science(results) == science(serial)
    for name, blob in after_first.items():  # finished cells were not recomputed
        assert (results / "cells" / name).read_bytes() == blob
    for log in (results / "cells").glob("*.log"):
        text = log.read_text()
        # computed once (trained, compressed, fine-tuned, evaluated) and timed once
        assert text.count("== pending") == 1 and text.count("== done") == 1, text
