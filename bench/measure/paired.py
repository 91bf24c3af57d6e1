"""Paired, interleaved timing of a model against its reference (usually the dense model).

Timing each model on its own and dividing by a dense figure taken at another
time turns every change of machine load into a fake speedup. Here both models
run in the same process, with the same threads, on the same fixed random batch,
in alternating rounds (ABBA: the order flips every round, so a drift in load
hits both sides alike). A round is a few calls of one side; its figure is the
median of those calls. The speedup is the median over rounds of
``reference round / model round`` (> 1: the model is faster), with a percentile
bootstrap 95% interval over rounds (fixed seed: the same samples give the same
interval). A figure whose interval half-width exceeds ``noisy_rel`` of the
median is flagged ``noisy``.

CPU calls are timed with ``time.perf_counter``; CUDA calls with a CUDA event
pair, waiting on the end event. The 1-minute load average at the start and
end of each batch size is recorded beside the figures.
"""

from __future__ import annotations

import gc
import os
import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from bench.measure.latency import percentile

DEFAULT_ROUNDS = 20
DEFAULT_CALLS = 5
NOISY_REL = 0.10


def load_avg_1m() -> float | None:
    """The 1-minute load average, or None where the platform has none."""
    return round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None


def bootstrap_median_ci(values: Sequence[float], n_boot: int = 2000, level: float = 0.95,
                        seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of the median of ``values`` (deterministic per seed)."""
    arr = np.asarray(values, dtype=float)
    if arr.size == 0:
        raise ValueError("no values to bootstrap")
    if arr.size == 1:
        return float(arr[0]), float(arr[0])
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, arr.size, size=(n_boot, arr.size))
    medians = np.median(arr[idx], axis=1)
    alpha = (1.0 - level) / 2.0
    lo, hi = np.quantile(medians, [alpha, 1.0 - alpha])
    return float(lo), float(hi)


def speedup_stats(ref_rounds: Sequence[float], model_rounds: Sequence[float],
                  noisy_rel: float = NOISY_REL, seed: int = 0) -> dict[str, Any]:
    """``{"median", "ci_low", "ci_high", "rounds", "noisy"}`` of per-round ref / model ratios."""
    if len(ref_rounds) != len(model_rounds) or not ref_rounds:
        raise ValueError(f"need as many reference as model rounds (>0); got "
                         f"{len(ref_rounds)} and {len(model_rounds)}")
    ratios = [r / m for r, m in zip(ref_rounds, model_rounds)]
    med = float(statistics.median(ratios))
    lo, hi = bootstrap_median_ci(ratios, seed=seed)
    return {"median": med, "ci_low": lo, "ci_high": hi, "rounds": len(ratios),
            "noisy": (hi - lo) / 2.0 > noisy_rel * med}


def side_stats(samples_ms: Sequence[float]) -> dict[str, Any]:
    """Absolute figures of one side over all its timed calls."""
    s = list(samples_ms)
    return {"p50_ms": float(statistics.median(s)), "p90_ms": percentile(s, 90),
            "iqr_ms": percentile(s, 75) - percentile(s, 25), "n": len(s)}


def _cpu_call_timer(fn: nn.Module, x: torch.Tensor) -> float:
    t0 = time.perf_counter()
    fn(x)
    return (time.perf_counter() - t0) * 1000.0


def _cuda_call_timer() -> Callable[[nn.Module, torch.Tensor], float]:
    begin = torch.cuda.Event(enable_timing=True)
    end = torch.cuda.Event(enable_timing=True)

    def timed(fn: nn.Module, x: torch.Tensor) -> float:
        begin.record()
        fn(x)
        end.record()
        end.synchronize()
        return float(begin.elapsed_time(end))

    return timed


def _resolve_inputs(inputs: tuple[int, ...] | torch.Tensor, batch_sizes: Sequence[int] | None,
                    seed: int) -> list[tuple[int, Callable[[str], torch.Tensor]]]:
    """(batch size, device -> fixed batch) per batch size."""
    if isinstance(inputs, torch.Tensor):
        bs = int(inputs.shape[0])
        if batch_sizes is not None and tuple(batch_sizes) != (bs,):
            raise ValueError(f"an input tensor fixes the batch size to {bs}; "
                             f"batch_sizes={tuple(batch_sizes)} disagrees (pass None)")
        return [(bs, lambda dev: inputs.to(dev))]
    if not batch_sizes:
        raise ValueError("batch_sizes is required with a per-sample input shape")

    def make(bs: int) -> Callable[[str], torch.Tensor]:
        gen = torch.Generator().manual_seed(seed)
        return lambda dev: torch.randn((bs, *inputs), generator=gen).to(dev)

    return [(int(bs), make(int(bs))) for bs in batch_sizes]


def time_paired(model: nn.Module, reference: nn.Module,
                inputs: tuple[int, ...] | torch.Tensor, batch_sizes: Sequence[int] | None,
                threads: int | None = 1, rounds: int = DEFAULT_ROUNDS,
                calls: int = DEFAULT_CALLS, warmup: int = 3, device: str = "cpu",
                seed: int = 0, noisy_rel: float = NOISY_REL) -> dict[str, dict[str, Any]]:
    """``{"b<batch>": entry}``: ``model`` timed against ``reference`` in ABBA rounds.

    ``inputs`` is a per-sample shape (a random batch per batch size, seeded) or
    one fixed batch (then ``batch_sizes`` is None). Both models are put in eval
    mode on ``device`` (moved in place: pass copies if the caller needs them
    elsewhere) and called under ``torch.inference_mode``. On CPU the torch
    thread count is ``threads`` during the measurement and restored afterwards.
    Each entry: ``model``/``reference`` p50/p90/IQR/n over all timed calls,
    ``speedup`` (reference / model, median over rounds, bootstrap CI, noisy
    flag), ``load_avg`` [start, end] and ``threads``.
    """
    if rounds < 2 or calls < 1:
        raise ValueError(f"paired timing needs rounds >= 2 and calls >= 1; got rounds={rounds}, "
                         f"calls={calls}")
    cuda = device.startswith("cuda")
    if cuda and not torch.cuda.is_available():
        raise RuntimeError(f"paired timing on {device}: no CUDA device available")
    batches = _resolve_inputs(inputs, batch_sizes, seed)
    old_threads = torch.get_num_threads()
    if threads is not None and not cuda:
        torch.set_num_threads(threads)
    try:
        sides = {"model": model.eval().to(device), "reference": reference.eval().to(device)}
        timer = _cuda_call_timer() if cuda else _cpu_call_timer
        out: dict[str, dict[str, Any]] = {}
        for bs, make in batches:
            x = make(device)
            out[f"b{bs}"] = _paired_rounds(sides, x, timer, rounds, calls, warmup, cuda,
                                           seed, noisy_rel)
        return out
    finally:
        torch.set_num_threads(old_threads)


def _paired_rounds(sides: dict[str, nn.Module], x: torch.Tensor,
                   timer: Callable[[nn.Module, torch.Tensor], float], rounds: int, calls: int,
                   warmup: int, cuda: bool, seed: int, noisy_rel: float) -> dict[str, Any]:
    samples: dict[str, list[float]] = {"model": [], "reference": []}
    per_round: dict[str, list[float]] = {"model": [], "reference": []}
    load_start = load_avg_1m()
    gc_was_enabled = gc.isenabled()
    with torch.inference_mode():
        for name in ("model", "reference"):  # first call: lazy initialisation, caches
            for _ in range(max(warmup, 1)):
                sides[name](x)
        if cuda:
            torch.cuda.synchronize()
        gc.disable()
        try:
            for r in range(rounds):
                order = ("model", "reference") if r % 2 == 0 else ("reference", "model")
                for name in order:
                    fn = sides[name]
                    times = [timer(fn, x) for _ in range(calls)]
                    samples[name].extend(times)
                    per_round[name].append(statistics.median(times))
        finally:
            if gc_was_enabled:
                gc.enable()
    return {"model": side_stats(samples["model"]),
            "reference": side_stats(samples["reference"]),
            "speedup": speedup_stats(per_round["reference"], per_round["model"], noisy_rel,
                                     seed),
            "load_avg": [load_start, load_avg_1m()],
            "threads": torch.get_num_threads()}
