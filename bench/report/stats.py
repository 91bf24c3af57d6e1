"""Statistics over seeds: mean +- std, 95% intervals and ties within noise.

A leaderboard that ranks 97.1 above 97.0 on one seed and a 359-image test set
is ranking noise. Every accuracy therefore carries a 95% interval:

- with two or more seeds, a percentile bootstrap interval of the mean over
  seeds (fixed generator, so reports are reproducible);
- with one seed, the Wilson score interval of a binomial proportion over the
  test set, whose size is read from the record or recovered from the
  accuracies themselves (every top-1 of one model x dataset is k / n_test).

Two entries tie when their intervals overlap; tied entries share a rank.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

Z95 = 1.959963984540054
BOOTSTRAP_SAMPLES = 4000
BOOTSTRAP_SEED = 20240607


@dataclass(frozen=True)
class Estimate:
    """A mean over seeds with its spread and 95% interval (all as fractions)."""

    mean: float
    std: float | None  # sample std over seeds; None with one seed
    n: int  # number of seeds
    lo: float
    hi: float
    method: str  # "bootstrap", "wilson" or "point"

    def overlaps(self, other: Estimate) -> bool:
        return self.lo <= other.hi and other.lo <= self.hi


def bootstrap_ci(values: Sequence[float], level: float = 0.95,
                 samples: int = BOOTSTRAP_SAMPLES, seed: int = BOOTSTRAP_SEED
                 ) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean; deterministic for a given input."""
    x = np.asarray(values, dtype=float)
    if len(x) == 0:
        raise ValueError("bootstrap_ci needs at least one value")
    if len(x) == 1:
        return float(x[0]), float(x[0])
    rng = np.random.default_rng(seed)
    means = x[rng.integers(0, len(x), size=(samples, len(x)))].mean(axis=1)
    alpha = (1 - level) / 2
    return float(np.quantile(means, alpha)), float(np.quantile(means, 1 - alpha))


def wilson_interval(p: float, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval of a proportion p measured on n samples."""
    if n <= 0:
        return p, p
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def infer_test_size(accuracies: Sequence[float], max_n: int = 200_000,
                    tol: float = 1e-6, min_distinct: int = 3) -> int | None:
    """Smallest n for which every accuracy is an integer count over n, or None.

    All cells of one model x dataset are scored on the same test split, so
    their accuracies share a denominator. The smallest common denominator is
    n / gcd(n, counts), which is n itself unless every count shares a factor
    with n; hence at least `min_distinct` distinct values are required (one
    value such as 0.75 would give n = 4). Values that are 0 or 1 say nothing.
    """
    vals = np.array([a for a in accuracies if a is not None and not math.isnan(a)
                     and 0 < a < 1], dtype=float)
    vals = np.unique(np.round(vals, 12))
    if len(vals) < min_distinct:
        return None
    n = np.arange(2, max_n + 1, dtype=float)
    ok = np.ones_like(n, dtype=bool)
    for v in vals:
        counts = v * n
        ok &= np.abs(counts - np.round(counts)) <= tol
        if not ok.any():
            return None
    return int(n[np.argmax(ok)])


def estimate(values: Sequence[float], test_n: int | None = None) -> Estimate:
    """Mean, std and 95% interval of one entry's accuracies over seeds."""
    x = [float(v) for v in values if v is not None and not math.isnan(float(v))]
    if not x:
        raise ValueError("estimate needs at least one accuracy")
    mean = float(np.mean(x))
    if len(x) >= 2:
        lo, hi = bootstrap_ci(x)
        return Estimate(mean, float(np.std(x, ddof=1)), len(x), lo, hi, "bootstrap")
    if test_n:
        lo, hi = wilson_interval(mean, test_n)
        return Estimate(mean, None, 1, lo, hi, "wilson")
    return Estimate(mean, None, 1, mean, mean, "point")


def tie_ranks(estimates: Sequence[Estimate]) -> list[tuple[int, bool]]:
    """Competition ranks by mean (best first) where overlapping intervals share a rank.

    Returns, for each input in input order, (rank, tied). An entry joins the
    group of the best entry above it whose interval it overlaps; the group
    takes that entry's rank, so [0.9, 0.899, 0.5] with wide intervals on the
    first two ranks as 1, 1, 3.
    """
    order = sorted(range(len(estimates)), key=lambda i: -estimates[i].mean)
    ranks: dict[int, int] = {}
    groups: dict[int, int] = {}
    leader: int | None = None
    for pos, i in enumerate(order):
        if leader is not None and estimates[i].overlaps(estimates[leader]):
            ranks[i] = ranks[leader]
        else:
            leader = i
            ranks[i] = pos + 1
        groups[ranks[i]] = groups.get(ranks[i], 0) + 1
    return [(ranks[i], groups[ranks[i]] > 1) for i in range(len(estimates))]
