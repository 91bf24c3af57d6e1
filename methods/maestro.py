"""Maestro: trainable low-rank ordered decomposition (LoD), one training for every budget.

Horvath, Laskaridis et al., "Maestro: Uncovering Low-Rank Structures via
Trainable Decomposition" (ICML 2024, arXiv 2308.14929).

- ``prepare``: every selected Linear/Conv2d (same rules as ``svd``: first conv
  and classifier stay dense) becomes an :class:`OrderedFactorized` layer
  U V^T at full rank, initialised by the SVD of the layer's own initial weight.
- ``before_step`` (ordered dropout): every training forward takes the next
  (layer, rank) pair from a shuffled list of all pairs (every rank 1..kept of
  every layer, reshuffled when used up); that layer runs with only its first
  ``rank`` components, every other layer at its kept rank. The sample is set on
  the layer objects themselves, so the order in which the model calls its
  layers does not matter.
- ``regularizer``: lambda x hierarchical group lasso over the rank components.
- ``on_epoch_end`` (training only): progressive shrinking. importance_b =
  ||V_b|| x ||U_b||; the trailing components below epsilon are cut, so the
  kept components are always a prefix. A layer whose kept rank makes the
  factorized form costlier than dense computes (and deploys) as dense. Kept
  ranks per epoch go into the record.
- ``compress(target)``: a greedy walk of rank cuts on the validation split
  from the one trained model (``methods/maestro_search.py``): each step takes
  the cut with the least validation-loss increase per unit of the target's
  metric saved, until the budget holds; a layer still at or above break-even
  offers cuts below break-even at once, since its first saving cut must cross
  it. The walk does not depend on the budget (nested models; later targets
  resume it). ``search: fast`` (default) predicts each cut's loss increase
  from one forward/backward pass per anchor (second-order Taylor, re-anchored
  with BatchNorm recalibrated whenever the cost falls to ``refresh`` of the
  anchor's); ``search: exhaustive`` recalibrates BatchNorm and evaluates
  every candidate at every step (the original, ~100x the passes). U and V are
  then sliced into plain LowRankLinear/LowRankConv2d layers (or a dense layer
  where that is cheaper). The record gets the search's cost
  (``search_forward_images``, ``search_backward_images``, ``search_s``).

Departures from the paper / the authors' code (our choices):
- Shrinking keeps a prefix: components are cut only from the end, up to the
  last component whose importance is >= epsilon (the authors' mask may leave
  holes).
- Parameters stay at full-rank shape during training; the kept rank is a
  buffer (the checkpoint loads into a freshly prepared model).
- The deploy-time rank search is our greedy loss-per-cost rule on a fixed
  validation subset (fast: one-component steps scored by a Taylor
  prediction; exhaustive: ``rank_step`` steps, measured), not the paper's
  per-budget procedure.
- A layer whose kept rank is above break-even computes U V^T as one dense
  weight during training (same function, cheaper).
- Zero-padded, ungrouped convolutions only (others stay dense).
"""

from __future__ import annotations

import copy
from typing import Any, Literal

import torch
from pydantic import BaseModel, Field
from torch import Tensor, nn

from bench import Method, MethodContext, Target, register_method
from bench.train import recalibrate_batchnorm
from methods.layers import set_module
from methods.layers.ordered import OrderedFactorized
from methods.layers.selection import LayerSelection
from methods.maestro_search import has_batchnorm, rank_search


class MaestroParams(LayerSelection):
    lam: float = Field(default=1e-6, ge=0.0,
                       description="weight of the hierarchical group lasso")
    epsilon: float = Field(default=1e-5, ge=0.0,
                           description="progressive shrinking: importance threshold")
    ordered_dropout: bool = Field(default=True, description="sample one (layer, rank) per step")
    rank_step: float = Field(default=1 / 16, gt=0.0, le=1.0,
                             description="greedy search: fraction of full rank cut per step")
    search: Literal["fast", "exhaustive"] = Field(
        default="fast", description="rank search: Taylor-scored cuts re-anchored by real passes "
        "(fast), or every candidate recalibrated and evaluated (exhaustive)")
    search_images: int = Field(default=256, ge=1,
                               description="fast search: validation images per anchor pass")
    search_bn_batches: int = Field(default=2, ge=1,
                                   description="fast search: BatchNorm batches per anchor")
    refresh: float = Field(default=0.7, gt=0.0, lt=1.0,
                           description="fast search: re-anchor when the cost falls to this "
                           "fraction of the anchor's")
    trust: float = Field(default=0.5, gt=0.0, lt=1.0,
                         description="fast search: a layer is cut to at most this fraction of "
                         "its anchor rank before the next anchor")
    search_batches: int = Field(default=4, ge=1,
                                description="exhaustive search: validation batches per candidate")
    bn_batches: int = Field(default=8, ge=1,
                            description="training batches for BatchNorm recalibration")


def ordered_layers(model: nn.Module) -> dict[str, OrderedFactorized]:
    return {p: m for p, m in model.named_modules() if isinstance(m, OrderedFactorized)}


class OrderedDropoutSampler:
    """Shuffled (layer, rank) pairs over every kept rank of every layer, consumed one per step."""

    def __init__(self, generator: torch.Generator):
        self.generator = generator
        self.pairs: list[tuple[int, int]] = []
        self.cursor = 0
        self.signature: tuple[int, ...] = ()

    def next(self, layers: list[OrderedFactorized]) -> tuple[int, int]:
        signature = tuple(layer.kept for layer in layers)
        if signature != self.signature or self.cursor >= len(self.pairs):
            self.signature = signature
            pairs = [(i, r) for i, k in enumerate(signature) for r in range(1, k + 1)]
            order = torch.randperm(len(pairs), generator=self.generator).tolist()
            self.pairs, self.cursor = [pairs[j] for j in order], 0
        pair = self.pairs[self.cursor]
        self.cursor += 1
        return pair


def shrink(layer: OrderedFactorized, epsilon: float) -> int:
    """Cut the trailing components with importance < epsilon; return the new kept rank."""
    importance = layer.importance()
    alive = torch.nonzero(importance >= epsilon).flatten()
    kept = int(alive[-1]) + 1 if len(alive) else 1
    layer.kept_rank.fill_(kept)
    return kept


@torch.no_grad()
def val_top1(model: nn.Module, ctx: MethodContext) -> float:
    """Top-1 on the validation split (the only split a method may read)."""
    was_training = model.training
    model.eval()
    correct, n = 0, 0
    for x, y in ctx.val_batches():
        correct += int((model(x.to(ctx.device)).argmax(1) == y.to(ctx.device)).sum())
        n += len(y)
    model.train(was_training)
    return correct / max(n, 1)


def deploy(model: nn.Module, ranks: dict[str, int]) -> nn.Module:
    """Swap every ordered layer for plain layers at its rank, in place."""
    for path, layer in ordered_layers(model).items():
        set_module(model, path, layer.deploy(ranks.get(path, layer.kept)))
    return model


@register_method
class Maestro(Method):
    """Trainable ordered low-rank decomposition; greedy rank prefixes per budget."""

    name = "maestro"
    kind = "train"
    Params = MaestroParams
    description = "LoD: ordered dropout + hierarchical group lasso; nested low-rank models"

    def __init__(self, params: BaseModel | dict[str, Any] | None = None):
        super().__init__(params)
        self._sampler: OrderedDropoutSampler | None = None

    # -- training ----------------------------------------------------------
    def prepare(self, model: nn.Module, ctx: MethodContext) -> nn.Module:
        p: MaestroParams = self.params
        layers = p.select(model)
        for path, layer in layers.items():
            if isinstance(layer, nn.Conv2d) and layer.padding_mode != "zeros":
                continue
            set_module(model, path, OrderedFactorized(layer))
        ctx.record("full_ranks", {path: m.full_rank for path, m in ordered_layers(model).items()})
        return model

    def before_step(self, model: nn.Module, ctx: MethodContext) -> None:
        layers = list(ordered_layers(model).values())
        for layer in layers:
            layer.od_rank = None
        if ctx.phase != "train" or not layers or not self.params.ordered_dropout:
            return
        if self._sampler is None:
            self._sampler = OrderedDropoutSampler(
                torch.Generator().manual_seed(ctx.seed * 7919 + 17))
        index, rank = self._sampler.next(layers)
        layers[index].od_rank = rank

    def regularizer(self, model: nn.Module, ctx: MethodContext) -> Tensor | None:
        lam = self.params.lam
        layers = ordered_layers(model).values()
        if ctx.phase != "train" or lam == 0 or not layers:
            return None
        return lam * sum(layer.hierarchical_group_lasso() for layer in layers)

    def on_epoch_end(self, model: nn.Module, ctx: MethodContext) -> None:
        layers = ordered_layers(model)
        if ctx.phase != "train" or not layers:
            return
        for layer in layers.values():
            layer.od_rank = None
            shrink(layer, self.params.epsilon)
        history = list(ctx.info.get("ranks_per_epoch", []))
        history.append({"epoch": ctx.epoch + 1,
                        "ranks": {p: m.kept for p, m in layers.items()},
                        "dense": sorted(p for p, m in layers.items()
                                        if not m.factorized_is_cheaper(m.kept))})
        ctx.record("ranks_per_epoch", history)

    # -- deployment --------------------------------------------------------
    def _trained_layers(self, model: nn.Module, ctx: MethodContext) -> dict:
        layers = ordered_layers(model)
        if not layers:
            raise ValueError("maestro.compress needs a model prepared by maestro.prepare")
        for layer in layers.values():
            layer.od_rank, layer.rank_limit = None, None
        ctx.record("kept_ranks", {path: layer.kept for path, layer in layers.items()})
        ctx.record("full_rank_top1", val_top1(model, ctx))  # trained model, before truncation
        return layers

    def uncompressed(self, model: nn.Module, ctx: MethodContext) -> nn.Module:
        """The trained model at the ranks progressive shrinking kept, as plain layers."""
        layers = self._trained_layers(model, ctx)
        deploy(model, {path: layer.kept for path, layer in layers.items()})
        if has_batchnorm(model):
            recalibrate_batchnorm(model, ctx.calibration_batches(), self.params.bn_batches)
        return model

    def compress(self, model: nn.Module, target: Target, ctx: MethodContext) -> nn.Module:
        layers = self._trained_layers(model, ctx)
        kept = {path: layer.kept for path, layer in layers.items()}
        metric = target.metric
        search = rank_search(model, layers, metric, ctx, self.params)
        before = search.costs()
        at_kept = ctx.measure(deploy(copy.deepcopy(model), kept)).get(metric)
        fixed = at_kept - sum(search.layer_cost(p, r) for p, r in kept.items())
        reference = (ctx.dense_cost.get(metric) if ctx.dense_cost is not None
                     else ctx.measure(model).get(metric))
        budget = target.ratio * reference
        goal, point = float(budget), search.path[-1] if search.path else None
        for _ in range(5):  # the closed form is exact; this only guards against drift
            point = search.run(fixed, goal)
            achieved = ctx.measure(deploy(copy.deepcopy(model), point["ranks"])).get(metric)
            if achieved <= budget:
                break
            search.ranks = dict(point["ranks"])
            if point is search.path[-1] and not any(search.candidates(p) for p in layers):
                break
            goal -= achieved - budget
        ranks = dict(point["ranks"])
        deploy(model, ranks)
        if has_batchnorm(model):
            recalibrate_batchnorm(model, ctx.calibration_batches(), self.params.bn_batches)
        after = search.costs()
        ctx.record("ranks", {p: (r if layers[p].factorized_is_cheaper(r) else None)
                             for p, r in ranks.items()})
        ctx.record("search_forward_images", after["forward_images"] - before["forward_images"])
        ctx.record("search_backward_images",
                   after["backward_images"] - before["backward_images"])
        ctx.record("search_s", round(after["seconds"] - before["seconds"], 3))
        steps = search.path[1:search.path.index(point) + 1]
        ctx.record("search", {
            "mode": self.params.search, "steps": len(steps),
            "evaluations": after["evaluations"] - before["evaluations"],
            "val_loss": round(point["val_loss"], 5), "val_loss_measured": point["measured"],
            "path_forward_images": after["forward_images"],
            "path_backward_images": after["backward_images"],
            "path": [{"layer": pt.get("layer"), "rank": pt["ranks"].get(pt.get("layer")),
                      "val_loss": round(pt["val_loss"], 5)} for pt in steps[-60:]]})
        return model
