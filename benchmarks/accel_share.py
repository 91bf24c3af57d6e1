"""How much of the theoretical speedup do decomposed models realise? svd vs svd-accel.

For one model of a suite (default: the quick suite's timm model), every
target and each method: train the dense model under the suite's budget,
compress it with ``bench.compress``, fine-tune with ``bench.api.finetune`` under
the suite's budget (method hooks on, so svd-accel's sequential freezing
runs), evaluate on the test split, then time the dense and all compressed
models in interleaved rounds (median of the per-round medians, so a noisy
neighbour on a shared CPU hits every model alike). The share of the
theoretical speedup realised is (dense latency / model latency) divided by
(dense MACs / model MACs).

    python -m benchmarks.accel_share quick --model vit-micro --rounds 5
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

import bench
from bench.api import finetune
from bench.data import load_dataset
from bench.measure import measure_cost
from bench.measure.latency import time_model
from bench.models import build_model
from bench.suite import load_suite
from bench.train import evaluate, train


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("suite", nargs="?", default="quick")
    ap.add_argument("--model", default=None, help="model label (default: the first timm model)")
    ap.add_argument("--methods", nargs="+", default=["svd", "svd-accel"])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--out", default=None, help="write the rows as JSON here")
    args = ap.parse_args(argv)

    suite, _ = load_suite(args.suite)
    spec = next(m for m in suite.models if (args.model or "") in (m.display, "")
                and (args.model or m.name != "mlp"))
    label, ds, seed = spec.display, suite.datasets[0], suite.seeds[0]
    data = load_dataset(ds.name, ds.options)
    torch.manual_seed(seed)
    dense = build_model(spec.name, data.num_classes, data.in_chans, data.img_size,
                        kwargs=spec.kwargs, stem=None if spec.stem == "default" else spec.stem)
    print(f"training dense {label} ({suite.train.epochs} epochs)")
    train(dense, data, seed=seed, **suite.train.model_dump())
    dense_cost = measure_cost(dense, data.input_shape)
    params_of = {m.name: (m.params or {}) for m in suite.methods}
    dense_top1 = evaluate(dense, data, "test")["top1"]
    models: dict[str, torch.nn.Module] = {"dense": dense}
    rows: list[dict] = []
    for name in args.methods:
        for target in suite.targets:
            (metric, ratio), = target.items()
            t0 = time.perf_counter()
            result = bench.compress(dense, name, data=data, seed=seed,
                                    method_params=params_of.get(name), **{metric: ratio})
            compress_s = time.perf_counter() - t0
            stats = finetune(result, data, seed=seed, **suite.finetune.model_dump())
            key = f"{name} {metric}<={ratio:g}"
            model = result.model
            models[key] = model
            cost = measure_cost(model, data.input_shape)
            rows.append({"method": name, "target": f"{metric}<={ratio:g}", "key": key,
                         "macs_ratio": cost.macs / dense_cost.macs,
                         "params_ratio": cost.params / dense_cost.params,
                         "top1": evaluate(model, data, "test")["top1"],
                         "compress_s": compress_s, "finetune_s": stats.seconds,
                         "ranks": result.info.get("ranks")})
            print(f"  {key}: macs x{rows[-1]['macs_ratio']:.3f} top1 {rows[-1]['top1']:.4f} "
                  f"finetune {stats.seconds:.1f}s")
    lat = suite.latency
    medians: dict[str, dict[int, list[float]]] = {k: {b: [] for b in lat.batch_sizes}
                                                  for k in models}
    for _ in range(args.rounds):
        for bs in lat.batch_sizes:
            for key, model in models.items():
                t = time_model(model, data.input_shape, bs, "cpu", threads=lat.threads,
                               min_runs=lat.min_runs, min_seconds=lat.min_seconds)
                medians[key][bs].append(t.median_ms)
    ms = {k: {b: statistics.median(v) for b, v in d.items()} for k, d in medians.items()}
    print(f"\n{label} on {ds.display}: dense top1 {dense_top1:.4f}, "
          f"threads {lat.threads}, {args.rounds} rounds")
    head = "| method | target | MACs x | top1 | " + " | ".join(
        f"b{b} ms | b{b} speedup | b{b} share" for b in lat.batch_sizes) + " | finetune s |"
    print(head)
    print("|" + "---|" * (head.count("|") - 1))
    for row in rows:
        cells_ = []
        for b in lat.batch_sizes:
            speedup = ms["dense"][b] / ms[row["key"]][b]
            share = speedup * row["macs_ratio"]  # speedup / (dense MACs / model MACs)
            row[f"b{b}"] = {"ms": ms[row["key"]][b], "dense_ms": ms["dense"][b],
                            "speedup": speedup, "share": share}
            cells_.append(f"{ms[row['key']][b]:.3f} | {speedup:.2f} | {share:.3f}")
        print(f"| {row['method']} | {row['target']} | {row['macs_ratio']:.3f} | "
              f"{row['top1']:.4f} | " + " | ".join(cells_) + f" | {row['finetune_s']:.1f} |")
    print("dense ms: " + ", ".join(f"b{b} {ms['dense'][b]:.3f}" for b in lat.batch_sizes))
    if args.out:
        Path(args.out).write_text(json.dumps({"dense_top1": dense_top1, "dense_ms": ms["dense"],
                                              "rows": rows}, indent=1, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
