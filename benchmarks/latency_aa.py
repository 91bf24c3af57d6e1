"""How trustworthy is a speedup? A/A checks of the suites' models, and paired vs unpaired.

    python -m benchmarks.latency_aa                        # quick + fmnist models, idle
    python -m benchmarks.latency_aa --busy 1               # the same, one busy loop running
    python -m benchmarks.latency_aa --repeats 1 --rounds 4 --calls 2 --suites quick  # smoke

A/A: every model of the suites (built with ``bench.models.build_model`` and
the suite's kwargs, untrained: weights do not change dense latency) is timed
with the paired, interleaved timer against a deep copy of itself at the
suite's batch sizes and thread count; the speedup must come out 1.00 with an
interval that covers 1.0.

Paired vs unpaired: one fmnist-sized model (``--svd-model``, default the fmnist
suite's first model) compressed with ``bench.compress(..., "svd", macs=0.5)``
is timed against its dense model ``--repeats`` times both ways: the old way
(dense timed alone with ``time_model``, then the svd model alone, speedup =
ratio of medians) and paired (``time_paired``, median of per-round ratios).
The spread (min, max, relative range, CV) of the repeats says how much each
way can be trusted. Only the input shape matters for timing; no data is read.
Run on an otherwise idle machine: the figures are the point.
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import sys

import torch

import bench
from bench.measure.latency import time_model
from bench.measure.paired import time_paired
from bench.models import build_model
from bench.suite import load_suite

# dataset name -> (in_chans, img_size, num_classes): enough to build and time a model
SHAPES = {"digits": (1, 8, 10), "fashion-mnist": (1, 28, 10), "cifar10": (3, 32, 10),
          "cifar100": (3, 32, 100)}


def suite_models(name: str) -> list[tuple[str, torch.nn.Module, tuple[int, ...], object]]:
    """(label, fresh model, per-sample input shape, latency spec) per model of a suite."""
    suite, path = load_suite(name)
    dataset = suite.datasets[0].name
    if dataset not in SHAPES:
        raise SystemExit(f"{path}: datasets[0].name '{dataset}' has no known input shape; "
                         f"allowed here: {', '.join(SHAPES)}")
    chans, size, classes = SHAPES[dataset]
    out = []
    for m in suite.models:
        torch.manual_seed(0)
        model = build_model(m.name, classes, chans, size, kwargs=m.kwargs,
                            stem=None if m.stem == "default" else m.stem)
        out.append((f"{suite.name}/{m.display}", model.eval(), (chans, size, size),
                    suite.latency))
    return out


def spread(values: list[float]) -> str:
    lo, hi, med = min(values), max(values), statistics.median(values)
    cv = statistics.stdev(values) / statistics.fmean(values) if len(values) > 1 else 0.0
    return (f"median {med:.3f}, min {lo:.3f}, max {hi:.3f}, range {100 * (hi - lo) / med:.1f}% "
            f"of the median, CV {100 * cv:.1f}%")


def aa(args: argparse.Namespace) -> None:
    for suite in args.suites:
        for label, model, shape, spec in suite_models(suite):
            out = time_paired(model, copy.deepcopy(model), shape, spec.batch_sizes,
                              threads=spec.threads, rounds=args.rounds, calls=args.calls,
                              warmup=args.warmup)
            for key, e in out.items():
                s = e["speedup"]
                covers = s["ci_low"] <= 1.0 <= s["ci_high"]
                print(f"A/A {label} {key}: {s['median']:.3f}x [{s['ci_low']:.3f}, "
                      f"{s['ci_high']:.3f}] {'covers 1.0' if covers else 'does NOT cover 1.0'}"
                      f"{' (noisy)' if s['noisy'] else ''}; p50 {e['model']['p50_ms']:.3f} / "
                      f"{e['reference']['p50_ms']:.3f} ms; load {e['load_avg']}; "
                      f"threads {e['threads']}", flush=True)


def paired_vs_unpaired(args: argparse.Namespace) -> None:
    models = suite_models("fmnist")
    chosen = [m for m in models if args.svd_model in (None, m[0].split("/", 1)[1])]
    if not chosen:
        raise SystemExit(f"--svd-model '{args.svd_model}': not a model of the fmnist suite; "
                         f"allowed: {', '.join(m[0].split('/', 1)[1] for m in models)}")
    label, dense, shape, spec = chosen[0]
    comp = bench.compress(dense, "svd", macs=0.5, example_input=torch.zeros(1, *shape))
    svd = comp.model.eval()
    print(f"svd vs dense: {label}, MACs ratio {comp.macs_ratio:.3f}, threads {spec.threads}, "
          f"{args.repeats} repeats each", flush=True)
    kw = {"warmup": args.warmup, "min_runs": spec.min_runs, "min_seconds": spec.min_seconds}
    for bs in spec.batch_sizes:
        unpaired, paired, widths = [], [], []
        for i in range(args.repeats):
            d = time_model(dense, shape, bs, threads=spec.threads, **kw).median_ms
            s = time_model(svd, shape, bs, threads=spec.threads, **kw).median_ms
            unpaired.append(d / s)
            e = time_paired(svd, dense, shape, [bs], threads=spec.threads, rounds=args.rounds,
                            calls=args.calls, warmup=args.warmup)[f"b{bs}"]["speedup"]
            paired.append(e["median"])
            widths.append((e["ci_high"] - e["ci_low"]) / 2 / e["median"])
            print(f"  b{bs} repeat {i + 1}: unpaired {unpaired[-1]:.3f}x | paired "
                  f"{e['median']:.3f}x [{e['ci_low']:.3f}, {e['ci_high']:.3f}]", flush=True)
        print(f"b{bs} unpaired: {spread(unpaired)}")
        print(f"b{bs} paired:   {spread(paired)}; mean CI half-width "
              f"{100 * statistics.fmean(widths):.1f}%", flush=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--suites", nargs="+", default=["quick", "fmnist"])
    ap.add_argument("--rounds", type=int, default=30)
    ap.add_argument("--calls", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--svd-model", default=None, help="fmnist model label (default: the first)")
    ap.add_argument("--busy", type=int, default=0, help="busy-loop processes while measuring")
    ap.add_argument("--skip-aa", action="store_true")
    ap.add_argument("--skip-svd", action="store_true")
    args = ap.parse_args(argv)
    from benchmarks.contention import Busy

    print(f"torch {torch.__version__}; {os.cpu_count()} cores; load average "
          f"{os.getloadavg()[0]:.2f}; {args.busy} busy-loop process(es)", flush=True)
    with Busy(args.busy):
        if not args.skip_aa:
            aa(args)
        if not args.skip_svd:
            paired_vs_unpaired(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
