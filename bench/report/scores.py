"""Summary scores that reward a method's whole accuracy/cost curve, not one point.

- Area under the accuracy-vs-cost curve over the common range: each method's
  points (cost ratio to dense, top-1) are joined linearly in log2(cost) and
  integrated over the range every curve covers, then divided by the range's
  width. The result is the method's mean top-1 over that range, in %, so
  methods compare on exactly the same budgets and the number reads like an
  accuracy. Budgets are geometric (1/2, 1/4, 1/8), hence the log axis.
- Iso-accuracy: the smallest measured cost ratio at which the method keeps
  99% of dense top-1 (MLPerf's 99% quality tier). Measured points only, no
  interpolation: a number here is a model someone could ship.
- Cross-group ranking over equal coverage: methods ranked within each suite x
  model x dataset by each score and ranks averaged, among the methods scored
  in every group only; beside it a head-to-head win rate (HELM), which
  compares two methods only where both have a score.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence

import numpy as np

KEEP = 0.99

Curve = Sequence[tuple[float, float]]


def _clean(points: Curve) -> tuple[np.ndarray, np.ndarray]:
    """Sorted log2(x) and y with non-finite points dropped and equal x averaged."""
    acc: dict[float, list[float]] = defaultdict(list)
    for x, y in points:
        if x is None or y is None or not (x > 0) or math.isnan(y) or math.isinf(x):
            continue
        acc[float(x)].append(float(y))
    xs = sorted(acc)
    return np.log2(np.array(xs)), np.array([float(np.mean(acc[x])) for x in xs])


def common_range(curves: Mapping[str, Curve]) -> tuple[float, float] | None:
    """[max of the minima, min of the maxima] of the curves' x (ratios), or None if empty."""
    spans = []
    for pts in curves.values():
        lx, _ = _clean(pts)
        if len(lx) >= 2:
            spans.append((lx[0], lx[-1]))
    if not spans:
        return None
    lo, hi = max(s[0] for s in spans), min(s[1] for s in spans)
    if hi <= lo:
        return None
    return float(2 ** lo), float(2 ** hi)


def mean_over_range(points: Curve, lo: float, hi: float) -> float | None:
    """Mean of the piecewise-linear curve (in log2 x) over [lo, hi], or None if not covered."""
    lx, y = _clean(points)
    a, b = math.log2(lo), math.log2(hi)
    if len(lx) < 2 or lx[0] > a + 1e-12 or lx[-1] < b - 1e-12 or b <= a:
        return None
    grid = np.unique(np.concatenate([[a, b], lx[(lx > a) & (lx < b)]]))
    vals = np.interp(grid, lx, y)
    area = float(np.sum((vals[1:] + vals[:-1]) / 2 * np.diff(grid)))
    return area / (b - a)


def area_scores(curves: Mapping[str, Curve]) -> tuple[dict[str, float | None],
                                                         tuple[float, float] | None]:
    """Each curve's mean y over the common range of all curves with two or more points."""
    rng = common_range(curves)
    if rng is None:
        return {m: None for m in curves}, None
    return {m: mean_over_range(pts, *rng) for m, pts in curves.items()}, rng


def iso_accuracy(points: Curve, dense_acc: float | None, keep: float = KEEP) -> float | None:
    """Smallest measured x whose y is at least keep * dense_acc, or None."""
    if dense_acc is None or math.isnan(dense_acc):
        return None
    good = [x for x, y in points if x is not None and y is not None and x > 0
            and y >= keep * dense_acc - 1e-12]
    return min(good) if good else None


def rank_values(values: Mapping[str, float | None], higher_is_better: bool
                ) -> dict[str, int]:
    """Competition ranks of the non-missing values (equal values share a rank)."""
    present = {k: v for k, v in values.items() if v is not None and not math.isnan(v)}
    ordered = sorted(present.values(), reverse=higher_is_better)
    return {k: 1 + ordered.index(v) for k, v in present.items()}


SCORE_KEYS = (  # (key, higher is better)
    ("auc_macs", True), ("auc_latency", True), ("iso_macs", False), ("iso_latency", False),
)


def win_rate(by_group: Mapping[object, list[Mapping]], key: str, higher: bool
             ) -> dict[str, tuple[float, int]]:
    """HELM-style head-to-head win rate on one score: (rate, comparisons) per method.

    In each group every pair of methods that both have the score is one
    comparison (a tie is half a win), so a method is only ever compared on a
    cell its opponent also has, whatever either one covers elsewhere.
    """
    won: dict[str, float] = defaultdict(float)
    n: dict[str, int] = defaultdict(int)
    for members in by_group.values():
        vals = {m["method"]: m.get(key) for m in members}
        vals = {k: v for k, v in vals.items() if v is not None and not math.isnan(v)}
        for a, va in vals.items():
            for b, vb in vals.items():
                if a == b:
                    continue
                n[a] += 1
                won[a] += 0.5 if va == vb else float((va > vb) == higher)
    return {m: (won[m] / n[m], n[m]) for m in n}


def cross_ranking(rows: Iterable[Mapping]) -> list[dict]:
    """Methods across groups, compared only where coverage is equal.

    `rows` hold one method's scores in one group: keys `group` (any hashable,
    e.g. (suite, model, dataset)), `method` and the SCORE_KEYS (None when the
    method has no score there, e.g. an incomplete curve). A method is
    *complete* when it has the MACs curve score in every group; mean ranks
    are computed among complete methods only, re-ranked within each group,
    so no average mixes different subsets. Every method also gets its
    head-to-head win rate on the MACs curve score (`win_rate`, over
    `comparisons` pairs) and its coverage (`groups` scored of `n_groups`).
    """
    by_group: dict[object, list[Mapping]] = defaultdict(list)
    for r in rows:
        by_group[r["group"]].append(r)
    n_groups = len(by_group)
    covered: dict[str, int] = defaultdict(int)
    seen: dict[str, int] = defaultdict(int)
    for members in by_group.values():
        for m in members:
            seen[m["method"]] += 1
            v = m.get("auc_macs")
            covered[m["method"]] += int(v is not None and not math.isnan(v))
    complete = {m for m, c in covered.items() if c == n_groups}
    ranks: dict[str, dict[str, list[int]]] = defaultdict(lambda: defaultdict(list))
    for members in by_group.values():
        inner = [m for m in members if m["method"] in complete]
        for key, higher in SCORE_KEYS:
            got = rank_values({m["method"]: m.get(key) for m in inner}, higher)
            for method, rank in got.items():
                ranks[method][key].append(rank)
    rates = win_rate(by_group, "auc_macs", True)
    out = []
    for method in seen:
        full = method in complete
        rate, comparisons = rates.get(method, (None, 0))
        entry: dict = {"method": method, "groups": covered[method], "n_groups": n_groups,
                       "appears": seen[method], "complete": full, "win_rate": rate,
                       "comparisons": comparisons,
                       "wins": sum(1 for r in ranks[method]["auc_macs"] if r == 1)}
        for key, _ in SCORE_KEYS:
            got = ranks[method][key] if full else []
            entry[f"{key}_rank"] = float(np.mean(got)) if got else None
            entry[f"{key}_n"] = len(got)
        out.append(entry)
    inf = float("inf")
    out.sort(key=lambda e: (not e["complete"],
                            e["auc_macs_rank"] if e["auc_macs_rank"] is not None else inf,
                            -(e["win_rate"] if e["win_rate"] is not None else -1.0),
                            e["method"]))
    return out
