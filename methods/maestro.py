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
- ``compress(target)``: greedy search on the validation split from the one
  trained model: repeatedly cut the rank step (``rank_step`` of the layer's
  full rank, at most a quarter of its current rank) with the least
  validation-loss increase per unit of the target's metric saved (savings
  counted only up to what the budget still needs), until the budget holds. A
  layer still at or above break-even offers every step below break-even at
  once, since its first saving cut must cross it; BatchNorm statistics are recalibrated
  on training batches before every evaluation of a truncated model. U and V
  are then sliced into plain LowRankLinear/LowRankConv2d layers (or a dense
  layer where that is cheaper).

Departures from the paper / the authors' code (our choices):
- Shrinking keeps a prefix: components are cut only from the end, up to the
  last component whose importance is >= epsilon (the authors' mask may leave
  holes).
- Parameters stay at full-rank shape during training; the kept rank is a
  buffer (the checkpoint loads into a freshly prepared model).
- The deploy-time rank search is our greedy loss-per-cost rule on a bounded
  number of validation batches with a fixed rank step, not the paper's
  per-budget procedure.
- A layer whose kept rank is above break-even computes U V^T as one dense
  weight during training (same function, cheaper).
- Zero-padded, ungrouped convolutions only (others stay dense).
"""

from __future__ import annotations

import copy
import hashlib
import math
from typing import Any

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field
from torch import Tensor, nn

from bench import Method, MethodContext, Target, register_method
from bench.train import recalibrate_batchnorm
from methods.layers import select_layers, set_module
from methods.layers.ordered import OrderedFactorized


class MaestroParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    lam: float = Field(default=1e-6, ge=0.0,
                       description="weight of the hierarchical group lasso")
    epsilon: float = Field(default=1e-5, ge=0.0,
                           description="progressive shrinking: importance threshold")
    ordered_dropout: bool = Field(default=True, description="sample one (layer, rank) per step")
    rank_step: float = Field(default=1 / 16, gt=0.0, le=1.0,
                             description="greedy search: fraction of full rank cut per step")
    search_batches: int = Field(default=4, ge=1,
                                description="validation batches per candidate evaluation")
    bn_batches: int = Field(default=8, ge=1,
                            description="training batches for BatchNorm recalibration")
    include: list[str] = Field(default_factory=list, description="module path patterns to use")
    exclude: list[str] = Field(default_factory=list, description="module path patterns to skip")
    skip_first_conv: bool = True
    skip_classifier: bool = True


_PATHS: dict[str, list[dict[str, Any]]] = {}  # model fingerprint -> greedy path
_MAX_PATHS = 8


def ordered_layers(model: nn.Module) -> dict[str, OrderedFactorized]:
    return {p: m for p, m in model.named_modules() if isinstance(m, OrderedFactorized)}


def has_batchnorm(model: nn.Module) -> bool:
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())


@torch.no_grad()
def ordered_positions(model: nn.Module, layers: dict[str, OrderedFactorized],
                      input_shape: tuple[int, ...]) -> dict[str, int]:
    """Applications of each layer's weight per sample: output pixels or tokens."""
    counts: dict[str, int] = {}

    def hook(path: str):
        def count(mod: OrderedFactorized, inp: Any, out: Tensor) -> None:
            n = out.shape[-2] * out.shape[-1] if mod.is_conv else out[0].numel() // out.shape[-1]
            counts[path] = counts.get(path, 0) + int(n)
        return count

    handles = [layer.register_forward_hook(hook(path)) for path, layer in layers.items()]
    was_training = model.training
    model.eval()
    try:
        device = next(model.parameters()).device
        model(torch.zeros((1, *input_shape), device=device))
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    return counts


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


class RankSearch:
    """Greedy rank cuts on the validation split (state shared across the steps)."""

    def __init__(self, model: nn.Module, layers: dict[str, OrderedFactorized], metric: str,
                 ctx: MethodContext, params: MaestroParams):
        self.model, self.layers, self.metric, self.ctx, self.p = model, layers, metric, ctx, params
        if metric == "macs":
            self.positions = ordered_positions(model, layers, ctx.input_shape)
        else:
            self.positions = {path: 1 for path in layers}
        self.batches = []
        for i, batch in enumerate(ctx.val_batches()):
            if i >= params.search_batches:
                break
            self.batches.append(batch)
        if not self.batches:
            raise RuntimeError("maestro's rank search needs validation batches")
        self.bn = has_batchnorm(model)
        self.ranks = {path: layer.kept for path, layer in layers.items()}
        self.steps = {path: max(1, math.ceil(layer.full_rank * params.rank_step))
                      for path, layer in layers.items()}
        self.evaluations = 0
        self.key = self.fingerprint()  # before any evaluation: BN recalibration changes state

    def layer_cost(self, path: str, rank: int) -> int:
        return self.positions.get(path, 0) * self.layers[path].weight_cost(rank)

    def candidates(self, path: str) -> list[int]:
        """Ranks to try for the next cut of this layer (each saves cost).

        A layer already cheaper than dense offers one rank step down: the step
        is ``rank_step`` of the full rank, but at most a quarter of the current
        rank. A layer still at or above break-even saves nothing until it
        crosses it, so it offers 3/4, 1/2 and 1/4 of its break-even rank:
        without that look-ahead the greedy never pays for the first, small
        saving and keeps cutting layers already factorized.
        """
        layer, r, step = self.layers[path], self.ranks[path], self.steps[path]
        breakeven = (layer.fan_in * layer.fan_out - 1) // (layer.fan_in + layer.fan_out)
        if r > breakeven:
            ranks = sorted({max(1, math.ceil(breakeven * f)) for f in (0.75, 0.5, 0.25)},
                           reverse=True) if breakeven >= 1 else []
        else:  # near the bottom the step shrinks with the rank, so no cut removes most of it
            ranks = [max(r - min(step, math.ceil(r / 4)), 1)] if r > 1 else []
        now = self.layer_cost(path, r)
        return [c for c in ranks if c < r and self.layer_cost(path, c) < now]

    def apply(self) -> None:
        for path, layer in self.layers.items():
            layer.od_rank = None
            layer.rank_limit = self.ranks[path]

    @torch.no_grad()
    def val_loss(self) -> float:
        self.evaluations += 1
        if self.bn:
            recalibrate_batchnorm(self.model, self.ctx.calibration_batches(),
                                  max_batches=self.p.bn_batches)
        self.model.eval()
        total, n = 0.0, 0
        device = self.ctx.device
        for x, y in self.batches:
            logits = self.model(x.to(device))
            total += float(F.cross_entropy(logits, y.to(device), reduction="sum"))
            n += len(y)
        return total / max(n, 1)

    def fingerprint(self) -> str:
        """Everything the greedy path depends on: weights, buffers, data, metric, params."""
        h = hashlib.sha256()
        for name, t in self.model.state_dict().items():
            h.update(name.encode())
            h.update(t.detach().cpu().contiguous().numpy().tobytes())
        for x, y in self.batches:
            h.update(x.cpu().contiguous().numpy().tobytes())
            h.update(y.cpu().contiguous().numpy().tobytes())
        h.update(f"{self.metric}|{self.p.model_dump_json()}".encode())
        return h.hexdigest()

    def run(self, estimate_fixed: int, budget: float) -> tuple[float, list[dict[str, Any]]]:
        """Walk the greedy path until fixed + sum of layer costs <= budget (or no cut is left).

        The path does not depend on the budget (each step is the best loss
        increase per cost saved), so every budget's ranks are a point on one
        path and smaller budgets give nested models. Paths are kept per model
        fingerprint: the next target of the same trained model resumes where
        the last one stopped instead of searching again.
        """
        def total(ranks: dict[str, int]) -> int:
            return estimate_fixed + sum(self.layer_cost(p, r) for p, r in ranks.items())

        key = self.key
        path = _PATHS.get(key)
        if path is None:
            self.apply()
            path = [{"ranks": dict(self.ranks), "val_loss": self.val_loss()}]
            while len(_PATHS) >= _MAX_PATHS:
                _PATHS.pop(next(iter(_PATHS)))
            _PATHS[key] = path
        for i, point in enumerate(path):
            if total(point["ranks"]) <= budget or i == len(path) - 1:
                break
        self.ranks = dict(point["ranks"])
        self.apply()
        current = point["val_loss"]
        if i < len(path) - 1 or total(self.ranks) <= budget:
            return current, path[1:i + 1]
        while total(self.ranks) > budget:
            best: tuple[float, str, int, float] | None = None
            for name in self.layers:
                old = self.ranks[name]
                for cand in self.candidates(name):
                    saved = self.layer_cost(name, old) - self.layer_cost(name, cand)
                    self.ranks[name] = cand
                    self.layers[name].rank_limit = cand
                    loss = self.val_loss()
                    score = (loss - current) / saved
                    if best is None or score < best[0]:
                        best = (score, name, cand, loss)
                self.ranks[name] = old
                self.layers[name].rank_limit = old
            if best is None:
                break
            _, name, cand, current = best
            self.ranks[name] = cand
            self.layers[name].rank_limit = cand
            path.append({"ranks": dict(self.ranks), "val_loss": current, "layer": name})
        return current, path[1:]


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
        layers = select_layers(model, p.include or None, p.exclude or None,
                               p.skip_first_conv, p.skip_classifier)
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
    def compress(self, model: nn.Module, target: Target | None, ctx: MethodContext) -> nn.Module:
        layers = ordered_layers(model)
        if not layers:
            raise ValueError("maestro.compress needs a model prepared by maestro.prepare")
        for layer in layers.values():
            layer.od_rank, layer.rank_limit = None, None
        kept = {path: layer.kept for path, layer in layers.items()}
        ctx.record("kept_ranks", kept)
        ctx.record("full_rank_top1", val_top1(model, ctx))  # trained model, before truncation
        if target is None:
            deploy(model, kept)
            if has_batchnorm(model):
                recalibrate_batchnorm(model, ctx.calibration_batches(), self.params.bn_batches)
            return model
        metric = target.metric
        search = RankSearch(model, layers, metric, ctx, self.params)
        at_kept = ctx.measure(deploy(copy.deepcopy(model), kept)).get(metric)
        fixed = at_kept - sum(search.layer_cost(p, r) for p, r in kept.items())
        reference = (ctx.dense_cost.get(metric) if ctx.dense_cost is not None
                     else ctx.measure(model).get(metric))
        budget = target.ratio * reference
        goal, log, loss = float(budget), [], float("nan")
        for _ in range(5):  # the closed form is exact; this only guards against drift
            loss, log = search.run(fixed, goal)
            achieved = ctx.measure(deploy(copy.deepcopy(model), search.ranks)).get(metric)
            if achieved <= budget or not any(search.candidates(p) for p in layers):
                break
            goal -= achieved - budget
        ranks = dict(search.ranks)
        deploy(model, ranks)
        if has_batchnorm(model):
            recalibrate_batchnorm(model, ctx.calibration_batches(), self.params.bn_batches)
        ctx.record("ranks", {p: (r if layers[p].factorized_is_cheaper(r) else None)
                             for p, r in ranks.items()})
        ctx.record("search", {
            "steps": len(log), "evaluations": search.evaluations, "val_loss": round(loss, 5),
            "path": [{"layer": pt.get("layer"), "rank": pt["ranks"].get(pt.get("layer")),
                      "val_loss": round(pt["val_loss"], 5)} for pt in log[-60:]]})
        return model
