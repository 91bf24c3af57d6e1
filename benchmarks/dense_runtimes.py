"""The dense models of the reference suites under each deployment runtime, against eager.

For every model of the named suites (built untrained: weights do not change
dense latency), times the model prepared for each runtime paired against the
same model in eager PyTorch (the harness's ABBA timing, one thread), and the
seconds it took to prepare (export or compile) for all batch sizes. Run it on
an otherwise idle machine; it prints one line per model, runtime and batch.

    python benchmarks/dense_runtimes.py fmnist cifar-cpu --runtimes onnxruntime compile
"""

from __future__ import annotations

import argparse
import time

import torch

from bench.measure.runtimes import time_runtime
from bench.models import build_model
from bench.suite import _nominal_shape, load_suite


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("suites", nargs="+")
    ap.add_argument("--runtimes", nargs="+", default=["onnxruntime", "compile"])
    ap.add_argument("--batch-sizes", nargs="+", type=int, default=None,
                    help="default: each suite's latency batch sizes")
    args = ap.parse_args()
    for name in args.suites:
        suite, _ = load_suite(name, check_models=False)
        batches = args.batch_sizes or list(suite.latency.batch_sizes)
        for spec in suite.models:
            for data in suite.datasets:
                chans, size, classes, _ = _nominal_shape(data)
                if data.name == "imagefolder":  # the CIFAR-10 JPEG copy
                    chans, size, classes = 3, 32, 10
                torch.manual_seed(0)
                model = build_model(spec.name, classes, chans, size, kwargs=spec.kwargs,
                                    stem=None if spec.stem == "default" else spec.stem).eval()
                for rt in args.runtimes:
                    t0 = time.perf_counter()
                    entries, info = time_runtime(
                        model, model, (chans, size, size), batches, rt,
                        threads=suite.latency.threads, reference_runtime="eager",
                        calls=suite.latency.paired_calls)
                    seconds = time.perf_counter() - t0
                    if entries is None:
                        print(f"{name} {spec.display} {rt}: {info.get('state')}: "
                              f"{info.get('error')}")
                        continue
                    for b, e in entries.items():
                        s = e["speedup"]
                        print(f"{name} {spec.display} b{b[1:]}: eager p50 "
                              f"{e['reference']['p50_ms']:.3f} ms, {rt} p50 "
                              f"{e['model']['p50_ms']:.3f} ms, {rt} over eager "
                              f"{s['median']:.2f}x [{s['ci_low']:.2f}, {s['ci_high']:.2f}]"
                              f"{' noisy' if s.get('noisy') else ''}")
                    print(f"{name} {spec.display} {rt}: prepared and timed in {seconds:.0f} s")


if __name__ == "__main__":
    main()
