"""Maestro's deploy-time rank search: a greedy walk of rank cuts on the validation split.

Both searches walk one path of cuts from the trained model's kept ranks: each
step takes the cut with the least validation-loss increase per unit of the
target's metric saved (params or MACs). The path does not depend on the
budget, so every budget's ranks are a point on it (nested models), and it is
cached per trained model: the next target resumes where the last stopped.

- ``exhaustive`` (the original search): every candidate cut of every layer is
  scored at every step by recalibrating BatchNorm and a validation pass of
  ``search_batches`` batches. Exact, but each step costs (layers x candidates)
  full passes: about 11x the training on cifar-cpu.
- ``fast`` (default): the loss of a cut is predicted, and passes are spent only
  where the prediction is re-anchored. At an *anchor* (the start, then again
  whenever the cost has fallen to ``refresh`` of the anchor's or a layer has
  used up its trust region), BatchNorm is recalibrated once on
  ``search_bn_batches`` training batches and one forward and backward pass over
  a fixed validation subset (``search_images``, cached on the device) gives,
  for every layer and sample n, the first-order effect a_nb of each rank
  component b on the sample's loss (the gradient at the layer's output times
  that component's contribution to it). Cutting a layer from its anchor rank R
  to c changes sample n's loss by about -s_n + s_n^2 / 2 with
  s_n = sum_{c<=b<R} a_nb (second-order Taylor with the empirical Fisher), so
  every candidate of every layer is scored from that one pass. Taylor is only
  trusted near the anchor: a layer is cut down to ``trust`` of its anchor rank
  at most before the next anchor. The cost: one forward and backward pass over
  the subset per anchor, plus the recalibration.

Counts of images through forward and backward passes (recalibration included)
and seconds are kept for the record (``search_forward_images``, ...).
"""

from __future__ import annotations

import hashlib
import math
import time
from abc import ABC, abstractmethod
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bench.method import MethodContext
from bench.train import recalibrate_batchnorm
from methods.layers.ordered import OrderedFactorized

_SEARCHES: dict[str, RankSearch] = {}  # fingerprint of (model, data, params) -> search
_MAX_SEARCHES = 8


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


def val_subset(ctx: MethodContext, images: int | None, batches: int | None,
               device: torch.device) -> list[tuple[Tensor, Tensor]]:
    """The first ``images`` (or ``batches`` batches) of the validation split, on the device."""
    out, n = [], 0
    for i, (x, y) in enumerate(ctx.val_batches()):
        if (batches is not None and i >= batches) or (images is not None and n >= images):
            break
        if images is not None:
            x, y = x[:images - n], y[:images - n]
        out.append((x.to(device), y.to(device)))
        n += len(y)
    if not out:
        raise RuntimeError("maestro's rank search needs validation batches")
    return out


@torch.no_grad()
def component_effects(layer: OrderedFactorized, x: Tensor, grad: Tensor) -> Tensor:
    """a_nb = <dloss_n/dout, U_b h_b(x_n)> summed over positions: (samples, rank)."""
    r = layer.effective_rank()
    v, u = layer.v[:r].detach(), layer.u[:, :r].detach()
    if layer.is_conv:
        h = F.conv2d(x, v.reshape(r, layer.in_channels, *layer.kernel_size),
                     stride=layer.stride, padding=layer.padding, dilation=layer.dilation)
        gu = torch.einsum("oc,nohw->nchw", u, grad)
        return (gu * h).sum(dim=(2, 3))
    h = F.linear(x, v)
    return (grad @ u * h).reshape(len(x), -1, r).sum(dim=1)


class RankSearch(ABC):
    """The state and path shared by both searches; subclasses choose the next cut."""

    def __init__(self, model: nn.Module, layers: dict[str, OrderedFactorized], metric: str,
                 ctx: MethodContext, params: Any, batches: list[tuple[Tensor, Tensor]]):
        self.model, self.layers, self.metric, self.ctx, self.p = model, layers, metric, ctx, params
        if metric == "macs":
            self.positions = ordered_positions(model, layers, ctx.input_shape)
        else:
            self.positions = {path: 1 for path in layers}
        self.batches = batches
        self.bn = has_batchnorm(model)
        self.ranks = {path: layer.kept for path, layer in layers.items()}
        self.steps = {path: max(1, math.ceil(layer.full_rank * params.rank_step))
                      for path, layer in layers.items()}
        self.evaluations = 0
        self.forward_images = 0
        self.backward_images = 0
        self.seconds = 0.0
        self.path: list[dict[str, Any]] = []

    def layer_cost(self, path: str, rank: int) -> int:
        return self.positions.get(path, 0) * self.layers[path].weight_cost(rank)

    def breakeven(self, path: str) -> int:
        layer = self.layers[path]
        return (layer.fan_in * layer.fan_out - 1) // (layer.fan_in + layer.fan_out)

    def candidates(self, path: str) -> list[int]:
        """Ranks to try for the next cut of this layer (each saves cost).

        A layer already cheaper than dense offers one rank step down: the step
        is ``rank_step`` of the full rank, but at most a quarter of the current
        rank. A layer still at or above break-even saves nothing until it
        crosses it, so it offers 3/4, 1/2 and 1/4 of its break-even rank:
        without that look-ahead the greedy never pays for the first, small
        saving and keeps cutting layers already factorized.
        """
        r, step, breakeven = self.ranks[path], self.steps[path], self.breakeven(path)
        if r > breakeven:
            ranks = sorted({max(1, math.ceil(breakeven * f)) for f in (0.75, 0.5, 0.25)},
                           reverse=True) if breakeven >= 1 else []
        else:  # near the bottom the step shrinks with the rank, so no cut removes most of it
            ranks = [max(r - min(step, math.ceil(r / 4)), 1)] if r > 1 else []
        now = self.layer_cost(path, r)
        return [c for c in ranks if c < r and self.layer_cost(path, c) < now]

    def apply(self, ranks: dict[str, int] | None = None) -> None:
        for path, layer in self.layers.items():
            layer.od_rank = None
            layer.rank_limit = (ranks or self.ranks)[path]

    def recalibrate(self, batches: int) -> None:
        if not self.bn:
            return
        seen = 0

        def counted():
            nonlocal seen
            for i, (x, y) in enumerate(self.ctx.calibration_batches()):
                if i >= batches:
                    break
                seen += len(x)
                yield x, y

        recalibrate_batchnorm(self.model, counted(), max_batches=batches)
        self.forward_images += seen

    @torch.no_grad()
    def val_loss(self, recalibrate: bool) -> float:
        """Mean cross-entropy on the cached batches at the current rank limits."""
        self.evaluations += 1
        if recalibrate:
            self.recalibrate(self.p.bn_batches)
        self.model.eval()
        total, n = 0.0, 0
        for x, y in self.batches:
            total += float(F.cross_entropy(self.model(x), y, reduction="sum"))
            n += len(y)
        self.forward_images += n
        return total / max(n, 1)

    def total(self, estimate_fixed: int, ranks: dict[str, int]) -> int:
        return estimate_fixed + sum(self.layer_cost(p, r) for p, r in ranks.items())

    @abstractmethod
    def start(self) -> None:
        """The path's first point: the kept ranks and their loss."""

    @abstractmethod
    def advance(self) -> bool:
        """Append the next cut to the path; False when no layer can be cut further."""

    def run(self, estimate_fixed: int, budget: float) -> dict[str, Any]:
        """The first point of the path with fixed + sum of layer costs <= budget, walking on.

        Points already on the path (from an earlier, larger budget) cost nothing.
        """
        t0 = time.perf_counter()
        try:
            if not self.path:
                self.start()
            seen = 0
            while True:
                for point in self.path[seen:]:
                    if self.total(estimate_fixed, point["ranks"]) <= budget:
                        return point
                seen = len(self.path)
                self.ranks = dict(self.path[-1]["ranks"])
                if not self.advance():
                    return self.path[-1]
        finally:
            self.seconds += time.perf_counter() - t0

    def costs(self) -> dict[str, Any]:
        return {"forward_images": self.forward_images, "backward_images": self.backward_images,
                "seconds": self.seconds, "evaluations": self.evaluations}


class ExhaustiveSearch(RankSearch):
    """Every candidate recalibrated and scored by a validation pass, at every step."""

    def start(self) -> None:
        self.apply()
        self.path.append({"ranks": dict(self.ranks), "val_loss": self.val_loss(self.bn),
                          "measured": True})

    def advance(self) -> bool:
        current = self.path[-1]["val_loss"]
        best: tuple[float, str, int, float] | None = None
        self.apply()
        for name in self.layers:
            old = self.ranks[name]
            for cand in self.candidates(name):
                saved = self.layer_cost(name, old) - self.layer_cost(name, cand)
                self.layers[name].rank_limit = cand
                loss = self.val_loss(self.bn)
                score = (loss - current) / saved
                if best is None or score < best[0]:
                    best = (score, name, cand, loss)
            self.layers[name].rank_limit = old
        if best is None:
            return False
        _, name, cand, loss = best
        self.ranks[name] = cand
        self.path.append({"ranks": dict(self.ranks), "val_loss": loss, "layer": name,
                          "measured": True})
        return True


class FastSearch(RankSearch):
    """Cuts scored by a second-order Taylor prediction, re-anchored by a real pass."""

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.anchor: dict[str, int] = {}
        self.anchor_loss = float("nan")
        self.anchor_cost = 0
        self.curves: dict[str, list[float]] = {}  # path -> predicted increase at rank 0..R

    def start(self) -> None:
        self.reanchor()
        self.path.append({"ranks": dict(self.ranks), "val_loss": self.anchor_loss,
                          "measured": True})

    def reanchor(self) -> None:
        """Recalibrate, then one forward/backward pass: per-sample effects of every component."""
        self.apply()
        self.recalibrate(self.p.search_bn_batches)
        self.model.eval()
        inputs: dict[str, Tensor] = {}
        outputs: dict[str, Tensor] = {}

        def hook(path: str):
            def keep(mod: OrderedFactorized, inp: Any, out: Tensor) -> None:
                inputs[path], outputs[path] = inp[0].detach(), out
            return keep

        handles = [layer.register_forward_hook(hook(p)) for p, layer in self.layers.items()]
        effects: dict[str, list[Tensor]] = {p: [] for p in self.layers}
        total, n = 0.0, 0
        try:
            for x, y in self.batches:
                with torch.enable_grad():
                    x = x.detach().requires_grad_(True)
                    loss = F.cross_entropy(self.model(x), y, reduction="sum")
                    paths = [p for p in self.layers if p in outputs]
                    grads = torch.autograd.grad(loss, [outputs[p] for p in paths])
                for p, g in zip(paths, grads):
                    effects[p].append(component_effects(self.layers[p], inputs[p], g))
                total += float(loss.detach())
                n += len(y)
                inputs.clear()
                outputs.clear()
        finally:
            for h in handles:
                h.remove()
        self.forward_images += n
        self.backward_images += n
        self.evaluations += 1
        self.anchor = dict(self.ranks)
        self.anchor_loss = total / max(n, 1)
        self.anchor_cost = sum(self.layer_cost(p, r) for p, r in self.ranks.items())
        if self.path and self.path[-1]["ranks"] == self.ranks:  # the prediction, now measured
            point = self.path[-1]
            point.update(predicted=point["val_loss"], val_loss=self.anchor_loss, measured=True)
        for p, parts in effects.items():
            # s[:, c] = sum_{b >= c} a_nb: the first-order change of each sample's loss
            # when the layer goes from its anchor rank to c; curve[c] its Taylor prediction
            a = torch.cat(parts).double() if parts else torch.zeros(1, self.ranks[p])
            s = torch.cat([a.flip(1).cumsum(1).flip(1), a.new_zeros(len(a), 1)], dim=1)
            self.curves[p] = (-s + 0.5 * s * s).mean(dim=0).tolist()

    def advance(self) -> bool:
        cost = sum(self.layer_cost(p, r) for p, r in self.ranks.items())
        if cost <= self.p.refresh * self.anchor_cost:
            self.reanchor()
        choice = self.best_cut()
        if choice is None and self.ranks != self.anchor:  # trust regions used up
            self.reanchor()
            choice = self.best_cut()
        if choice is None:
            return False
        name, cand = choice
        self.ranks[name] = cand
        loss = self.anchor_loss + sum(self.curves[p][r] for p, r in self.ranks.items())
        self.path.append({"ranks": dict(self.ranks), "val_loss": loss, "layer": name,
                          "measured": False})
        return True

    def best_cut(self) -> tuple[str, int] | None:
        """The least predicted loss increase per cost saved, inside the trust regions.

        Below break-even a cut removes one rank component (steps cost no
        passes, so they are as fine as they can be); a layer at or above
        break-even offers the break-even look-ahead ranks inside its trust
        region, or else the first of them.
        """
        best: tuple[float, str, int] | None = None
        for name, r in self.ranks.items():
            if r > self.breakeven(name):
                floor = max(1, math.floor(self.p.trust * self.anchor[name]))
                cands = self.candidates(name)
                cands = [c for c in cands if c >= floor] or cands[:1]
            else:
                floor = max(1, math.ceil(self.p.trust * self.anchor[name]))
                cands = [r - 1] if r - 1 >= floor else []
            curve = self.curves[name]
            for cand in cands:
                saved = self.layer_cost(name, r) - self.layer_cost(name, cand)
                if saved <= 0:
                    continue
                score = (curve[cand] - curve[r]) / saved
                if best is None or score < best[0]:
                    best = (score, name, cand)
        return None if best is None else (best[1], best[2])


def fingerprint(model: nn.Module, batches: list[tuple[Tensor, Tensor]], metric: str,
                params: Any) -> str:
    """Everything a path depends on: weights, buffers, data, metric, params."""
    h = hashlib.sha256()
    for name, t in model.state_dict().items():
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    for x, y in batches:
        h.update(x.cpu().contiguous().numpy().tobytes())
        h.update(y.cpu().contiguous().numpy().tobytes())
    h.update(f"{metric}|{params.model_dump_json()}".encode())
    return h.hexdigest()


def rank_search(model: nn.Module, layers: dict[str, OrderedFactorized], metric: str,
                ctx: MethodContext, params: Any) -> RankSearch:
    """The search of this trained model, metric and params: cached, so targets share a path.

    The search works on its own copy of the model, so the caller's model is
    never changed by recalibration or rank limits.
    """
    import copy

    if params.search == "exhaustive":
        batches = val_subset(ctx, None, params.search_batches, ctx.device)
    else:
        batches = val_subset(ctx, params.search_images, None, ctx.device)
    key = fingerprint(model, batches, metric, params)
    search = _SEARCHES.get(key)
    if search is None:
        own = copy.deepcopy(model)
        own_layers = {p: own.get_submodule(p) for p in layers}
        cls = ExhaustiveSearch if params.search == "exhaustive" else FastSearch
        search = cls(own, own_layers, metric, ctx, params, batches)
        while len(_SEARCHES) >= _MAX_SEARCHES:
            _SEARCHES.pop(next(iter(_SEARCHES)))
        _SEARCHES[key] = search
    search.ctx = ctx
    return search
