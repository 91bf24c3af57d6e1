"""svd-accel's layer timings beside another worker's training, against an idle machine.

svd-accel times each layer against its factorized forms inside ``compress`` and
keeps a smaller rank only where it is clearly faster. In a ``--jobs 2`` run the
other worker trains meanwhile (each worker has ``cores // jobs`` threads). This
script times one layer and candidate ranks up to about break-even with
``paired_timings`` at svd-accel's defaults (batches 1 and 64, 7 paired rounds,
one thread), ``--repeats`` times each, interleaved:

- ``idle``: nothing else running;
- ``beside``: a second process trains the fmnist suite's ResNet on random data (one
  thread),
  as the other worker of a ``--jobs 2`` run on a 2-core machine would.

It prints, per condition and rank, the median factorized/dense time ratio over
the repeats and its range, the noise svd-accel adds to its margin (the
interquartile range of the rounds), and how often the verdict (faster, slower,
tie at the default 5% margin) differs from the idle runs' most common one.

    python -m benchmarks.accel_timing_load [--repeats 5] [--channels 64] [--size 7]

Run on an otherwise idle machine: the figures are the point.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import torch
from torch import nn

from methods.layers import LowRankConv2d
from methods.layers.paired_timing import paired_timings

ROOT = Path(__file__).resolve().parents[1]
MARGIN = 0.05  # svd-accel's default speed_margin
TRAINER = r"""
import torch
from bench.models import build_model
torch.set_num_threads(1)
torch.manual_seed(0)
# the fmnist suite's ResNet, at its batch size, on random 28x28 images
model = build_model("resnet10t", 10, 1, 28, {"channels": [16, 32, 64, 128], "stem_width": 16},
                    stem="cifar")
opt = torch.optim.AdamW(model.parameters(), 2e-3, weight_decay=5e-4)
x, y = torch.randn(128, 1, 28, 28), torch.randint(0, 10, (128,))
print("ready", flush=True)
while True:
    opt.zero_grad()
    torch.nn.functional.cross_entropy(model(x), y).backward()
    opt.step()
"""


def time_ranks(dense: nn.Conv2d, ranks: list[int], in_shape: tuple[int, ...]
               ) -> dict[int, tuple[float, float]]:
    facts = {r: LowRankConv2d(dense, r) for r in ranks}
    t = paired_timings(dense, facts, in_shape, [1, 64], rounds=7, threads=1)
    return {r: (p.median, p.noise) for r, p in t.pairs.items()}


def verdict(median: float, noise: float) -> str:
    band = MARGIN + noise
    return "faster" if median < 1 - band else "slower" if median > 1 + band else "tie"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--channels", type=int, default=64)
    ap.add_argument("--size", type=int, default=7, help="input height and width")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    torch.manual_seed(0)
    c = args.channels
    dense = nn.Conv2d(c, c, 3, padding=1)
    ranks = [c // 4, c // 2, 5 * c // 8, 3 * c // 4, 7 * c // 8]  # up to about break-even
    in_shape = (c, args.size, args.size)
    results: dict[str, list[dict[int, tuple[float, float]]]] = {"idle": [], "beside": []}
    trainer = None
    try:
        for k in range(args.repeats):
            results["idle"].append(time_ranks(dense, ranks, in_shape))
            trainer = subprocess.Popen([sys.executable, "-c", TRAINER], cwd=ROOT,
                                       stdout=subprocess.PIPE, text=True)
            assert trainer.stdout is not None and trainer.stdout.readline().strip() == "ready"
            time.sleep(0.5)  # training, not starting
            results["beside"].append(time_ranks(dense, ranks, in_shape))
            trainer.kill()
            trainer.wait()
            trainer = None
            print(f"repeat {k + 1}/{args.repeats} done", flush=True)
    finally:
        if trainer is not None:
            trainer.kill()
    idle_verdicts = {r: Counter(verdict(*run[r]) for run in results["idle"]).most_common(1)[0][0]
                     for r in ranks}
    print(f"Conv2d({c}, {c}, 3) on {args.size}x{args.size}; factorized/dense time ratio, "
          f"median of {args.repeats} repeats [range]; noise = IQR of the 7 rounds (median); "
          f"verdict changes vs idle's")
    for name, runs in results.items():
        for r in ranks:
            meds = [run[r][0] for run in runs]
            noises = [run[r][1] for run in runs]
            flips = sum(verdict(*run[r]) != idle_verdicts[r] for run in runs)
            print(f"  {name:6s} rank {r:3d}: {statistics.median(meds):.3f} "
                  f"[{min(meds):.3f}, {max(meds):.3f}] noise {statistics.median(noises):.3f} "
                  f"verdict {idle_verdicts[r]} differs in {flips}/{len(runs)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
