"""Statistics over seeds: mean +- std, 95% intervals and ties within noise.

A leaderboard that ranks 97.1 above 97.0 on one seed and a 359-image test set
is ranking noise. What moves a result is mostly the seed (a rerun of a
post-training row can move it by several pp), so the intervals are over seeds:

- A row with three or more seeds gets the Student t interval of its mean over
  its own seeds, mean +- t(0.975, n - 1) s / sqrt(n) ("t"): rows differ in how
  much a seed moves them, and pooling would lend the noisiest row's spread to
  every other row.
- A row with fewer seeds, in a table (model x dataset x budget tier) where some
  row has two or more, takes the seed standard deviation pooled over the
  table's rows, s_p^2 = sum((n_i - 1) s_i^2) / sum(n_i - 1): mean +- t(0.975,
  df) s_p / sqrt(n_i) with df = sum(n_i - 1) ("pooled-t"). Two seeds that
  happen to agree would otherwise give a zero-width interval.
- A row on its own (the reference) gets the Student t interval over its own
  seeds, df = n - 1 ("t").
- With one seed in every row there is no seed-based interval: the Wilson score
  interval of a binomial proportion over the test set ("wilson") is shown,
  labelled as such, but it is far narrower than a rerun's spread and never
  makes a tie. The test size is read from the record or recovered from the
  accuracies (every top-1 of one model x dataset is k / n_test).

Seed intervals of an accuracy are clipped to [0, 1], the range it lives in.

Ties are decided on differences, paired by seed: rows of one model x dataset
share the dense model of each seed, so the seed moves them together. With
three or more shared seeds the difference gets the Student t interval of the
per-seed differences (df = n_shared - 1); with fewer, the interval
d +- t(0.975, df_r) s_r sqrt(2 / n_shared), where s_r is the residual standard
deviation of the additive model value = row + seed fitted to the whole table
(the randomised-block ANOVA; df_r = observations - rank of the design). An
entry ties with the leader of its group unless that interval lies above 0;
without shared seeds (or df_r = 0) the unpaired intervals are compared instead.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

Z95 = 1.959963984540054
# From this many seeds on, a row (or a pair of rows) is judged on its own spread: rows
# differ in how much a seed moves them (a post-training row after a short recovery by
# several pp, a model trained from scratch by a few tenths), and pooling would lend the
# noisiest row's spread to all. Below it, one row's two seeds say too little alone.
OWN_SPREAD_SEEDS = 3
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
    method: str  # "pooled-t", "t", "wilson" (one seed, over test samples) or "point"
    df: int = 0  # degrees of freedom of the t quantile (0 when not seed-based)

    @property
    def seed_based(self) -> bool:
        """Whether the interval is over seeds (else over test samples, or none)."""
        return self.method in ("pooled-t", "t")

    def overlaps(self, other: Estimate) -> bool:
        return self.lo <= other.hi and other.lo <= self.hi


@dataclass(frozen=True)
class SeedNoise:
    """Seed noise of one table: the pooled within-row standard deviation (for each
    row's interval) and the residual standard deviation once a per-seed effect
    shared by the rows is removed (for differences paired by seed)."""

    sd: float | None  # pooled within-row sd; None when df == 0
    df: int  # sum(n_i - 1) over the rows
    paired_sd: float | None  # residual sd of value = row + seed; None when paired_df == 0
    paired_df: int  # observations - rank of the row + seed design


@lru_cache(maxsize=256)
def t_quantile(p: float, df: int) -> float:
    """Quantile p of Student's t distribution with df degrees of freedom.

    scipy's (a dependency of scikit-learn) when importable; otherwise computed:
    with x = sqrt(df) tan(theta), P(0 < T < x) = c * integral_0^theta cos^(df-1),
    c = Gamma((df+1)/2) / (sqrt(pi) Gamma(df/2)), solved for theta by bisection.
    """
    if df < 1:
        raise ValueError("t_quantile needs df >= 1")
    try:
        from scipy.stats import t
        return float(t.ppf(p, df))
    except ImportError:
        pass
    if p < 0.5:
        return -t_quantile(1 - p, df)
    c = math.exp(math.lgamma((df + 1) / 2) - math.lgamma(df / 2)) / math.sqrt(math.pi)

    def mass(theta: float) -> float:  # P(0 < T < sqrt(df) tan(theta)), Simpson's rule
        th = np.linspace(0.0, theta, 2001)
        f = np.cos(th) ** (df - 1)
        h = theta / 2000
        return float(c * h / 3 * (f[0] + f[-1] + 4 * f[1:-1:2].sum() + 2 * f[2:-1:2].sum()))

    lo, hi = 0.0, math.pi / 2
    for _ in range(60):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if mass(mid) < p - 0.5 else (lo, mid)
    return math.sqrt(df) * math.tan((lo + hi) / 2)


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


def _clean(values: Sequence[float]) -> list[float]:
    return [float(v) for v in values if v is not None and not math.isnan(float(v))]


def estimate(values: Sequence[float], test_n: int | None = None) -> Estimate:
    """Mean, std and 95% interval of one entry's accuracies over seeds, on its own:
    Student t over its seeds (df = n - 1), else Wilson over the test samples.
    Rows of a table take `pooled_estimates` instead."""
    x = _clean(values)
    if not x:
        raise ValueError("estimate needs at least one accuracy")
    mean = float(np.mean(x))
    if len(x) >= 2:
        sd = float(np.std(x, ddof=1))
        half = t_quantile(0.975, len(x) - 1) * sd / math.sqrt(len(x))
        return Estimate(mean, sd, len(x), max(0.0, mean - half), min(1.0, mean + half), "t",
                        len(x) - 1)
    if test_n:
        lo, hi = wilson_interval(mean, test_n)
        return Estimate(mean, None, 1, lo, hi, "wilson")
    return Estimate(mean, None, 1, mean, mean, "point")


def seed_noise(per_seed: Sequence[Mapping[int, float]]) -> SeedNoise:
    """Seed noise of a table from each row's accuracy per seed ({seed: top-1})."""
    rows = [{int(k): float(v) for k, v in r.items() if v is not None and not math.isnan(v)}
            for r in per_seed]
    rows = [r for r in rows if r]
    ss = sum(float(((np.array(list(r.values())) - np.mean(list(r.values()))) ** 2).sum())
             for r in rows if len(r) >= 2)
    df = sum(len(r) - 1 for r in rows)
    seeds = sorted({s for r in rows for s in r})
    obs = [(i, seeds.index(s), v) for i, r in enumerate(rows) for s, v in r.items()]
    paired_sd, paired_df = None, 0
    if obs:
        design = np.zeros((len(obs), len(rows) + len(seeds)))
        for k, (i, j, _) in enumerate(obs):
            design[k, i] = design[k, len(rows) + j] = 1.0
        y = np.array([v for _, _, v in obs])
        coef = np.linalg.lstsq(design, y, rcond=None)[0]
        paired_df = len(obs) - int(np.linalg.matrix_rank(design))
        if paired_df > 0:
            paired_sd = math.sqrt(float(((y - design @ coef) ** 2).sum()) / paired_df)
    return SeedNoise(math.sqrt(ss / df) if df else None, df, paired_sd, paired_df)


def pooled_estimates(per_seed: Sequence[Mapping[int, float]], test_n: int | None = None
                     ) -> tuple[list[Estimate], SeedNoise]:
    """Estimates of the rows of one table, with the seed sd pooled over its rows.

    Every row (one with a single seed too) gets mean +- t(0.975, df) s_p / sqrt(n)
    when some row has two or more seeds; otherwise each row keeps its one-seed
    estimate (Wilson over the test samples, or a point)."""
    noise = seed_noise(per_seed)
    out = []
    for r in per_seed:
        x = _clean(list(r.values()))
        if noise.sd is None or len(x) >= OWN_SPREAD_SEEDS:
            out.append(estimate(x, test_n))  # its own Student t from three seeds on
            continue
        mean = float(np.mean(x))
        half = t_quantile(0.975, noise.df) * noise.sd / math.sqrt(len(x))
        out.append(Estimate(mean, float(np.std(x, ddof=1)) if len(x) >= 2 else None, len(x),
                            max(0.0, mean - half), min(1.0, mean + half), "pooled-t",
                            noise.df))
    return out, noise


def difference_interval(a: Mapping[int, float], b: Mapping[int, float], noise: SeedNoise
                        ) -> tuple[float, float, float] | None:
    """(mean, lo, hi) of a - b over the seeds both have, paired by seed: the 95% interval
    d +- t(0.975, df_r) s_r sqrt(2 / n_shared). None without a shared seed or residual df."""
    shared = sorted(set(a) & set(b))
    if len(shared) >= OWN_SPREAD_SEEDS:  # the pair's own differences: Student t, df n - 1
        diffs = [a[s] - b[s] for s in shared]
        d = float(np.mean(diffs))
        half = (t_quantile(0.975, len(diffs) - 1) * float(np.std(diffs, ddof=1))
                / math.sqrt(len(diffs)))
        return d, d - half, d + half
    if not shared or noise.paired_sd is None:
        return None
    d = float(np.mean([a[s] - b[s] for s in shared]))
    half = t_quantile(0.975, noise.paired_df) * noise.paired_sd * math.sqrt(2 / len(shared))
    return d, d - half, d + half


def separated(a: Estimate, b: Estimate, a_seeds: Mapping[int, float] | None = None,
              b_seeds: Mapping[int, float] | None = None, noise: SeedNoise | None = None
              ) -> int:
    """+1 when a lies above b beyond the 95% intervals, -1 when below, 0 when undecided.

    Paired by seed (`difference_interval`) when both are seed-based and share a seed;
    else the unpaired intervals must not overlap."""
    if (a.seed_based and b.seed_based and noise is not None and a_seeds is not None
            and b_seeds is not None):
        diff = difference_interval(a_seeds, b_seeds, noise)
        if diff is not None:
            return 1 if diff[1] > 0 else -1 if diff[2] < 0 else 0
    return 1 if a.lo > b.hi else -1 if a.hi < b.lo else 0


def tie_ranks(estimates: Sequence[Estimate],
              per_seed: Sequence[Mapping[int, float]] | None = None,
              noise: SeedNoise | None = None) -> list[tuple[int, bool]]:
    """Rank = 1 + the number of entries better beyond the 95% intervals; tied when
    another entry has the same rank.

    Returns, for each input in input order, (rank, tied). "Better beyond the
    intervals" is `separated` (paired by seed when `per_seed` gives each entry's
    {seed: value}; `noise` defaults to `seed_noise(per_seed)`). So [0.9, 0.899, 0.5]
    with wide intervals on the first two ranks as 1, 1, 3, and an entry ranks no
    lower than the data can tell: one that no entry beats beyond the intervals ranks
    1, even below a narrower entry's mean (the rank is the best place a rerun could
    plausibly give it, as in upper-bound ranks of LMSYS's Chatbot Arena). Where
    either entry's interval is not over seeds (one seed), the higher mean counts as
    better: only equal means share a rank.
    """
    if per_seed is not None and noise is None:
        noise = seed_noise(per_seed)
    seeds = list(per_seed) if per_seed is not None else [None] * len(estimates)

    def beats(j: int, i: int) -> bool:
        a, b = estimates[j], estimates[i]
        if a.seed_based and b.seed_based:
            return separated(a, b, seeds[j], seeds[i], noise) > 0
        return a.mean > b.mean

    n = len(estimates)
    ranks = [1 + sum(beats(j, i) for j in range(n) if j != i) for i in range(n)]
    counts: dict[int, int] = {}
    for r in ranks:
        counts[r] = counts.get(r, 0) + 1
    return [(r, counts[r] > 1) for r in ranks]
