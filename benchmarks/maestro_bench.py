"""Maestro against post-training SVD (and LoRITa) at the quick suite's targets.

Two measurements:

1. The quick suite restricted to ``dense``, ``svd``, ``lorita`` (when it is
   registered) and ``maestro``, run through the ordinary runner into its own
   results directory; the table has test top-1 after the common fine-tuning,
   the achieved MACs ratio and the CPU latency (batch 1 and 64, median ms) of
   every cell, read from the records.
2. Maestro's training-time overhead: seconds per epoch of the same model
   trained dense and trained with maestro (ordered dropout, group lasso,
   shrinking), alternating one epoch of each ``--repeats`` times in this
   process so both see the same machine load; medians are reported.

torch runs on one thread (``--threads``): on a shared CPU more threads make
small models slower and the timings noisier.

Usage: ``python -m benchmarks.maestro_bench [--results results/maestro_bench]
[--repeats 3] [--out maestro_bench.json]``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from typing import Any

import torch

from bench.cells import expand
from bench.data import load_dataset
from bench.method import MethodContext
from bench.models import build_model
from bench.plugins import method_names
from bench.runner import run_suite
from bench.store import ResultStore
from bench.suite import load_suite
from bench.train import train

BENCH_METHODS = ("dense", "svd", "lorita", "maestro")


def suite_subset(name: str) -> Any:
    suite, _ = load_suite(name)
    known = set(method_names())
    keep = [m for m in suite.methods if m.name in BENCH_METHODS and m.name in known]
    return suite.model_copy(update={"methods": keep, "name": f"{suite.name}-maestro-bench"})


def result_rows(results: Path, suite: Any) -> list[dict[str, Any]]:
    ids = {c.id for c in expand(suite)}  # this suite's cells only, not stale records
    rows = []
    for r in ResultStore(results).records():
        if r.get("cell_id") not in ids:
            continue
        if r.get("status") != "ok":
            rows.append({"model": r["model"], "method": r["method"],
                         "target": r.get("target_label"), "status": r.get("status")})
            continue
        m, cost = r["metrics"], r.get("cost", {})
        cpu = (m.get("latency") or {}).get("cpu") or {}
        rows.append({
            "model": r["model"], "method": r["method"], "target": r.get("target_label"),
            "top1": round(m["top1"], 4), "val_top1": round(m.get("val_top1", float("nan")), 4),
            "macs_ratio": round(m["macs_ratio"], 4), "params_ratio": round(m["params_ratio"], 4),
            "cpu_b1_ms": round(cpu.get("b1", {}).get("median_ms", float("nan")), 4),
            "cpu_b64_ms": round(cpu.get("b64", {}).get("median_ms", float("nan")), 4),
            "train_s": round(cost.get("method_train_s", 0.0) or cost.get("baseline_train_s", 0.0),
                             2),
            "compress_s": round(cost.get("compress_s", 0.0), 2),
            "status": "ok",
        })
    order = {m: i for i, m in enumerate(BENCH_METHODS)}
    rows.sort(key=lambda x: (x["model"], order.get(x["method"].split("[")[0], 9),
                             str(x["target"])))
    return rows


def epoch_overhead(suite: Any, repeats: int) -> list[dict[str, Any]]:
    """Median seconds per training epoch, dense vs maestro, interleaved."""
    from methods.maestro import Maestro

    data = load_dataset(suite.datasets[0].name, suite.datasets[0].options, None)
    budget = suite.train.model_dump()
    budget["epochs"] = 1
    out = []
    for spec in suite.models:
        def fresh(spec=spec) -> torch.nn.Module:
            torch.manual_seed(0)
            return build_model(spec.name, data.num_classes, data.in_chans, data.img_size,
                               kwargs=spec.kwargs)

        empty = lambda: iter(())  # noqa: E731
        ctx = MethodContext(device=torch.device("cpu"), generator=torch.Generator(), seed=0,
                            calibration_batches=empty, val_batches=empty,
                            measure=lambda m: None, input_shape=data.input_shape)  # type: ignore
        method = Maestro()
        dense, lod = fresh(), method.prepare(fresh(), ctx)
        times: dict[str, list[float]] = {"dense": [], "maestro": []}
        for i in range(repeats):
            t0 = time.perf_counter()
            train(dense, data, seed=i, **budget)
            times["dense"].append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            train(lod, data, seed=i, method=method, ctx=ctx, phase="train", **budget)
            times["maestro"].append(time.perf_counter() - t0)
        d, m = statistics.median(times["dense"]), statistics.median(times["maestro"])
        out.append({"model": spec.display, "dense_s_per_epoch": round(d, 3),
                    "maestro_s_per_epoch": round(m, 3), "overhead": round(m / d, 3),
                    "samples": times})
    return out


def print_table(rows: list[dict[str, Any]], keys: list[str]) -> None:
    print("| " + " | ".join(keys) + " |")
    print("|" + "---|" * len(keys))
    for r in rows:
        print("| " + " | ".join(str(r.get(k, "")) for k in keys) + " |")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--suite", default="quick")
    ap.add_argument("--results", default="results/maestro_bench")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--skip-suite", action="store_true", help="only the overhead measurement")
    ap.add_argument("--out", help="write all figures to this JSON file")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    suite = suite_subset(args.suite)
    report: dict[str, Any] = {"suite": suite.name, "methods": [m.name for m in suite.methods],
                              "threads": args.threads}
    if not args.skip_suite:
        t0 = time.perf_counter()
        run_suite(suite, args.results, device=torch.device("cpu"), executor="serial")
        report["suite_wall_s"] = round(time.perf_counter() - t0, 1)
        report["cells"] = result_rows(Path(args.results), suite)
        print_table(report["cells"], ["model", "method", "target", "top1", "val_top1",
                                      "macs_ratio", "params_ratio", "cpu_b1_ms", "cpu_b64_ms",
                                      "train_s", "compress_s"])
    report["overhead"] = epoch_overhead(suite, args.repeats)
    print_table(report["overhead"], ["model", "dense_s_per_epoch", "maestro_s_per_epoch",
                                     "overhead"])
    if args.out:
        Path(args.out).write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
