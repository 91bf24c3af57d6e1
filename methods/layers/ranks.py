"""Choosing a rank per layer so a whole model meets a params or MACs budget.

Three rules, each a one-knob family of rank assignments searched by bisection
on the knob so that the model's cost lands at or under the budget:

- ``local``: the same fraction of each layer's full rank;
- ``global``: normalise each layer's singular values by its largest, pool them
  over the network, keep those above a common threshold;
- ``energy``: per layer, the smallest rank keeping a common fraction of the
  spectral energy (sum of squared singular values).

A layer whose factorized form would not be cheaper than dense stays dense.

``auto`` (:func:`pick_rank_rule`) compresses with each of the three rules
and keeps the one whose compressed model (before fine-tuning) has the best
top-1 on the validation split (ties: lower validation loss, then the order
local, global, energy); each rule's figures go into the record.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor, nn

RankSelection = Literal["local", "global", "energy"]
RankRule = Literal["auto", "local", "global", "energy"]
RULES: tuple[RankSelection, ...] = ("local", "global", "energy")


@dataclass
class LayerSpectrum:
    path: str
    singular_values: Tensor  # descending
    fan_in: int  # in, or in*k*k
    fan_out: int
    positions: int  # applications per sample (tokens / output pixels)

    @property
    def full_rank(self) -> int:
        return len(self.singular_values)

    def dense_cost(self, metric: str) -> int:
        w = self.fan_in * self.fan_out
        return w if metric == "params" else w * self.positions

    def factorized_cost(self, rank: int, metric: str) -> int:
        w = rank * (self.fan_in + self.fan_out)
        return w if metric == "params" else w * self.positions

    def saving(self, rank: int | None, metric: str) -> int:
        """Cost saved by factorizing at ``rank`` (0 when that would not be cheaper)."""
        if rank is None:
            return 0
        return max(0, self.dense_cost(metric) - self.factorized_cost(rank, metric))

    def max_useful_rank(self) -> int:
        """Largest rank at which factorizing still saves something."""
        return (self.fan_in * self.fan_out - 1) // (self.fan_in + self.fan_out)


def ranks_for_knob(spectra: list[LayerSpectrum], selection: RankSelection,
                   knob: float) -> dict[str, int]:
    """Rank per layer for knob in [0, 1]; larger knob keeps more (monotone)."""
    ranks: dict[str, int] = {}
    for sp in spectra:
        s = sp.singular_values.double()
        if selection == "local":
            r = math.ceil(knob * sp.full_rank)
        elif selection == "global":
            threshold = 1.0 - knob  # keep s/s_max >= threshold
            norm = s / s[0].clamp_min(1e-30)
            r = int((norm >= threshold - 1e-12).sum())
        elif selection == "energy":
            energy = torch.cumsum(s**2, 0) / (s**2).sum().clamp_min(1e-30)
            r = int((energy < knob - 1e-12).sum()) + 1
        else:
            raise ValueError(
                f"Unknown rank selection '{selection}'. Allowed: local, global, energy")
        ranks[sp.path] = max(1, min(r, sp.full_rank))
    return ranks


def model_cost(spectra: list[LayerSpectrum], ranks: dict[str, int | None], metric: str,
               dense_total: int) -> int:
    return dense_total - sum(sp.saving(ranks.get(sp.path), metric) for sp in spectra)


def choose_ranks(spectra: list[LayerSpectrum], selection: RankSelection, metric: str,
                 dense_total: int, budget: float, iters: int = 40) -> dict[str, int | None]:
    """Ranks (None = keep dense) with the largest knob whose model cost <= budget.

    When even rank 1 everywhere cannot meet the budget the cheapest assignment
    is returned; the caller records how far off it is.
    """

    def assign(knob: float) -> dict[str, int | None]:
        raw = ranks_for_knob(spectra, selection, knob)
        return {sp.path: (raw[sp.path] if sp.saving(raw[sp.path], metric) > 0 else None)
                for sp in spectra}

    lo, hi = 0.0, 1.0
    if model_cost(spectra, assign(hi), metric, dense_total) <= budget:
        return assign(hi)
    best = assign(lo)
    for _ in range(iters):
        mid = (lo + hi) / 2
        cand = assign(mid)
        if model_cost(spectra, cand, metric, dense_total) <= budget:
            lo, best = mid, cand
        else:
            hi = mid
    return best


def effective_rank(singular_values: Tensor, energy: float = 0.99) -> int:
    """Number of leading singular values holding ``energy`` of the sum of their squares."""
    s2 = singular_values.double() ** 2
    total = s2.sum()
    if total <= 0:
        return 0
    kept = torch.cumsum(s2, 0) / total
    return int((kept < energy - 1e-12).sum()) + 1


@torch.no_grad()
def val_scores(model: nn.Module, batches, device: torch.device) -> tuple[float, float] | None:
    """(top-1, mean cross-entropy) of ``model`` over ``batches``; None when there are none."""
    was_training = model.training
    model.eval()
    correct, loss, n = 0, 0.0, 0
    try:
        for x, y in batches:
            x, y = x.to(device), y.to(device)
            logits = model(x)
            loss += float(nn.functional.cross_entropy(logits, y, reduction="sum"))
            correct += int((logits.argmax(1) == y).sum())
            n += len(y)
    finally:
        model.train(was_training)
    return (correct / n, loss / n) if n else None


def pick_rank_rule(selection: RankRule,
                   build: Callable[[RankSelection], tuple[nn.Module, dict[str, Any]]],
                   ctx: Any) -> nn.Module:
    """The compressed model of ``selection``, or with ``auto`` the best rule on validation.

    ``build(rule)`` returns a freshly compressed model (the caller's model
    untouched) and the facts it recorded; the chosen rule's facts go into
    ``ctx.info``, and ``rank_rule_choice`` says what was chosen and from what.
    Without validation data (none, or a context that has no split to give)
    ``auto`` falls back to ``local`` and says so.
    """
    if selection != "auto" or not has_val_data(ctx):
        rule: RankSelection = "local" if selection == "auto" else selection
        model, info = build(rule)
        ctx.info.update(info)
        basis = "set in the suite" if selection != "auto" else "no validation data: local"
        ctx.record("rank_rule_choice", {"chosen": rule, "basis": basis})
        return model
    scores: dict[str, dict[str, float] | None] = {}
    best: tuple | None = None  # (key, rule, model, info)
    for order, rule in enumerate(RULES):
        model, info = build(rule)
        sc = val_scores(model, ctx.val_batches(), ctx.device)
        scores[rule] = None if sc is None else {"val_top1": sc[0], "val_loss": round(sc[1], 6)}
        key = (-1.0, 0.0, 0) if sc is None else (sc[0], -sc[1], -order)
        if best is None or key > best[0]:
            best = (key, rule, model, info)
    assert best is not None
    _, chosen, model, info = best
    ctx.info.update(info)
    ctx.record("rank_rule_choice", {"chosen": chosen, "rules": scores,
                                    "basis": "best validation top-1 before fine-tuning"})
    return model


def has_val_data(ctx: Any) -> bool:
    """Whether ``ctx`` yields at least one validation batch (a context without a split
    to give, such as the library API without data, raises ValueError when asked)."""
    try:
        batches = iter(ctx.val_batches())
    except ValueError:
        return False
    return next(batches, None) is not None
