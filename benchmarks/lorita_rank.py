"""Does LoRITa's N-factor training lower the rank of the trained weights?

The paper's claim (arXiv 2405.03089): with the same weight decay and epochs,
training each layer as a product of N > 1 linear maps makes the singular
values of the merged weights decay faster than plain training (N = 1). This
script trains the same model for each N under the same optimizer, weight decay,
epochs and data order, merges the factors and reports per run:

- effective rank: the number of singular values holding 99% of the squared
  spectrum, averaged over the truncatable layers (the ``svd`` default
  selection) and over all Linear/Conv layers;
- test accuracy of the trained (merged) model;
- test accuracy after truncated SVD to each MAC target (local and global rank
  choice) with no fine-tuning: the direct effect of a faster-decaying spectrum.

Usage: ``python -m benchmarks.lorita_rank [--models mlp vit] [--seeds 0 1]
[--optimizers sgd adamw] [--epochs 30] [--out lorita_rank.json]``.
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import time
from typing import Any

import torch

from bench.data import load_dataset
from bench.measure import measure_cost
from bench.method import MethodContext, Target
from bench.models import build_model
from bench.train import evaluate, train
from methods.layers import select_layers
from methods.lorita import LoRITa, merge_factors, merged_effective_ranks

MODELS: dict[str, tuple[str, dict[str, Any]]] = {
    "mlp": ("mlp", {"hidden": [256, 256]}),
    "vit": ("vit_tiny_patch16_224", {"patch_size": 2, "embed_dim": 64, "depth": 2,
                                     "num_heads": 2}),
}
# The authors' CIFAR optimizer (SGD, lr 0.01, momentum 0.9) and the quick suite's AdamW.
OPTIMIZERS: dict[str, dict[str, Any]] = {
    "sgd": {"optimizer": "sgd", "lr": 0.01, "momentum": 0.9},
    "adamw": {"optimizer": "adamw", "lr": 2e-3},
}


def context(model: torch.nn.Module, shape: tuple[int, ...]) -> MethodContext:
    empty = lambda: iter(())  # noqa: E731
    return MethodContext(device=torch.device("cpu"), generator=torch.Generator(), seed=0,
                         calibration_batches=empty, val_batches=empty,
                         measure=lambda m: measure_cost(m, shape),
                         dense_cost=measure_cost(model, shape), input_shape=shape)


def run_one(model_key: str, n: int, opt_key: str, seed: int, epochs: int, weight_decay: float,
            targets: list[float], device: torch.device, data, init: str = "default",
            selections: tuple[str, ...] = ("local",)) -> dict[str, Any]:
    name, kwargs = MODELS[model_key]
    torch.manual_seed(seed)
    fresh = build_model(name, data.num_classes, data.in_chans, data.img_size, kwargs)
    dense_cost = measure_cost(fresh, data.input_shape)
    method = LoRITa({"N": n, "weight_decay": weight_decay, "init": init})
    model = method.prepare(copy.deepcopy(fresh), context(fresh, data.input_shape)).to(device)
    stats = train(model, data, epochs=epochs, batch_size=64, weight_decay=weight_decay,
                  augment=False, seed=seed, **OPTIMIZERS[opt_key])
    merged = merge_factors(copy.deepcopy(model)).cpu()
    eranks = merged_effective_ranks(merged)
    truncatable = select_layers(merged)
    row: dict[str, Any] = {
        "model": model_key, "N": n, "init": init if n > 1 else "-", "optimizer": opt_key,
        "seed": seed, "epochs": epochs,
        "weight_decay": weight_decay, "train_s": round(stats.seconds, 1),
        "erank_truncatable": statistics.mean(eranks[p] for p in truncatable),
        "erank_all": statistics.mean(eranks.values()),
        "erank_per_layer": eranks,
        "top1": evaluate(merged, data, "test")["top1"],
    }
    for selection in selections:
        truncate = LoRITa({"N": n, "rank_selection": selection})
        for ratio in targets:
            ctx = context(fresh, data.input_shape)
            ctx.dense_cost = dense_cost
            out = truncate.compress(copy.deepcopy(model).cpu(), Target("macs", ratio), ctx)
            row[f"top1_{selection}{ratio:g}"] = evaluate(out, data, "test")["top1"]
    return row


def summarize(rows: list[dict[str, Any]]) -> list[str]:
    keys = [k for k in rows[0] if k.startswith("top1")]
    lines = ["model  opt    N  init        erank(trunc)  erank(all)  " + "  ".join(keys)]
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((r["model"], r["optimizer"], r["N"], r["init"]), []).append(r)
    for (model, opt, n, init), rs in groups.items():
        def m(k: str, rs=rs) -> float:
            return statistics.mean(r[k] for r in rs)
        cells = "  ".join(f"{m(k):.4f}".rjust(len(k)) for k in keys)
        lines.append(f"{model:5s}  {opt:5s}  {n}  {init:10s}  {m('erank_truncatable'):12.1f}  "
                     f"{m('erank_all'):10.1f}  {cells}")
    return lines


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", default="digits")
    ap.add_argument("--models", nargs="+", default=["mlp"], choices=sorted(MODELS))
    ap.add_argument("--n", nargs="+", type=int, default=[1, 3])
    ap.add_argument("--optimizers", nargs="+", default=["sgd", "adamw"],
                    choices=sorted(OPTIMIZERS))
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--inits", nargs="+", default=["default"],
                    choices=["orthogonal", "default"], help="init of the added factors (N > 1)")
    ap.add_argument("--weight-decay", type=float, default=1e-3)
    ap.add_argument("--targets", nargs="+", type=float, default=[0.5, 0.25, 0.125])
    ap.add_argument("--selections", nargs="+", default=["local", "global"],
                    choices=["local", "global", "energy"])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--out", default=None, help="write all rows as JSON here")
    args = ap.parse_args(argv)
    data = load_dataset(args.dataset)
    device = torch.device(args.device)
    rows = []
    started = time.perf_counter()
    for model_key in args.models:
        for opt_key in args.optimizers:
            for n in args.n:
                for init in (args.inits if n > 1 else ["default"]):
                    for seed in args.seeds:
                        row = run_one(model_key, n, opt_key, seed, args.epochs,
                                      args.weight_decay, args.targets, device, data, init,
                                      tuple(args.selections))
                        rows.append(row)
                        print(f"{model_key} {opt_key} N={n} {row['init']} seed={seed}: erank "
                              f"{row['erank_truncatable']:.1f} top1 {row['top1']:.4f} "
                              f"({row['train_s']}s)", flush=True)
    print(f"\n{args.dataset}, {args.epochs} epochs, weight decay {args.weight_decay}, "
          f"seeds {args.seeds} (means); erank = singular values holding 99% energy; "
          f"top1_<rule><ratio> = truncated SVD (that rank rule) at that MAC ratio, "
          f"no fine-tuning")
    print("\n".join(summarize(rows)))
    print(f"total {time.perf_counter() - started:.0f}s")
    if args.out:
        with open(args.out, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
