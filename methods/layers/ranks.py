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
and scores each compressed model, before fine-tuning, by its mean
cross-entropy on the validation split, computed per sample. The rule with
the lowest mean loss (ties: the order local, global, energy; a non-finite
loss always loses) replaces the default rule :data:`DEFAULT_RULE` (``local``)
only when it beats it clearly in a paired comparison over the same
validation samples: the mean of the per-sample differences (default minus
rule) must exceed :data:`NOISE_SES` (2) standard errors and
:data:`MIN_RELATIVE_GAIN` (1%) of the default's mean loss; otherwise the
default is kept. Top-1 is not the criterion: after a hard truncation all
rules often sit near chance, where top-1 cannot separate them while the
loss still can. Each rule's validation top-1 and loss, the paired
difference and its standard error, and a sentence saying why go into the
``rank_rule_choice`` record. The default is a module constant rather than a
method parameter so that adding it does not change every cell's params (and
with them the cached results and LoRITa's training keys).
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
# ``auto``: the rule kept unless another is clearly better on validation loss.
DEFAULT_RULE: RankSelection = "local"
# ``auto``: a rule beats the default only if its paired mean loss reduction exceeds
# NOISE_SES standard errors and MIN_RELATIVE_GAIN of the default's mean loss.
NOISE_SES = 2.0
MIN_RELATIVE_GAIN = 0.01


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


@torch.no_grad()
def val_losses(model: nn.Module, batches, device: torch.device) -> tuple[float, Tensor, Tensor]:
    """(top-1, per-sample cross-entropy, labels) of ``model`` over ``batches``, in order.

    Losses and labels are float64/int64 tensors on the CPU, empty when there are no
    batches (top-1 is then nan).
    """
    was_training = model.training
    model.eval()
    losses: list[Tensor] = []
    labels: list[Tensor] = []
    correct = 0
    try:
        for x, y in batches:
            x, y = x.to(device), y.to(device)
            logits = model(x)
            losses.append(nn.functional.cross_entropy(logits.double(), y, reduction="none").cpu())
            labels.append(y.cpu())
            correct += int((logits.argmax(1) == y).sum())
    finally:
        model.train(was_training)
    loss = torch.cat(losses) if losses else torch.zeros(0, dtype=torch.float64)
    label = torch.cat(labels) if labels else torch.zeros(0, dtype=torch.long)
    return (correct / len(label) if len(label) else math.nan), loss, label


def paired_difference(default: Tensor, other: Tensor) -> tuple[float, float]:
    """Mean and standard error of ``default - other`` per sample (positive: ``other``
    has the lower loss). The standard error is inf with fewer than two samples."""
    d = default - other
    n = len(d)
    mean = float(d.mean()) if n else math.nan
    se = float(d.std(unbiased=True) / math.sqrt(n)) if n > 1 else math.inf
    return mean, se


def _fmt(x: float) -> str:
    return f"{x:.4g}"


def choose_by_loss(losses: dict[RankSelection, Tensor],
                   default: RankSelection = DEFAULT_RULE) -> tuple[RankSelection, dict[str, Any]]:
    """The rule ``auto`` keeps given each rule's per-sample validation losses (same samples,
    same order), and the facts behind it: ``paired`` (the lowest-loss rule other than the
    default against the default: ``difference`` = default minus rule, its ``se``, ``n``)
    and ``basis``, a sentence saying why."""
    means = {r: float(v.mean()) if len(v) else math.nan for r, v in losses.items()}
    finite = [r for r in RULES if r in means and math.isfinite(means[r])]
    facts: dict[str, Any] = {"default": default}
    if not finite:
        facts["basis"] = f"no rule has a finite validation loss: default {default} kept"
        return default, facts
    if default not in finite:
        best = min(finite, key=lambda r: (means[r], RULES.index(r)))
        facts["basis"] = (f"the default {default}'s validation loss is not finite; lowest "
                          f"finite validation loss before fine-tuning: {best} "
                          f"{_fmt(means[best])}")
        return best, facts
    others = [r for r in finite if r != default]
    if not others:
        facts["basis"] = (f"the other rules' validation losses are not finite: default "
                          f"{default} kept ({_fmt(means[default])})")
        return default, facts
    rival = min(others, key=lambda r: (means[r], RULES.index(r)))
    diff, se = paired_difference(losses[default], losses[rival])
    facts["paired"] = {"rule": rival, "vs": default, "difference": round(diff, 6),
                       "se": round(se, 6) if math.isfinite(se) else None,
                       "n": len(losses[default])}
    gap = f"difference {_fmt(diff)} +- {_fmt(se)}"
    margin = max(NOISE_SES * se, MIN_RELATIVE_GAIN * abs(means[default]))
    if diff > margin:
        facts["basis"] = (f"lowest validation loss before fine-tuning ({_fmt(means[rival])} "
                          f"vs {default} {_fmt(means[default])}, {gap})")
        return rival, facts
    if diff < -margin:
        facts["basis"] = (f"the default {default} has the lowest validation loss before "
                          f"fine-tuning ({_fmt(means[default])} vs {rival} "
                          f"{_fmt(means[rival])}, {gap}): default kept")
        return default, facts
    facts["basis"] = (f"within noise of the default {default} ({rival} {_fmt(means[rival])} "
                      f"vs {_fmt(means[default])}, {gap}; a rule must beat it by more than "
                      f"{NOISE_SES:g} se and {MIN_RELATIVE_GAIN:.0%}): default kept")
    return default, facts


def pick_rank_rule(selection: RankRule,
                   build: Callable[[RankSelection], tuple[nn.Module, dict[str, Any]]],
                   ctx: Any) -> nn.Module:
    """The compressed model of ``selection``, or with ``auto`` the rule chosen on validation.

    ``build(rule)`` returns a freshly compressed model (the caller's model
    untouched) and the facts it recorded; the chosen rule's facts go into
    ``ctx.info``, and ``rank_rule_choice`` says what was chosen and why:
    ``chosen``, ``default``, ``rules`` (each rule's ``val_top1`` and
    ``val_loss`` before fine-tuning), ``paired`` and ``basis`` (see
    :func:`choose_by_loss`). ``auto`` keeps :data:`DEFAULT_RULE` unless another
    rule's validation loss is lower by more than the paired comparison's noise.
    Without validation data (none, or a context that has no split to give)
    ``auto`` falls back to the default and says so.
    """
    if selection != "auto" or not has_val_data(ctx):
        rule: RankSelection = DEFAULT_RULE if selection == "auto" else selection
        model, info = build(rule)
        ctx.info.update(info)
        basis = ("set in the suite" if selection != "auto"
                 else f"no validation data: default {DEFAULT_RULE}")
        ctx.record("rank_rule_choice", {"chosen": rule, "basis": basis})
        return model
    built: dict[RankSelection, tuple[nn.Module, dict[str, Any]]] = {}
    losses: dict[RankSelection, Tensor] = {}
    scores: dict[str, dict[str, float | None]] = {}
    labels: Tensor | None = None
    paired = True
    for rule in RULES:
        built[rule] = build(rule)
        top1, loss, y = val_losses(built[rule][0], ctx.val_batches(), ctx.device)
        if labels is None:
            labels = y
        elif not torch.equal(labels, y):
            paired = False  # e.g. a shuffled validation loader
        losses[rule] = loss
        mean = float(loss.mean()) if len(loss) else math.nan
        scores[rule] = {"val_top1": top1,
                        "val_loss": round(mean, 6) if math.isfinite(mean) else None}
    if paired:
        chosen, facts = choose_by_loss(losses)
    else:
        chosen, facts = DEFAULT_RULE, {
            "default": DEFAULT_RULE,
            "basis": f"the validation batches differ between calls, so per-sample losses "
                     f"cannot be paired: default {DEFAULT_RULE} kept"}
    model, info = built[chosen]
    ctx.info.update(info)
    ctx.record("rank_rule_choice", {"chosen": chosen, "default": facts["default"],
                                    "rules": scores, "paired": facts.get("paired"),
                                    "basis": facts["basis"]})
    return model


def has_val_data(ctx: Any) -> bool:
    """Whether ``ctx`` yields at least one validation batch (a context without a split
    to give, such as the library API without data, raises ValueError when asked)."""
    try:
        batches = iter(ctx.val_batches())
    except ValueError:
        return False
    return next(batches, None) is not None
