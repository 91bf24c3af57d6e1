"""Is our latency figure trustworthy? An A/A check, repeatability, and torch.utils.benchmark.

    python -m bench.measure.selfcheck                  # CPU, the quick suite's ViT
    python -m bench.measure.selfcheck --device cuda    # CUDA events path
    python -m bench.measure.selfcheck --aa-only        # only the A/A check

A/A: the model is timed against a ``copy.deepcopy`` of itself with the paired,
interleaved timer (``bench.measure.paired.time_paired``); the speedup must be
1.00 with a 95% interval that covers 1.0. Its interval width is the noise floor
of every speedup measured the same way on this machine.

Repeatability: times one model ``--repeats`` times in one process (each repeat
a full measurement: warm-up, then runs until min count and min duration) and
prints the coefficient of variation of the per-repeat medians. Interleaved with
ours, ``torch.utils.benchmark.Timer.blocked_autorange`` times the same model,
batch and thread count; the ratio of the two medians says whether our per-call
timing agrees with a reference that times blocks of calls. The reference's own
CV is printed too: it shows how noisy the machine was at the time.
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import sys
from typing import Any

import torch
from torch import nn

from bench.measure.environment import cpu_cores_available, cpu_model
from bench.measure.latency import time_model
from bench.measure.paired import DEFAULT_FLOOR_REL, time_paired


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


def check(model: nn.Module, shape: tuple[int, ...], batch: int,
          args: argparse.Namespace) -> dict[str, float]:
    device = args.device
    model = model.eval().to(device)
    x = torch.randn((batch, *shape), generator=torch.Generator().manual_seed(0)).to(device)
    threads = args.threads if device == "cpu" else torch.get_num_threads()
    kw = dict(warmup=args.warmup, min_runs=args.min_runs, min_seconds=args.min_seconds)
    time_model(model, shape, batch, device, threads=args.threads, **kw)  # process warm-up
    ours, ref, mins, extra = [], [], [], {}
    for i in range(args.repeats):
        lat = time_model(model, shape, batch, device, threads=args.threads, **kw)
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


def aa_check(model: nn.Module, shape: tuple[int, ...], batches: list[int], device: str = "cpu",
             threads: int = 1, rounds: int = 30, calls: int = 5,
             warmup: int = 10,
             floor_rel: float = DEFAULT_FLOOR_REL) -> dict[str, dict[str, Any]]:
    """The model timed against a deep copy of itself: ``time_paired`` entries per batch,
    with the suites' default resolution floor."""
    model = model.eval().to(device)
    return time_paired(model, copy.deepcopy(model), shape, batches, threads=threads,
                       rounds=rounds, calls=calls, warmup=warmup, device=device,
                       floor_rel=floor_rel)


def format_aa(entries: dict[str, dict[str, Any]]) -> list[str]:
    """One line per batch: the A/A speedup, its interval, and whether it covers 1.0."""
    lines = []
    for key, e in entries.items():
        s = e["speedup"]
        covers = s["ci_low"] <= 1.0 <= s["ci_high"]
        lines.append(f"A/A {key}: speedup {s['median']:.3f}x [{s['ci_low']:.3f}, "
                     f"{s['ci_high']:.3f}] over {s['rounds']} rounds "
                     f"({'covers 1.0' if covers else 'does NOT cover 1.0'}"
                     f"{', noisy' if s['noisy'] else ''}); p50 {e['model']['p50_ms']:.4f} vs "
                     f"{e['reference']['p50_ms']:.4f} ms; load {e['load_avg'][0]} -> "
                     f"{e['load_avg'][1]}; threads {e['threads']}")
    return lines


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
    ap.add_argument("--rounds", type=int, default=30, help="A/A: paired rounds")
    ap.add_argument("--calls", type=int, default=5, help="A/A: calls per round")
    ap.add_argument("--aa-only", action="store_true", help="only the A/A check")
    args = ap.parse_args(argv)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("CUDA latency: n/a (no CUDA device)")
        return 2
    model, shape, label = build(args.model)
    gpu = torch.cuda.get_device_name(0) if args.device.startswith("cuda") else None
    print(f"model: {label}; device {args.device}{f' ({gpu})' if gpu else ''}; "
          f"threads {args.threads}; repeats {args.repeats}; each: warm-up {args.warmup}, "
          f">= {args.min_runs} runs and >= {args.min_seconds} s")
    print(f"torch {torch.__version__}; CPU {cpu_model()}, {cpu_cores_available()} cores "
          f"available; load average {os.getloadavg()[0]:.2f} at start")
    aa = aa_check(model, shape, args.batches, args.device, args.threads, args.rounds,
                  args.calls, args.warmup)
    print("\n".join(format_aa(aa)), flush=True)
    if args.aa_only:
        return 0
    rows = [check(model, shape, b, args) for b in args.batches]
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
