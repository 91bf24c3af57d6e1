"""Latency timing: warm-up, then timed runs until a minimum count and duration.

Each sample is one forward pass, timed with perf_counter on CPU and CUDA events
on GPU; statistics come from the raw samples.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import asdict, dataclass, field

import torch
from torch import nn


@dataclass
class Latency:
    """Raw samples (ms) and their summary."""

    device: str
    batch_size: int
    threads: int
    samples_ms: list[float] = field(default_factory=list)

    @property
    def median_ms(self) -> float:
        return statistics.median(self.samples_ms)

    @property
    def p90_ms(self) -> float:
        return percentile(self.samples_ms, 90)

    @property
    def iqr_ms(self) -> float:
        return percentile(self.samples_ms, 75) - percentile(self.samples_ms, 25)

    def summary(self) -> dict:
        d = asdict(self)
        d.pop("samples_ms")
        d.update(median_ms=self.median_ms, p90_ms=self.p90_ms, iqr_ms=self.iqr_ms,
                 n=len(self.samples_ms),
                 throughput_per_s=1000.0 * self.batch_size / self.median_ms)
        return d


def percentile(values: list[float], q: float) -> float:
    """Linear-interpolated percentile (numpy's default) without numpy."""
    s = sorted(values)
    if not s:
        return float("nan")
    pos = (len(s) - 1) * q / 100.0
    lo = int(pos)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (pos - lo)


@torch.inference_mode()
def time_model(model: nn.Module, input_shape: tuple[int, ...], batch_size: int,
               device: str = "cpu", threads: int | None = None, warmup: int = 10,
               min_runs: int = 30, min_seconds: float = 1.0, max_runs: int = 10_000) -> Latency:
    """Time ``model`` on a fixed random batch; the model is put in eval mode."""
    old_threads = torch.get_num_threads()
    if threads is not None and device == "cpu":
        torch.set_num_threads(threads)
    try:
        model = model.eval().to(device)
        x = torch.randn((batch_size, *input_shape), generator=torch.Generator().manual_seed(0))
        x = x.to(device)
        for _ in range(warmup):
            model(x)
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        samples: list[float] = []
        start = time.perf_counter()
        while len(samples) < max_runs and (
            len(samples) < min_runs or time.perf_counter() - start < min_seconds
        ):
            samples.append(_one_run(model, x, device))
        return Latency(device=device, batch_size=batch_size,
                       threads=torch.get_num_threads(), samples_ms=samples)
    finally:
        torch.set_num_threads(old_threads)


def _one_run(model: nn.Module, x: torch.Tensor, device: str) -> float:
    if device.startswith("cuda"):
        begin = torch.cuda.Event(enable_timing=True)
        end = torch.cuda.Event(enable_timing=True)
        begin.record()
        model(x)
        end.record()
        torch.cuda.synchronize()
        return float(begin.elapsed_time(end))
    t0 = time.perf_counter()
    model(x)
    return (time.perf_counter() - t0) * 1000.0
