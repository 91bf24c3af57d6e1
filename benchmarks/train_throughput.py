"""Training throughput (images/s) of the cifar suite's models: device loop vs host loop.

The two models of ``suites/cifar.yaml`` (ResNet-18 with the CIFAR stem, ViT-Tiny
with 4x4 patches) are trained for one epoch of CIFAR-shaped data with the
suite's batch size and the papers' augmentation (random crop, pad 4, flip),
through :func:`bench.train.train` with

- ``old``: the host loop (``loop: host``): batches sliced, augmented and
  normalised on the CPU, copied to the device, loss and accuracy read back
  every step, fp32 eager;
- ``new``: the device loop (``loop: device``): the split resident on the
  device as uint8, augmentation and normalisation there in batch, statistics
  read once per epoch, bf16 autocast on CUDA (``--precision``), channels_last
  for the ResNet, ``torch.compile`` with ``--compile``.

Each (model, path) gets a short warm-up (a few steps, not timed), then the
paths alternate for ``--repeats`` timed epochs each so they see the same machine
load; the median is reported. The data is the CIFAR-10 training split when
``--data-root`` holds it, otherwise random uint8 images of the same shape (the
throughput does not depend on the pixel values).

Usage::

    python -m benchmarks.train_throughput [--device cuda] [--train-size 50000]
        [--repeats 3] [--precision auto] [--compile] [--out throughput.json]

Smoke run (seconds, any CPU): ``--train-size 256 --repeats 1 --threads 1``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from typing import Any

import torch

from bench.data.base import DataBundle
from bench.data.images import ImageOptions, make_bundle
from bench.models import build_model
from bench.train import train

CIFAR_STATS = ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616))
MODELS = {  # as in suites/cifar.yaml
    "resnet18-cifar": {"name": "resnet18", "kwargs": {}, "stem": "cifar"},
    "vit-tiny-p4": {"name": "vit_tiny_patch16_224", "kwargs": {"patch_size": 4}, "stem": None},
}


def cifar_like(n: int, data_root: str | None) -> tuple[DataBundle, str]:
    """CIFAR-10's training images when the data root has them, else random ones."""
    if data_root:
        from bench.data import load_dataset

        data = load_dataset("cifar10", {"val_fraction": 0.02, "augment": "cifar",
                                        "download": False}, data_root)
        return data, "CIFAR-10"
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (n + 200, 3, 32, 32), dtype=torch.uint8, generator=g)
    y = torch.randint(0, 10, (n + 200,), generator=g)
    data = make_bundle("random-cifar", x[:n + 100], y[:n + 100], x[n + 100:], y[n + 100:],
                       num_classes=10, opts=ImageOptions(val_fraction=100 / (n + 100),
                                                         augment="cifar", pad=4),
                       standard_stats=CIFAR_STATS, info={})
    return data, "random uint8 images"


def subset(data: DataBundle, n: int) -> DataBundle:
    import dataclasses

    from bench.data.base import Split

    n = min(n, len(data.train))
    return dataclasses.replace(data, train=Split(data.train.x[:n], data.train.y[:n]))


def budget(path: str, batch_size: int, precision: str, compile_: bool) -> dict[str, Any]:
    out = dict(epochs=1, batch_size=batch_size, optimizer="adamw", lr=1e-3, weight_decay=0.05,
               label_smoothing=0.1, augment=True, seed=0)
    if path == "old":
        out.update(loop="host")
    else:
        out.update(loop="device", precision=precision, compile=compile_)
    return out


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--train-size", type=int, default=50_000)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--warmup-steps", type=int, default=3)
    p.add_argument("--precision", default="auto", choices=["auto", "bf16", "fp32"])
    p.add_argument("--compile", action="store_true")
    p.add_argument("--models", default=",".join(MODELS))
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--data-root", default=None, help="a data root holding CIFAR-10")
    p.add_argument("--out", default=None, help="write the figures as JSON here")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    data, source = cifar_like(args.train_size, args.data_root)
    data = subset(data, args.train_size)
    warm = subset(data, args.warmup_steps * args.batch_size)
    result: dict[str, Any] = {"device": str(device), "data": source, "images": len(data.train),
                              "batch_size": args.batch_size, "threads": torch.get_num_threads(),
                              "precision": args.precision, "compile": args.compile,
                              "models": {}}
    if device.type == "cuda":
        result["gpu"] = torch.cuda.get_device_name(device)
    for label in args.models.split(","):
        spec = MODELS[label]
        torch.manual_seed(0)
        models = {path: build_model(spec["name"], 10, 3, 32, kwargs=spec["kwargs"],
                                    stem=spec["stem"]).to(device) for path in ("old", "new")}
        kw = {path: budget(path, args.batch_size, args.precision, args.compile)
              for path in models}
        for path, model in models.items():  # warm-up: kernels, allocator, compilation
            train(model, warm, **kw[path])
        times: dict[str, list[float]] = {"old": [], "new": []}
        for _ in range(args.repeats):
            for path, model in models.items():
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                t0 = time.perf_counter()
                train(model, data, **kw[path])
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                times[path].append(time.perf_counter() - t0)
        row = {}
        for path, secs in times.items():
            med = statistics.median(secs)
            row[path] = {"epoch_s": med, "images_per_s": len(data.train) / med,
                         "epochs_s": secs}
        row["speedup"] = row["old"]["epoch_s"] / row["new"]["epoch_s"]
        result["models"][label] = row
        print(f"{label} on {device} ({source}, {len(data.train)} images, batch "
              f"{args.batch_size}): old {row['old']['images_per_s']:,.0f} img/s "
              f"({row['old']['epoch_s']:.2f} s/epoch), new {row['new']['images_per_s']:,.0f} "
              f"img/s ({row['new']['epoch_s']:.2f} s/epoch), x{row['speedup']:.2f}")
    if args.out:
        with open(args.out, "w") as fh:
            json.dump(result, fh, indent=1)
    return result


if __name__ == "__main__":
    main()
