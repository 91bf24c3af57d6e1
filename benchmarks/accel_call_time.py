"""How long one ``bench.compress(model, "svd-accel", macs=0.5)`` call takes, cold and warm.

Two small models (a timm resnet10t at 1/4 width with the CIFAR stem on 32x32
inputs, and a 4-block timm ViT with 4x4 patches on 32x32 inputs) are
compressed twice each in one process: the first call times every layer shape
(``cold``: an empty layer-timing cache in a temporary folder), the second
finds every timing in the cache (``warm``). ``svd`` on the same model is
timed for scale. Run on an otherwise idle machine; prints one line per call.

    python -m benchmarks.accel_call_time [--threads 1]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

import timm
import torch

import bench

MODELS = {
    "resnet10t-w16": (lambda: timm.create_model(
        "resnet10t", num_classes=10, channels=[16, 32, 64, 128], stem_width=16),
        (1, 3, 32, 32)),
    "vit-p4-d96": (lambda: timm.create_model(
        "vit_tiny_patch16_224", num_classes=10, img_size=32, patch_size=4, embed_dim=96,
        depth=4, num_heads=3), (1, 3, 32, 32)),
}


def call_s(model: torch.nn.Module, method: str, x: torch.Tensor) -> float:
    """Wall seconds of one ``bench.compress`` call at half the dense MACs."""
    t0 = time.perf_counter()
    bench.compress(model, method, macs=0.5, example_input=x)
    return time.perf_counter() - t0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    os.environ.setdefault("LOWRANK_BENCH_CACHE", tempfile.mkdtemp(prefix="accel-call-"))
    print(f"torch {torch.__version__}; load average {os.getloadavg()[0]:.2f}; "
          f"timing cache {os.environ['LOWRANK_BENCH_CACHE']}", flush=True)
    for name, (build, shape) in MODELS.items():
        torch.manual_seed(0)
        model = build()
        x = torch.randn(*shape)
        svd = call_s(model, "svd", x)
        for call in ("cold", "warm"):
            s = call_s(model, "svd-accel", x)
            print(f"{name}: svd-accel {call} {s:.1f} s (svd {svd:.1f} s)", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
