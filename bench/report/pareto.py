"""Which entries of a model x dataset sit on the accuracy-vs-cost Pareto front.

A front drawn through means moves with the seed: a point one rerun puts under a
cheaper neighbour, the next puts above it. So an entry is marked on the front
unless some other entry that costs no more is better *beyond the intervals over
seeds*, decided like a tie in the tables (`stats.separated`: the per-seed
difference when both share seeds, else the unpaired intervals). A row with one
seed has no seed interval: a pair that includes one is judged by mean, and callers
say which basis the marks rest on.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from bench.report.stats import Estimate, seed_noise, separated


def _cost(entry: dict, key: str) -> float | None:
    v = entry.get(key)
    return None if v is None or (isinstance(v, float) and math.isnan(v)) or v <= 0 else float(v)


def _better(a: dict, b: dict, noise: Any) -> bool:
    """Whether entry a is better than entry b: beyond the seed intervals when both have
    them, else (a row with one seed) by mean."""
    ea: Estimate = a["est"]
    eb: Estimate = b["est"]
    if ea.seed_based and eb.seed_based:
        return separated(ea, eb, a["by_seed"], b["by_seed"], noise) > 0
    return ea.mean > eb.mean


def front_basis(entries: Sequence[dict]) -> str:
    """"seeds" when every entry has an interval over seeds, "means" when none has,
    "mixed" otherwise (pairs with a one-seed row are judged by mean)."""
    based = [e["est"].seed_based for e in entries]
    return "seeds" if based and all(based) else "mixed" if any(based) else "means"


def front_flags(entries: Sequence[dict], costs: Sequence[float]) -> tuple[list[bool], str]:
    """For entries with a within-budget result (each with "est" and "by_seed") at the
    given costs: whether each is on the front, and its basis (`front_basis`)."""
    seeded = [e for e in entries if e["est"].seed_based]
    noise = seed_noise([e["by_seed"] for e in seeded]) if seeded else None
    flags = [not any(j != i and costs[j] <= costs[i]
                     and _better(entries[j], entries[i], noise)
                     for j in range(len(entries)))
             for i in range(len(entries))]
    return flags, front_basis(entries)


def mark_front(entries: Sequence[dict], cost: str = "macs_ratio") -> str:
    """Set entry["on_front"] (True/False; None where the entry has no within-budget
    result or no cost) and return what the marks rest on (`front_basis`).

    Over-budget entries are never on the front and dominate nothing: they broke the
    budget they are compared at.
    """
    pool = [e for e in entries if e.get("est") is not None and not e.get("over_budget")
            and _cost(e, cost) is not None]
    flags, basis = front_flags(pool, [_cost(e, cost) for e in pool])
    for e in entries:
        e["on_front"] = None
    for e, flag in zip(pool, flags):
        e["on_front"] = flag
    return basis
