"""Latency timing: warm-up, then timed runs until a minimum count AND duration.

Each sample is one forward pass of a fixed batch, the model in eval mode under
``torch.inference_mode``. CPU samples use ``time.perf_counter`` around the call
with a fixed thread count (recorded); CUDA samples use a pair of CUDA events
per call and wait for the end event, so each sample is the device time of one
forward pass, and peak memory comes from ``torch.cuda.max_memory_allocated``.
The garbage collector is paused during the timed loop so a collection does not
land inside a sample. Statistics (median, p90, IQR, ...) are computed from the
raw samples, which the :class:`Latency` object keeps.

Variants (``channels_last``, ``torch.compile``) time a copy of the model and
are recorded as separate measurements. This module needs only torch and the
standard library.
"""

from __future__ import annotations

import copy
import gc
import math
import os
import statistics
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from bench.measure.memory import PeakRSS


def percentile(values: list[float], q: float) -> float:
    """Linear-interpolated percentile (numpy's default method) without numpy."""
    s = sorted(values)
    if not s:
        return float("nan")
    pos = (len(s) - 1) * q / 100.0
    lo = int(math.floor(pos))
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (pos - lo)


def summarize(samples_ms: list[float]) -> dict[str, float | int]:
    """Order statistics and moments of raw samples (ms)."""
    if not samples_ms:
        raise ValueError("no samples to summarize")
    mean = statistics.fmean(samples_ms)
    std = statistics.stdev(samples_ms) if len(samples_ms) > 1 else 0.0
    p25, p75 = percentile(samples_ms, 25), percentile(samples_ms, 75)
    return {"n": len(samples_ms), "median_ms": statistics.median(samples_ms),
            "p90_ms": percentile(samples_ms, 90), "p25_ms": p25, "p75_ms": p75,
            "iqr_ms": p75 - p25, "mean_ms": mean, "std_ms": std,
            "cv": std / mean if mean else float("nan"),
            "min_ms": min(samples_ms), "max_ms": max(samples_ms),
            "total_s": sum(samples_ms) / 1000.0}


@dataclass
class Latency:
    """Raw samples (ms) of one measurement, how they were taken, and their summary."""

    device: str
    batch_size: int
    threads: int
    samples_ms: list[float] = field(default_factory=list)
    variant: str = "eager"
    timer: str = "perf_counter"
    warmup: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def median_ms(self) -> float:
        return statistics.median(self.samples_ms)

    @property
    def p90_ms(self) -> float:
        return percentile(self.samples_ms, 90)

    @property
    def iqr_ms(self) -> float:
        return percentile(self.samples_ms, 75) - percentile(self.samples_ms, 25)

    def summary(self) -> dict[str, Any]:
        """The JSON-ready record: settings, statistics, throughput, memory; no raw samples."""
        stats = summarize(self.samples_ms)
        return {"device": self.device, "batch_size": self.batch_size, "threads": self.threads,
                "variant": self.variant, "timer": self.timer, "warmup": self.warmup, **stats,
                "throughput_per_s": 1000.0 * self.batch_size / stats["median_ms"],
                **self.extra}


def _interop_threads() -> int | None:
    try:
        return torch.get_num_interop_threads()
    except RuntimeError:
        return None


def prepare_variant(model: nn.Module, x: torch.Tensor, channels_last: bool = False,
                    compile: bool = False, compile_backend: str = "inductor",
                    compile_mode: str | None = None) -> tuple[Any, torch.Tensor, str]:
    """A copy of ``model`` (and input) in the requested form, plus the variant's name."""
    names = []
    if channels_last or compile:
        model = copy.deepcopy(model)
    if channels_last:
        if x.dim() != 4:
            raise ValueError(f"channels_last needs NCHW input; got a {x.dim()}-d batch")
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
        names.append("channels_last")
    fn: Any = model
    if compile:
        fn = torch.compile(model, backend=compile_backend, mode=compile_mode, dynamic=False)
        names.append("compile" if compile_backend == "inductor" else f"compile-{compile_backend}")
    return fn, x, "+".join(names) or "eager"


def time_model(model: nn.Module, input_shape: tuple[int, ...], batch_size: int,
               device: str = "cpu", threads: int | None = None, warmup: int = 10,
               min_runs: int = 30, min_seconds: float = 1.0, max_runs: int = 10_000,
               channels_last: bool = False, compile: bool = False,
               compile_backend: str = "inductor", compile_mode: str | None = None,
               seed: int = 0, track_memory: bool = False) -> Latency:
    """Time ``model`` on a fixed random batch until ``min_runs`` and ``min_seconds`` are met.

    The model is put in eval mode on ``device``. On CPU the thread count is set
    to ``threads`` for the measurement and restored afterwards. ``track_memory``
    adds the approximate CPU peak RSS (a full garbage collection first: costly
    in a large process, so off for quick timings such as a method's search);
    CUDA peak memory is always recorded.
    """
    old_threads = torch.get_num_threads()
    if threads is not None and device == "cpu":
        torch.set_num_threads(threads)
    cuda = device.startswith("cuda")
    try:
        model = model.eval().to(device)
        gen = torch.Generator().manual_seed(seed)
        x = torch.randn((batch_size, *input_shape), generator=gen).to(device)
        fn, x, variant = prepare_variant(model, x, channels_last, compile, compile_backend,
                                         compile_mode)
        extra: dict[str, Any] = {"interop_threads": _interop_threads()}
        if hasattr(os, "getloadavg"):
            extra["loadavg_1m"] = round(os.getloadavg()[0], 2)
        with torch.inference_mode():
            if cuda:
                torch.cuda.synchronize(device)
                torch.cuda.reset_peak_memory_stats(device)
                base = torch.cuda.memory_allocated(device)
            t0 = time.perf_counter()
            fn(x)  # first call: lazy initialisation, and compilation for torch.compile
            if cuda:
                torch.cuda.synchronize(device)
            if compile:
                extra["compile_s"] = time.perf_counter() - t0
            rss = PeakRSS() if track_memory and not cuda else nullcontext()
            with rss:  # the rest of the warm-up and the timed runs
                for _ in range(max(warmup - 1, 0)):
                    fn(x)
                samples = _timed_loop(fn, x, cuda, min_runs, min_seconds, max_runs)
            if hasattr(os, "getloadavg"):
                extra["loadavg_1m_end"] = round(os.getloadavg()[0], 2)
            if cuda:
                peak = torch.cuda.max_memory_allocated(device)
                extra.update(cuda_peak_mem_mb=peak / 2**20,
                             cuda_peak_mem_delta_mb=(peak - base) / 2**20)
            elif isinstance(rss, PeakRSS):
                extra.update(rss.as_dict())
        return Latency(device=device, batch_size=batch_size, threads=torch.get_num_threads(),
                       samples_ms=samples, variant=variant,
                       timer="cuda_events" if cuda else "perf_counter", warmup=warmup,
                       extra=extra)
    finally:
        torch.set_num_threads(old_threads)


def _timed_loop(fn: Any, x: torch.Tensor, cuda: bool, min_runs: int, min_seconds: float,
                max_runs: int) -> list[float]:
    samples: list[float] = []
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        if cuda:
            begin = torch.cuda.Event(enable_timing=True)
            end = torch.cuda.Event(enable_timing=True)
        start = time.perf_counter()
        while len(samples) < max_runs and (
            len(samples) < min_runs or time.perf_counter() - start < min_seconds
        ):
            if cuda:
                begin.record()
                fn(x)
                end.record()
                end.synchronize()
                samples.append(float(begin.elapsed_time(end)))
            else:
                t0 = time.perf_counter()
                fn(x)
                samples.append((time.perf_counter() - t0) * 1000.0)
    finally:
        if gc_was_enabled:
            gc.enable()
    return samples
