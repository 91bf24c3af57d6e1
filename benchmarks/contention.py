"""Does a run slow down in proportion to the load, not 6x? Idle vs one busy loop per core.

    python -m benchmarks.contention                      # the quick suite, idle then loaded
    python -m benchmarks.contention --micro              # a short training loop per setting
    python -m benchmarks.contention --micro --steps 20 --busy 0   # smoke run

Suite mode runs ``python -m bench.cli run SUITE`` into a fresh temporary
results directory (nothing reused), once on the machine as it is and once with
``--busy`` processes (default: one per core) spinning in a pure-Python loop,
and prints both wall times and their ratio (goal: loaded <= 2x idle).
``--wait-policy ACTIVE`` runs the same with OpenMP's spinning wait, the
pre-fix behaviour; ``--threads N`` sets ``LOWRANK_BENCH_THREADS``.

Micro mode trains a micro ViT on random data for ``--steps`` steps in a fresh
process per setting (OpenMP reads its wait policy once, at load): wait policy
ACTIVE/PASSIVE x threads "all cores" / "free cores" (bench.threads), idle and
loaded. Run on an otherwise idle machine: the figures are the point.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

MICRO = r"""
import os, sys, time
import bench  # sets OMP_WAIT_POLICY unless given
import torch
from bench.models import build_model
from bench.threads import choose_training_threads
mode, steps = sys.argv[1], int(sys.argv[2])
threads = os.cpu_count() if mode == "all" else choose_training_threads()[0]
torch.set_num_threads(threads)
torch.manual_seed(0)
model = build_model("vit_tiny_patch16_224", 10, 1, 8,
                    {"patch_size": 2, "embed_dim": 64, "depth": 2, "num_heads": 2})
opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
x, y = torch.randn(64, 1, 8, 8), torch.randint(0, 10, (64,))
t0 = time.perf_counter()
for _ in range(steps):
    opt.zero_grad()
    torch.nn.functional.cross_entropy(model(x), y).backward()
    opt.step()
print(f"{time.perf_counter() - t0:.3f} {threads} {os.environ.get('OMP_WAIT_POLICY')}")
"""


def _spin() -> None:
    while True:
        pass


class Busy:
    """``n`` processes each spinning on one core; stopped (by their own handles) on exit."""

    def __init__(self, n: int):
        self.n = n
        self.procs: list = []

    def __enter__(self) -> Busy:
        ctx = mp.get_context("spawn")
        self.procs = [ctx.Process(target=_spin, daemon=True) for _ in range(self.n)]
        for p in self.procs:
            p.start()
        time.sleep(0.5 if self.n else 0.0)
        return self

    def __exit__(self, *exc: object) -> None:
        for p in self.procs:
            p.terminate()
        for p in self.procs:
            p.join()


def _env(wait_policy: str | None, threads: int | None) -> dict[str, str]:
    env = dict(os.environ)
    env.pop("OMP_NUM_THREADS", None)  # let the harness choose, as a user's run would
    if wait_policy:
        env["OMP_WAIT_POLICY"] = wait_policy
    if threads:
        env["LOWRANK_BENCH_THREADS"] = str(threads)
    return env


def run_suite(suite: str, env: dict[str, str], jobs: int) -> float:
    with tempfile.TemporaryDirectory(prefix="contention-") as results:
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-m", "bench.cli", "run", suite, "--results", results,
                        "--jobs", str(jobs)], cwd=ROOT, env=env, check=True,
                       stdout=subprocess.DEVNULL)
        return time.perf_counter() - t0


def run_micro(mode: str, steps: int, env: dict[str, str]) -> tuple[float, str]:
    out = subprocess.run([sys.executable, "-c", MICRO, mode, str(steps)], cwd=ROOT, env=env,
                         check=True, capture_output=True, text=True).stdout.split()
    return float(out[0]), f"threads {out[1]}, OMP_WAIT_POLICY {out[2]}"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--suite", default="quick")
    ap.add_argument("--jobs", type=int, default=1)
    ap.add_argument("--busy", type=int, default=os.cpu_count() or 1,
                    help="busy-loop processes in the loaded run (default: one per core)")
    ap.add_argument("--wait-policy", choices=["PASSIVE", "ACTIVE"], default=None)
    ap.add_argument("--threads", type=int, default=None, help="LOWRANK_BENCH_THREADS")
    ap.add_argument("--micro", action="store_true", help="training-loop settings instead")
    ap.add_argument("--steps", type=int, default=300, help="micro: training steps")
    args = ap.parse_args(argv)
    print(f"{os.cpu_count()} cores; load average {os.getloadavg()[0]:.2f} at start; "
          f"loaded runs with {args.busy} busy-loop process(es)", flush=True)
    if args.micro:
        for policy in ("ACTIVE", "PASSIVE"):
            for mode in ("all", "free"):
                env = _env(policy, None)
                idle, how = run_micro(mode, args.steps, env)
                with Busy(args.busy):
                    loaded, how_loaded = run_micro(mode, args.steps, env)
                print(f"{policy:7s} threads={mode:4s}: idle {idle:7.2f} s ({how}) | loaded "
                      f"{loaded:7.2f} s ({how_loaded}) | x{loaded / idle:.2f}", flush=True)
        return 0
    env = _env(args.wait_policy, args.threads)
    idle = run_suite(args.suite, env, args.jobs)
    print(f"{args.suite}: idle {idle:.1f} s", flush=True)
    with Busy(args.busy):
        loaded = run_suite(args.suite, env, args.jobs)
    print(f"{args.suite}: loaded {loaded:.1f} s; loaded / idle = {loaded / idle:.2f} "
          f"(goal <= 2.0: {'met' if loaded <= 2 * idle else 'NOT met'})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
