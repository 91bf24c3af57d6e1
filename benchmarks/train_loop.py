"""Training throughput (images/s): the harness's loop against a minimal loop, and channels_last.

Four loops train the same model (fmnist's resnet10t-w16 by default, or its
ViT) for one epoch over the same images with the same optimizer settings:

- ``harness``: ``bench.train.train`` (what every cell uses: schedule, hooks,
  finite-loss check, accuracy bookkeeping, per-batch normalisation) with
  ``channels_last=False`` (the default memory format);
- ``harness-channels-last``: the same with ``channels_last=True`` (model and
  each batch in channels_last);
- ``minimal``: a hand-written loop (normalised tensors sliced into batches,
  forward, cross-entropy, backward, AdamW step);
- ``minimal-channels-last``: the same with model and inputs in channels_last.

``--eval`` times ``bench.train.evaluate`` (inference, batch 512) over the same
images instead, as ``evaluate`` and ``evaluate-channels-last``.

Each repeat runs every loop once, in turn, on fresh copies of one initial
model, so all see the same machine load; the table has the median img/s per
loop. Data: Fashion-MNIST's first ``--images`` training images (from the data
root or ``/usr/share/datasets/fashion-mnist``), or ``--data random`` uint8
tensors of that shape. Figures matter only on an otherwise idle machine.

Usage::

    OMP_NUM_THREADS=1 python benchmarks/train_loop.py [--model resnet|vit] [--images 3000]
        [--threads 1] [--repeats 3] [--data fmnist|random] [--eval] [--out train_loop.json]
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.data import load_dataset  # noqa: E402
from bench.data.base import DataBundle, Split  # noqa: E402
from bench.models import build_model  # noqa: E402
from bench.train import evaluate, make_optimizer, train  # noqa: E402

MODELS = {  # the fmnist suite's models
    "resnet": ("resnet10t", {"channels": [16, 32, 64, 128], "stem_width": 16}, "cifar"),
    "vit": ("vit_tiny_patch16_224", {"patch_size": 7, "embed_dim": 96, "depth": 4,
                                     "num_heads": 3}, None),
}
BUDGET = {"batch_size": 128, "optimizer": "adamw", "lr": 2.0e-3, "weight_decay": 5.0e-4}


def bundle(kind: str, images: int, root: str | None) -> DataBundle:
    """Fashion-MNIST's first ``images`` training images, or random ones of that shape."""
    if kind == "random":
        gen = torch.Generator().manual_seed(0)
        x = torch.randint(0, 256, (images, 1, 28, 28), dtype=torch.uint8, generator=gen)
        y = torch.randint(0, 10, (images,), generator=gen)
        split = Split(x, y)
        return DataBundle(name="random", train=split, val=split, test=split, num_classes=10,
                          in_chans=1, img_size=28, mean=(0.286,), std=(0.353,))
    data = load_dataset("fashion-mnist", {"train_subset": images, "val_fraction": 0.05,
                                          "augment": "none"}, root)
    return data


def harness_loop(model: nn.Module, data: DataBundle, channels_last: bool = False) -> int:
    train(model, data, epochs=1, augment=False, schedule="cosine", loop="host",
          channels_last=channels_last, **BUDGET)
    return len(data.train)


def eval_loop(model: nn.Module, data: DataBundle, channels_last: bool = False) -> int:
    evaluate(model, data, "train", channels_last=channels_last)
    return len(data.train)


def minimal_loop(model: nn.Module, data: DataBundle, channels_last: bool = False) -> int:
    x_all = data.normalize(data.train.x)
    y_all = data.train.y
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
        x_all = x_all.contiguous(memory_format=torch.channels_last)
    opt = make_optimizer(model.parameters(), BUDGET["optimizer"], BUDGET["lr"],
                         BUDGET["weight_decay"])
    model.train()
    bs = BUDGET["batch_size"]
    order = torch.randperm(len(y_all), generator=torch.Generator().manual_seed(0))
    for start in range(0, len(order), bs):
        idx = order[start:start + bs]
        loss = F.cross_entropy(model(x_all[idx]), y_all[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return len(y_all)


LOOPS = {
    "harness": harness_loop,
    "harness-channels-last": lambda m, d: harness_loop(m, d, channels_last=True),
    "minimal": minimal_loop,
    "minimal-channels-last": lambda m, d: minimal_loop(m, d, channels_last=True),
}
EVAL_LOOPS = {
    "evaluate": eval_loop,
    "evaluate-channels-last": lambda m, d: eval_loop(m, d, channels_last=True),
}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", choices=sorted(MODELS), default="resnet")
    ap.add_argument("--images", type=int, default=3000)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--data", choices=("fmnist", "random"), default="fmnist")
    ap.add_argument("--data-root", default=None)
    ap.add_argument("--loops", nargs="*", choices=sorted({**LOOPS, **EVAL_LOOPS}), default=None)
    ap.add_argument("--eval", action="store_true",
                    help="time evaluate() (inference, batch 512) instead of training")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)

    torch.set_num_threads(args.threads)
    loops = {**LOOPS, **EVAL_LOOPS}
    if args.loops is None:
        args.loops = list(EVAL_LOOPS if args.eval else LOOPS)
    data = bundle(args.data, args.images, args.data_root)
    name, kwargs, stem = MODELS[args.model]
    torch.manual_seed(0)
    initial = build_model(name, data.num_classes, data.in_chans, data.img_size, kwargs=kwargs,
                          stem=stem)
    samples: dict[str, list[float]] = {k: [] for k in args.loops}
    for _ in range(args.repeats):
        for loop in args.loops:
            model = copy.deepcopy(initial)
            t0 = time.perf_counter()
            n = loops[loop](model, data)
            samples[loop].append(n / (time.perf_counter() - t0))
    rows: list[dict[str, Any]] = []
    for loop, ips in samples.items():
        rows.append({"loop": loop, "model": args.model, "images": len(data.train),
                     "threads": args.threads, "img_per_s": round(statistics.median(ips), 1),
                     "samples": [round(v, 1) for v in ips],
                     "load_avg": [round(v, 2) for v in _load()]})
    print("| loop | model | images | threads | img/s (median) | samples |")
    print("|---|---|---:|---:|---:|---|")
    for r in rows:
        print(f"| {r['loop']} | {r['model']} | {r['images']} | {r['threads']} | "
              f"{r['img_per_s']} | {r['samples']} |")
    if args.out is not None:
        args.out.write_text(json.dumps(rows, indent=1))
    return 0


def _load() -> tuple[float, ...]:
    try:
        import os

        return os.getloadavg()
    except OSError:
        return ()


if __name__ == "__main__":
    raise SystemExit(main())
