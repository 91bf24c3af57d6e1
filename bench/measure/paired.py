"""Paired, interleaved timing of a model against its reference (usually the dense model).

Timing each model on its own and dividing by a dense figure taken at another
time turns every change of machine load into a fake speedup. Here both models
run in the same process, with the same threads, on the same fixed random batch,
in alternating rounds (ABBA: the order flips every round, so a drift in load
hits both sides alike). A round is a few calls of one side; its figure is the
median of those calls. The speedup is the median over rounds of
``reference round / model round`` (> 1: the model is faster), with a percentile
bootstrap 95% interval (fixed seed: the same samples give the same interval). A figure
whose statistical half-width exceeds ``noisy_rel`` of the median is flagged
``noisy``.

Why the interval is wider than a plain bootstrap over rounds: an A/A check (a
model against its own deep copy) on a 2-core CPU read 0.976 [0.968, 0.986] in
a suite run, an interval that excludes 1.0 for an identical model. Three
things make it honest:

- the unit of the bootstrap is an ABBA block (two rounds, one in each order;
  its ratio is the geometric mean of the two), so an order effect inside a
  round pair is not counted as independent evidence;
- rounds are spread over time: the batch sizes take turns block by block, and
  every ``refresh`` blocks both sides are replaced by fresh deep copies, so a
  slow drift of the machine or an unlucky memory placement of one copy shows
  up as spread between blocks instead of a fixed bias;
- a resolution floor ``floor_rel`` (the relative error an A/A pair keeps on
  this kind of machine whatever the number of rounds) is added to the
  statistical half-width in quadrature, on each side of the median.

Rounds are adaptive: after ``min_rounds`` the timer stops for a batch size as
soon as the (floored) interval's half-width is within ``target_rel`` of the
median, or at ``rounds``. Small, steady models stop early; noisy ones use the
whole budget and keep the wider interval.

Either side may be a prepared runtime instead of a module: any object with a
``fresh()`` method returning a callable on a batch (see
bench.measure.runtimes: a torch.compile'd copy, an onnxruntime session). Its
``fresh()`` is what a refresh calls instead of a deep copy.

CPU calls are timed with ``time.perf_counter``; CUDA calls with a CUDA event
pair, waiting on the end event. The 1-minute load average at the start and
end of each batch size is recorded beside the figures.
"""

from __future__ import annotations

import copy
import gc
import math
import os
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch
from torch import nn

from bench.measure.latency import percentile

DEFAULT_ROUNDS = 20
DEFAULT_CALLS = 5
NOISY_REL = 0.10
DEFAULT_REFRESH = 2  # ABBA blocks between fresh copies of both sides
DEFAULT_FLOOR_REL = 0.02  # an A/A pair's resolution on a 2-core CPU (suite default too)


@runtime_checkable
class FreshSide(Protocol):
    """A side of the paired timing prepared outside torch eager (a runtime)."""

    def fresh(self) -> Callable[[torch.Tensor], Any]:
        """A callable on one batch, placed anew (a new session, or the prepared copy)."""
        ...


Side = nn.Module | FreshSide


def _fresh(side: Side, device: str) -> Callable[[torch.Tensor], Any]:
    if isinstance(side, nn.Module):
        return copy.deepcopy(side).eval().to(device)
    return side.fresh()


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


def block_ratios(ref_rounds: Sequence[float], model_rounds: Sequence[float]) -> list[float]:
    """reference / model per ABBA block: the geometric mean of a block's two round ratios
    (a trailing odd round is a block of its own)."""
    ratios = [r / m for r, m in zip(ref_rounds, model_rounds)]
    return [math.prod(ratios[i:i + 2]) ** (1.0 / len(ratios[i:i + 2]))
            for i in range(0, len(ratios), 2)]


def speedup_stats(ref_rounds: Sequence[float], model_rounds: Sequence[float],
                  noisy_rel: float = NOISY_REL, seed: int = 0,
                  floor_rel: float = 0.0) -> dict[str, Any]:
    """The speedup (reference / model) of paired rounds: median over ABBA blocks.

    ``ci_low``/``ci_high``: the bootstrap interval of the block median, each
    side widened by ``floor_rel`` of the median in quadrature
    (``sqrt(stat^2 + (floor * median)^2)``); ``ci_low_stat``/``ci_high_stat``
    are the bootstrap alone. ``half_width_rel`` is the larger side of the
    widened interval over the median; ``noisy`` when the statistical
    half-width exceeds ``noisy_rel`` of the median.
    """
    if len(ref_rounds) != len(model_rounds) or not ref_rounds:
        raise ValueError(f"need as many reference as model rounds (>0); got "
                         f"{len(ref_rounds)} and {len(model_rounds)}")
    blocks = block_ratios(ref_rounds, model_rounds)
    med = float(statistics.median(blocks))
    lo, hi = bootstrap_median_ci(blocks, seed=seed)
    floor = floor_rel * med
    ci_low = med - math.hypot(med - lo, floor)
    ci_high = med + math.hypot(hi - med, floor)
    return {"median": med, "ci_low": ci_low, "ci_high": ci_high,
            "ci_low_stat": lo, "ci_high_stat": hi, "floor_rel": floor_rel,
            "half_width_rel": max(med - ci_low, ci_high - med) / med,
            "rounds": len(ref_rounds), "blocks": len(blocks),
            "noisy": (hi - lo) / 2.0 > noisy_rel * med}


def side_stats(samples_ms: Sequence[float]) -> dict[str, Any]:
    """Absolute figures of one side over all its timed calls."""
    s = list(samples_ms)
    return {"p50_ms": float(statistics.median(s)), "p90_ms": percentile(s, 90),
            "iqr_ms": percentile(s, 75) - percentile(s, 25), "n": len(s)}


def _cpu_call_timer(fn: Callable[[torch.Tensor], Any], x: torch.Tensor) -> float:
    t0 = time.perf_counter()
    fn(x)
    return (time.perf_counter() - t0) * 1000.0


def _cuda_call_timer() -> Callable[[Callable, torch.Tensor], float]:
    begin = torch.cuda.Event(enable_timing=True)
    end = torch.cuda.Event(enable_timing=True)

    def timed(fn: Callable[[torch.Tensor], Any], x: torch.Tensor) -> float:
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


def time_paired(model: Side, reference: Side,
                inputs: tuple[int, ...] | torch.Tensor, batch_sizes: Sequence[int] | None,
                threads: int | None = 1, rounds: int = DEFAULT_ROUNDS,
                calls: int = DEFAULT_CALLS, warmup: int = 3, device: str = "cpu",
                seed: int = 0, noisy_rel: float = NOISY_REL, min_rounds: int | None = None,
                target_rel: float | None = None, floor_rel: float = 0.0,
                refresh: int = DEFAULT_REFRESH) -> dict[str, dict[str, Any]]:
    """``{"b<batch>": entry}``: ``model`` timed against ``reference`` in ABBA rounds.

    ``inputs`` is a per-sample shape (a random batch per batch size, seeded) or
    one fixed batch (then ``batch_sizes`` is None). Both models are put in eval
    mode and timed as deep copies on ``device`` (the originals are not moved),
    under ``torch.inference_mode``. On CPU the torch thread count is ``threads``
    during the measurement and restored afterwards. ``rounds`` is the most
    rounds per batch size; with ``target_rel`` a batch size stops once it has
    ``min_rounds`` (default: ``rounds``) and its interval half-width is within
    ``target_rel`` of the median. Each entry: ``model``/``reference``
    p50/p90/IQR/n over all timed calls, ``speedup`` (reference / model, median
    over ABBA blocks, interval, noisy flag, rounds, blocks, why it stopped),
    ``load_avg`` [start, end] and ``threads``. ``model`` and ``reference`` may
    also be prepared runtimes (objects with ``fresh()``, see `FreshSide`).
    """
    if rounds < 2 or calls < 1:
        raise ValueError(f"paired timing needs rounds >= 2 and calls >= 1; got rounds={rounds}, "
                         f"calls={calls}")
    min_rounds = rounds if min_rounds is None else max(2, min(min_rounds, rounds))
    if refresh < 1:
        raise ValueError(f"refresh must be >= 1 block; got {refresh}")
    cuda = device.startswith("cuda")
    if cuda and not torch.cuda.is_available():
        raise RuntimeError(f"paired timing on {device}: no CUDA device available")
    batches = _resolve_inputs(inputs, batch_sizes, seed)
    old_threads = torch.get_num_threads()
    if threads is not None and not cuda:
        torch.set_num_threads(threads)
    originals = {"model": model, "reference": reference}
    try:
        timer = _cuda_call_timer() if cuda else _cpu_call_timer
        state = {f"b{bs}": _BatchState(make(device)) for bs, make in batches}
        sides: dict[str, Callable[[torch.Tensor], Any]] = {}
        block = 0
        with torch.inference_mode():
            while True:
                active = [s for s in state.values()
                          if not s.done(min_rounds, rounds, target_rel, floor_rel, seed)]
                if not active:
                    break
                if block % refresh == 0:  # fresh copies: another memory placement
                    sides = {k: _fresh(m, device) for k, m in originals.items()}
                    _warm(sides, [s.x for s in active], warmup if block == 0 else 1, cuda)
                for s in active:
                    if s.load_start is None:
                        s.load_start = load_avg_1m()
                    _abba_block(sides, s, timer, calls)
                block += 1
        return {key: s.entry(rounds, target_rel, floor_rel, noisy_rel, seed)
                for key, s in state.items()}
    finally:
        torch.set_num_threads(old_threads)


def _warm(sides: dict[str, Callable[[torch.Tensor], Any]], xs: list[torch.Tensor], n: int,
          cuda: bool) -> None:
    for x in xs:  # first calls: lazy initialisation, caches
        for name in ("model", "reference"):
            for _ in range(max(n, 1)):
                sides[name](x)
    if cuda:
        torch.cuda.synchronize()


@dataclass
class _BatchState:
    """The samples of one batch size so far."""

    x: torch.Tensor
    samples: dict[str, list[float]] = field(
        default_factory=lambda: {"model": [], "reference": []})
    rounds: dict[str, list[float]] = field(
        default_factory=lambda: {"model": [], "reference": []})
    load_start: float | None = None

    def done(self, min_rounds: int, max_rounds: int, target_rel: float | None,
             floor_rel: float, seed: int) -> bool:
        n = len(self.rounds["model"])
        if n >= max_rounds:
            return True
        if n < min_rounds or target_rel is None:
            return False
        s = speedup_stats(self.rounds["reference"], self.rounds["model"], floor_rel=floor_rel,
                          seed=seed)
        return s["half_width_rel"] <= target_rel

    def entry(self, max_rounds: int, target_rel: float | None, floor_rel: float,
              noisy_rel: float, seed: int) -> dict[str, Any]:
        speed = speedup_stats(self.rounds["reference"], self.rounds["model"], noisy_rel,
                              seed, floor_rel=floor_rel)
        hit = target_rel is not None and speed["half_width_rel"] <= target_rel
        speed["stopped"] = "target" if hit and speed["rounds"] < max_rounds else "max_rounds"
        return {"model": side_stats(self.samples["model"]),
                "reference": side_stats(self.samples["reference"]),
                "speedup": speed, "load_avg": [self.load_start, load_avg_1m()],
                "threads": torch.get_num_threads()}


def _abba_block(sides: dict[str, Callable[[torch.Tensor], Any]], s: _BatchState,
                timer: Callable[[Callable, torch.Tensor], float], calls: int) -> None:
    """Two rounds, model first then reference first, GC paused.

    One untimed call of the reference, then of the model, comes first: the block
    then starts as it would inside one long ABBA run (the model's caches warm,
    the reference's cold once when it takes over), instead of after another
    batch size, which would make the model's first round the only cold start.
    """
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        sides["reference"](s.x)
        sides["model"](s.x)
        for order in (("model", "reference"), ("reference", "model")):
            for name in order:
                times = [timer(sides[name], s.x) for _ in range(calls)]
                s.samples[name].extend(times)
                s.rounds[name].append(statistics.median(times))
    finally:
        if gc_was_enabled:
            gc.enable()
