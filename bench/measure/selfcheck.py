"""Is our latency figure repeatable, and does it agree with torch.utils.benchmark?

    python -m bench.measure.selfcheck                  # CPU, the quick suite's ViT
    python -m bench.measure.selfcheck --device cuda    # CUDA events path
    python bench/measure/selfcheck.py --device cuda    # same, needs only torch

Times one model ``--repeats`` times in one process (each repeat a full
measurement: warm-up, then runs until min count and min duration) and prints
the coefficient of variation of the per-repeat medians. Interleaved with ours,
``torch.utils.benchmark.Timer.blocked_autorange`` times the same model, batch
and thread count; the ratio of the two medians says whether our per-call
timing agrees with a reference that times blocks of calls. The reference's own
CV is printed too: it shows how noisy the machine was at the time.
"""

from __future__ import annotations

import argparse
import importlib
import os
import statistics
import sys
import types
from pathlib import Path
from typing import Any

import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[2]


def _measure_module(name: str) -> Any:
    """bench.measure.<name>, loaded without the package's other dependencies if need be."""
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    try:
        return importlib.import_module(f"bench.measure.{name}")
    except ImportError:  # e.g. pydantic absent: the timing modules need only torch
        for key in [k for k in sys.modules if k == "bench" or k.startswith("bench.")]:
            del sys.modules[key]
        for pkg, sub in (("bench", "bench"), ("bench.measure", "bench/measure")):
            mod = types.ModuleType(pkg)
            mod.__path__ = [str(ROOT / sub)]
            sys.modules[pkg] = mod
        return importlib.import_module(f"bench.measure.{name}")


def _convnet(width: int = 32) -> nn.Module:
    def block(cin: int, cout: int, stride: int) -> nn.Module:
        return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False),
                             nn.BatchNorm2d(cout), nn.ReLU(inplace=True))

    return nn.Sequential(block(3, width, 1), block(width, width, 1), block(width, 2 * width, 2),
                         block(2 * width, 2 * width, 1), block(2 * width, 4 * width, 2),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4 * width, 10))


def build(name: str) -> tuple[nn.Module, tuple[int, ...], str]:
    """A model and its per-sample input shape; vit-micro falls back to convnet without timm."""
    if name == "vit-micro":
        try:
            import timm
        except ImportError:
            name = "convnet"
        else:
            model = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=10,
                                      in_chans=1, img_size=8, patch_size=2, embed_dim=64,
                                      depth=2, num_heads=2)
            return model, (1, 8, 8), "vit-micro (quick suite's timm ViT, digits 8x8)"
    if name == "convnet":
        return _convnet(), (3, 32, 32), "convnet (5 conv-bn-relu, width 32, 32x32 input)"
    if name == "mlp":
        return (nn.Sequential(nn.Flatten(), nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 256),
                              nn.ReLU(), nn.Linear(256, 10)), (1, 8, 8), "mlp 64-256-256-10")
    raise SystemExit(f"unknown model '{name}'; choose vit-micro, convnet or mlp")


def reference_median_ms(model: nn.Module, x: torch.Tensor, threads: int,
                        min_run_time: float) -> float:
    """torch.utils.benchmark's median (ms per call) over blocks of calls."""
    from torch.utils import benchmark

    def call() -> None:
        with torch.inference_mode():
            model(x)

    timer = benchmark.Timer(stmt="call()", globals={"call": call}, num_threads=threads)
    return timer.blocked_autorange(min_run_time=min_run_time).median * 1000.0


def cv(values: list[float]) -> float:
    return statistics.stdev(values) / statistics.fmean(values) if len(values) > 1 else 0.0


def check(model: nn.Module, shape: tuple[int, ...], batch: int, args: argparse.Namespace,
          latency: Any) -> dict[str, float]:
    device = args.device
    model = model.eval().to(device)
    x = torch.randn((batch, *shape), generator=torch.Generator().manual_seed(0)).to(device)
    threads = args.threads if device == "cpu" else torch.get_num_threads()
    kw = dict(warmup=args.warmup, min_runs=args.min_runs, min_seconds=args.min_seconds)
    latency.time_model(model, shape, batch, device, threads=args.threads, **kw)  # process warm-up
    ours, ref, mins, extra = [], [], [], {}
    for i in range(args.repeats):
        lat = latency.time_model(model, shape, batch, device, threads=args.threads, **kw)
        s = lat.summary()
        ours.append(s["median_ms"])
        mins.append(s["min_ms"])
        old = torch.get_num_threads()
        ref.append(reference_median_ms(model, x, threads, args.min_seconds))
        torch.set_num_threads(old)
        extra = s
        print(f"  b{batch} repeat {i + 1:2d}: ours median {s['median_ms']:.4f} ms "
              f"(p90 {s['p90_ms']:.4f}, IQR {s['iqr_ms']:.4f}, n={s['n']}) | "
              f"blocked_autorange median {ref[-1]:.4f} ms", flush=True)
    result = {"batch": batch, "ours_median_ms": statistics.median(ours), "ours_cv": cv(ours),
              "ref_median_ms": statistics.median(ref), "ref_cv": cv(ref),
              "ours_min_cv": cv(mins),
              # each repeat pairs ours with the reference taken right after it, so a
              # change of machine load between repeats cancels out of the ratio
              "ratio": statistics.median(o / r for o, r in zip(ours, ref))}
    if "cuda_peak_mem_mb" in extra:
        result["cuda_peak_mem_mb"] = extra["cuda_peak_mem_mb"]
    return result


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="vit-micro", help="vit-micro | convnet | mlp")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--batches", type=int, nargs="+", default=[64, 1])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--min-runs", type=int, default=30)
    ap.add_argument("--min-seconds", type=float, default=0.5)
    args = ap.parse_args(argv)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("CUDA latency: n/a (no CUDA device)")
        return 2
    latency = _measure_module("latency")
    env = _measure_module("environment")
    model, shape, label = build(args.model)
    gpu = torch.cuda.get_device_name(0) if args.device.startswith("cuda") else None
    print(f"model: {label}; device {args.device}{f' ({gpu})' if gpu else ''}; "
          f"threads {args.threads}; repeats {args.repeats}; each: warm-up {args.warmup}, "
          f">= {args.min_runs} runs and >= {args.min_seconds} s")
    print(f"torch {torch.__version__}; CPU {env.cpu_model()}, {env.cpu_cores_available()} cores "
          f"available; load average {os.getloadavg()[0]:.2f} at start")
    rows = [check(model, shape, b, args, latency) for b in args.batches]
    print(f"load average {os.getloadavg()[0]:.2f} at end")
    print("batch | our median ms | CV of our median | CV of our min | "
          "blocked_autorange median ms | its CV | ours / autorange (median of paired ratios)")
    for r in rows:
        print(f"{r['batch']:5d} | {r['ours_median_ms']:13.4f} | {100 * r['ours_cv']:15.2f}% | "
              f"{100 * r['ours_min_cv']:12.2f}% | {r['ref_median_ms']:27.4f} | "
              f"{100 * r['ref_cv']:5.2f}% | {r['ratio']:.3f}"
              + (f" | cuda peak {r['cuda_peak_mem_mb']:.1f} MiB" if "cuda_peak_mem_mb" in r
                 else ""))
    for r in rows:
        print(f"b{r['batch']}: CV of median {100 * r['ours_cv']:.2f}% (goal < 3%: "
              f"{'met' if r['ours_cv'] < 0.03 else 'NOT met'}); ratio {r['ratio']:.3f} "
              f"(goal within 5%: {'met' if abs(r['ratio'] - 1) <= 0.05 else 'NOT met'})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
