"""Which entries of a model x dataset sit on the accuracy-vs-cost Pareto front.

A front drawn through means moves with the seed: a point one rerun puts under a
cheaper neighbour, the next puts above it. So an entry is marked on the front
unless some other entry that costs no more is better *beyond the intervals over
seeds*, decided like a tie in the tables (`stats.separated`: the per-seed
difference when both share seeds, else the unpaired intervals). With one seed
there is no seed interval, so the front falls back to means, and callers say so.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from bench.report.stats import Estimate, seed_noise, separated


def _cost(entry: dict, key: str) -> float | None:
    v = entry.get(key)
    return None if v is None or (isinstance(v, float) and math.isnan(v)) or v <= 0 else float(v)


def _better(a: dict, b: dict, by_seeds: bool, noise: Any) -> bool:
    """Whether entry a is better than entry b: beyond the seed intervals, or by mean."""
    ea: Estimate = a["est"]
    eb: Estimate = b["est"]
    if by_seeds:
        return separated(ea, eb, a["by_seed"], b["by_seed"], noise) > 0
    return ea.mean > eb.mean


def front_flags(entries: Sequence[dict], costs: Sequence[float]) -> tuple[list[bool], bool]:
    """For entries with a within-budget result (each with "est" and "by_seed") at the
    given costs: whether each is on the front, and whether that rests on seed intervals."""
    by_seeds = bool(entries) and all(e["est"].seed_based for e in entries)
    noise = seed_noise([e["by_seed"] for e in entries]) if by_seeds else None
    flags = [not any(j != i and costs[j] <= costs[i]
                     and _better(entries[j], entries[i], by_seeds, noise)
                     for j in range(len(entries)))
             for i in range(len(entries))]
    return flags, by_seeds


def mark_front(entries: Sequence[dict], cost: str = "macs_ratio") -> bool:
    """Set entry["on_front"] (True/False; None where the entry has no within-budget
    result or no cost) and return whether the marks rest on intervals over seeds.

    Over-budget entries are never on the front and dominate nothing: they broke the
    budget they are compared at.
    """
    pool = [e for e in entries if e.get("est") is not None and not e.get("over_budget")
            and _cost(e, cost) is not None]
    flags, by_seeds = front_flags(pool, [_cost(e, cost) for e in pool])
    for e in entries:
        e["on_front"] = None
    for e, flag in zip(pool, flags):
        e["on_front"] = flag
    return by_seeds
