"""Paired, interleaved timings of a dense layer against its factorized forms.

A decision taken from timings on a busy machine is only as repeatable as
the timings. Each round times the dense layer and a factorized candidate back
to back (the order flipped every other round, so drift does not favour one),
at every batch size; the round's figure is their time ratio (factorized /
dense, mean over batch sizes). Over ``rounds`` rounds the median ratio and the
noise (the interquartile range of the ratios, about 3 standard errors of the
median for normal noise) give a verdict:

- ``faster``: median < 1 - margin - noise: clearly faster, decompose;
- ``slower``: median > 1 + margin + noise: clearly slower, keep dense;
- ``tie``: within margin + noise of parity: the timings cannot decide, and
  the caller falls back to its MACs rule.

So only differences well outside the noise decide by time; a layer near
parity is decided by MACs, the same way in every run.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

from torch import nn

from bench.measure.latency import time_model

Verdict = Literal["faster", "slower", "tie"]


@dataclass
class PairedTiming:
    """Per-round factorized/dense time ratios of one candidate rank."""

    ratios: list[float]

    @property
    def median(self) -> float:
        return statistics.median(self.ratios)

    @property
    def noise(self) -> float:
        """The interquartile range of the per-round ratios (0 with one round)."""
        if len(self.ratios) < 2:
            return 0.0
        q1, _, q3 = statistics.quantiles(self.ratios, n=4, method="inclusive")
        return q3 - q1

    def verdict(self, margin: float) -> Verdict:
        band = margin + self.noise
        if self.median < 1.0 - band:
            return "faster"
        if self.median > 1.0 + band:
            return "slower"
        return "tie"

    def as_record(self, margin: float) -> dict:
        return {"median": round(self.median, 4), "noise": round(self.noise, 4),
                "verdict": self.verdict(margin), "ratios": [round(r, 4) for r in self.ratios]}


@dataclass
class LayerTimings:
    """Paired timings of every timed candidate rank of one layer."""

    pairs: dict[int, PairedTiming] = field(default_factory=dict)
    dense_ms: dict[int, float] = field(default_factory=dict)  # last dense median per batch

    @property
    def relative(self) -> dict[int, float]:
        """Median factorized/dense time ratio per rank."""
        return {r: pt.median for r, pt in self.pairs.items()}


def measure_ms(module: nn.Module, in_shape: tuple[int, ...], batch: int, threads: int) -> float:
    """Median milliseconds of one forward of ``module`` (the one timer; tests replace it)."""
    return time_model(module, in_shape, batch, threads=threads, warmup=3, min_runs=11,
                      min_seconds=0.01).median_ms


DEFAULT_TIMER = measure_ms  # timings of this timer may be cached on disk; a test's may not


def paired_timings(dense: nn.Module, candidates: dict[int, nn.Module], in_shape: tuple[int, ...],
                   batches: list[int], rounds: int, threads: int,
                   timer: Callable[..., float] | None = None) -> LayerTimings:
    """Time ``dense`` against each candidate in ``rounds`` interleaved, order-flipped rounds."""
    timer = timer or measure_ms
    out = LayerTimings()
    per_round: dict[int, list[float]] = {r: [] for r in candidates}
    for k in range(rounds):
        for r, fact in candidates.items():
            ratio = 0.0
            for bs in batches:
                if k % 2 == 0:
                    d = timer(dense, in_shape, bs, threads)
                    f = timer(fact, in_shape, bs, threads)
                else:
                    f = timer(fact, in_shape, bs, threads)
                    d = timer(dense, in_shape, bs, threads)
                out.dense_ms[bs] = d
                ratio += f / max(d, 1e-9)
            per_round[r].append(ratio / len(batches))
    out.pairs = {r: PairedTiming(v) for r, v in per_round.items()}
    return out
