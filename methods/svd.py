"""Truncated SVD of Linear and Conv2d layers, ranks chosen to meet a budget.

Each selected layer W (out x in, or out x in*k*k for a conv) becomes
U_r sqrt(S_r) @ sqrt(S_r) V_r^T deployed as two real layers (see
methods.layers). Ranks come from one of the rules in methods.layers.ranks and
are searched so the whole model's params or MACs land at or under the target.
``rank_selection: auto`` (the default) runs all three rules and scores each
compressed model, before fine-tuning, by its per-sample validation loss; it
keeps ``local`` unless another rule's loss is lower by more than the noise of
a paired comparison (2 standard errors and 1%; see
methods.layers.ranks.pick_rank_rule), recorded with the reason as
``rank_rule_choice``. Post-training: the harness fine-tunes afterwards under
the common budget.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Callable

import torch
from pydantic import Field
from torch import nn

from bench import Method, MethodContext, Target, register_method
from methods.layers import factorize, layer_positions, set_module, weight_matrix
from methods.layers.ranks import (
    LayerSpectrum,
    RankRule,
    RankSelection,
    choose_ranks,
    pick_rank_rule,
)
from methods.layers.selection import LayerSelection


class SVDParams(LayerSelection):
    rank_selection: RankRule = Field(
        default="auto", description="auto (local, unless another rule's compressed model, "
        "before fine-tuning, has a validation loss lower by more than 2 standard errors of a "
        "paired per-sample comparison and 1%), local (same fraction), global (pooled "
        "normalised singular values) or energy (kept spectral energy)")


def layer_spectra(model: nn.Module, layers: dict[str, nn.Module],
                  input_shape: tuple[int, ...]) -> list[LayerSpectrum]:
    positions = layer_positions(model, layers, input_shape)
    spectra = []
    for path, layer in layers.items():
        w = weight_matrix(layer)
        s = torch.linalg.svdvals(w.double().cpu())
        spectra.append(LayerSpectrum(path, s, w.shape[1], w.shape[0], positions.get(path, 0)))
    return spectra


def decompose_to_budget(model: nn.Module, target: Target, ctx: MethodContext,
                        layers: dict[str, nn.Module], selection: RankSelection,
                        max_attempts: int = 5) -> nn.Module:
    """Factorize ``layers`` of ``model`` in place with ranks that meet ``target``.

    Ranks come from the closed-form cost model of :mod:`methods.layers.ranks`;
    the result is then measured with ``ctx.measure`` and, should the measured
    cost still exceed the budget (ops the closed form does not see), the search
    is repeated against a budget lowered by the overshoot. Layers whose
    factorized form would not be cheaper are left as they are.
    """
    spectra = layer_spectra(model, layers, ctx.input_shape)
    metric = target.metric
    dense_total = ctx.measure(model).get(metric)
    reference = ctx.dense_cost.get(metric) if ctx.dense_cost else dense_total
    budget = target.ratio * reference
    goal = budget
    ranks: dict[str, int | None] = {}
    achieved = dense_total
    for _ in range(max_attempts):
        ranks = choose_ranks(spectra, selection, metric, dense_total, goal)
        for path, layer in layers.items():
            rank = ranks.get(path)
            set_module(model, path, layer if rank is None else factorize(layer, rank))
        achieved = ctx.measure(model).get(metric)
        if achieved <= budget or all(r == 1 for r in ranks.values() if r is not None):
            break
        goal -= achieved - budget
    ctx.record("ranks", dict(ranks))
    ctx.record("full_ranks", {sp.path: sp.full_rank for sp in spectra})
    ctx.record("rank_selection", selection)
    if achieved > budget:
        ctx.logger.warning("%s budget %s not reachable: %.4f of dense", metric, target.label,
                           achieved / reference)
    return model


Selector = Callable[[nn.Module], dict[str, nn.Module]]


def svd_to_budget(model: nn.Module, target: Target, ctx: MethodContext, select: Selector,
                  selection: RankRule) -> nn.Module:
    """Truncated SVD to ``target`` with the given rank rule, or ``auto``: chosen on val loss.

    Each rule compresses its own copy of ``model`` (layers picked by
    ``select``) against a scratch context; see methods.layers.ranks.pick_rank_rule.
    """
    def build(rule: RankSelection) -> tuple[nn.Module, dict]:
        trial = copy.deepcopy(model)
        sub = dataclasses.replace(ctx, info={})
        return decompose_to_budget(trial, target, sub, select(trial), rule), sub.info

    return pick_rank_rule(selection, build, ctx)


@register_method
class SVD(Method):
    """Post-training truncated SVD (the baseline every low-rank method must beat)."""

    name = "svd"
    kind = "post"
    Params = SVDParams
    description = "truncated SVD per layer, deployed as two thin layers"

    def compress(self, model: nn.Module, target: Target, ctx: MethodContext) -> nn.Module:
        p: SVDParams = self.params
        return svd_to_budget(model, target, ctx, p.select, p.rank_selection)
