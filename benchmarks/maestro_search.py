"""Maestro's deploy-time rank search: the exhaustive greedy against the fast one, same model.

For every model of a suite (default ``quick``), one maestro model is trained
with the suite's training budget (or loaded from ``--cache``), then each search
(``exhaustive``: every candidate recalibrated and scored on ``search_batches``;
``fast``: the default, see ``methods/maestro_search.py``) walks the suite's
targets in order on a copy of that same trained model. Per target it reports
the chosen ranks, val/test top-1 straight after the search (BatchNorm
recalibrated, no fine-tuning) and after the suite's fine-tuning, and the
search's cost: forward (and backward) images and seconds. Forward-image counts
and accuracies do not depend on the machine's load; seconds do, so compare
them only within one run.

Usage (from the repository root, one thread is the fair setting on a shared CPU)::

    OMP_NUM_THREADS=1 python benchmarks/maestro_search.py [--suite quick] [--models mlp]
        [--epochs N] [--train-subset N] [--param rank_step=0.25] [--cache DIR]
        [--no-finetune] [--out maestro_search.json]
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from pathlib import Path
from typing import Any

import torch
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.data import load_dataset  # noqa: E402
from bench.measure import measure_cost  # noqa: E402
from bench.method import MethodContext, Target  # noqa: E402
from bench.models import build_model  # noqa: E402
from bench.suite import load_suite  # noqa: E402
from bench.train import evaluate, train  # noqa: E402
from methods.maestro import Maestro  # noqa: E402

SEARCHES = ("exhaustive", "fast")


def context(data: Any, batch_size: int, seed: int, dense_cost: Any) -> MethodContext:
    """The harness's context for a cell: calibration on shuffled train batches, val at 256."""
    shape = data.input_shape
    return MethodContext(
        device=torch.device("cpu"), generator=torch.Generator().manual_seed(seed), seed=seed,
        calibration_batches=lambda: data.batches(
            "train", batch_size, shuffle=True, generator=torch.Generator().manual_seed(seed)),
        val_batches=lambda: data.batches("val", 256),
        measure=lambda m: measure_cost(m, shape), dense_cost=dense_cost, input_shape=shape,
        num_classes=data.num_classes)


def trained_model(spec: Any, data: Any, budget: dict[str, Any], params: dict[str, Any],
                  seed: int, cache: Path | None) -> tuple[torch.nn.Module, Any, dict[str, Any]]:
    """A maestro model trained with the suite's budget (cached by model, epochs and seed)."""
    torch.manual_seed(seed)
    dense = build_model(spec.name, data.num_classes, data.in_chans, data.img_size,
                        kwargs=spec.kwargs, stem=None if spec.stem == "default" else spec.stem)
    dense_cost = measure_cost(dense, data.input_shape)
    method = Maestro(params)
    ctx = context(data, budget["batch_size"], seed, dense_cost)
    model = method.prepare(dense, ctx)
    subset = data.info.get("train_subset") or len(data.train)
    name = f"{data.name}-{spec.display}-n{subset}-e{budget['epochs']}-s{seed}.pt"
    path = None if cache is None else cache / name
    info: dict[str, Any] = {}
    if path is not None and path.exists():
        model.load_state_dict(torch.load(path, weights_only=True))
        info["train_s"] = None
    else:
        t0 = time.perf_counter()
        train(model, data, seed=seed, method=method, ctx=ctx, phase="train", **budget)
        info["train_s"] = round(time.perf_counter() - t0, 2)
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            torch.save(model.state_dict(), path)
    info["train_images_per_epoch"] = len(data.train)
    return model, dense_cost, info


def run_search(model: torch.nn.Module, data: Any, dense_cost: Any, params: dict[str, Any],
               targets: list[Target], finetune: dict[str, Any] | None, seed: int,
               batch_size: int) -> list[dict[str, Any]]:
    """One search mode over the targets in order (later targets resume the cached path)."""
    method, rows = Maestro(params), []
    for target in targets:
        ctx = context(data, batch_size, seed, dense_cost)
        out = method.compress(copy.deepcopy(model), target, ctx)
        cost = measure_cost(out, data.input_shape).get(target.metric)
        row = {"target": target.label, "achieved": round(cost / dense_cost.get(target.metric), 4),
               "ranks": ctx.info["ranks"],
               "val_top1": evaluate(out, data, "val")["top1"],
               "test_top1": evaluate(out, data, "test")["top1"],
               "search_forward_images": ctx.info["search_forward_images"],
               "search_backward_images": ctx.info.get("search_backward_images", 0),
               "search_s": ctx.info["search_s"]}
        if finetune is not None:
            train(out, data, seed=seed + 3, phase="finetune", **finetune)
            row["val_top1_ft"] = evaluate(out, data, "val")["top1"]
            row["test_top1_ft"] = evaluate(out, data, "test")["top1"]
        rows.append(row)
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--suite", default="quick")
    ap.add_argument("--models", nargs="*", help="model labels to keep (default: all)")
    ap.add_argument("--seed", type=int, default=None, help="default: the suite's first seed")
    ap.add_argument("--epochs", type=int, default=None, help="override the training epochs")
    ap.add_argument("--train-subset", type=int, default=None,
                    help="train on this many images (tiny smoke runs)")
    ap.add_argument("--cache", type=Path, default=Path("/tmp/maestro_search"),
                    help="trained models are kept here between runs")
    ap.add_argument("--searches", nargs="*", default=list(SEARCHES), choices=SEARCHES)
    ap.add_argument("--param", action="append", default=[], metavar="KEY=VALUE",
                    help="override a maestro parameter for both searches (YAML value)")
    ap.add_argument("--no-finetune", action="store_true")
    ap.add_argument("--data-root", default=None)
    ap.add_argument("--out", type=Path, default=None, help="write the rows as JSON here")
    args = ap.parse_args(argv)

    suite, _ = load_suite(args.suite)
    seed = suite.seeds[0] if args.seed is None else args.seed
    spec_m = next(m for m in suite.methods if m.name == "maestro")
    params = spec_m.param_sets()[0]
    for item in args.param:
        key, _, value = item.partition("=")
        params[key] = yaml.safe_load(value)
    targets = [Target(*next(iter(t.items()))) for t in (spec_m.targets or suite.targets)]
    budget = suite.train.model_dump()
    if args.epochs is not None:
        budget["epochs"] = args.epochs
    finetune = None if args.no_finetune else suite.finetune.model_dump()
    report: list[dict[str, Any]] = []
    for dspec in suite.datasets:
        options = dict(dspec.options)
        if args.train_subset is not None:
            options["train_subset"] = args.train_subset
        data = load_dataset(dspec.name, options, args.data_root)
        for mspec in suite.models:
            if args.models and mspec.display not in args.models:
                continue
            model, dense_cost, info = trained_model(mspec, data, budget, params, seed, args.cache)
            for search in args.searches:
                rows = run_search(model, data, dense_cost, {**params, "search": search}, targets,
                                  finetune, seed, budget["batch_size"])
                for row in rows:
                    row.update(model=mspec.display, dataset=dspec.display, search=search, **info)
                    report.append(row)
                    print(json.dumps({k: v for k, v in row.items() if k != "ranks"}), flush=True)
    print_table(report)
    if args.out is not None:
        args.out.write_text(json.dumps(report, indent=1))
    return 0


def print_table(rows: list[dict[str, Any]]) -> None:
    keys = ["model", "target", "search", "achieved", "val_top1", "test_top1", "val_top1_ft",
            "test_top1_ft", "search_forward_images", "search_backward_images", "search_s",
            "train_images_per_epoch"]
    print("| " + " | ".join(keys) + " |")
    print("|" + "---|" * len(keys))
    for r in rows:
        print("| " + " | ".join(str(r.get(k, "")) for k in keys) + " |")
    for r in rows:
        print(r["model"], r["target"], r["search"], "ranks:", json.dumps(r["ranks"]))


if __name__ == "__main__":
    raise SystemExit(main())
