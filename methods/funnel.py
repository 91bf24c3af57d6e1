"""Funnel regularization (Chu and Lee, arXiv 2112.03690): ranks of all layers found together.

Post-training. Starting from the trained dense network:

1. Decompose at full rank (exact): each selected k x k conv by Tucker-2 over
   its channel modes (HOSVD: 1x1 in->R1, k x k core R1->R2, 1x1 R2->out; see
   methods.layers.tucker), each selected Linear by SVD (in->r->out).
2. Put a learnable gate on every rank component (each of R1 and R2 for a
   conv, r for a Linear), initialised to 1, and train with the harness's loop:
   cross-entropy + lam * sum_g f(g) over all gates. This phase is part of the
   suite's fine-tune budget (``reg_epochs``, default half of it; the harness
   fine-tunes for the rest), with the fine-tune settings unless the declared
   ``reg_lr`` / ``reg_schedule`` / ``reg_warmup_epochs`` set its own; its
   schedule always spans the phase alone.
3. Drop the components with the smallest scores across the whole network
   (never layer by layer) until the model meets the budget, fold the gates
   into the adjacent weights and deploy plain convs / linears. The harness
   fine-tunes afterwards.

The funnel function (our choice; the paper's formula is not available to us):
f(g) = g^2 / (g^2 + eps). It is smooth, 0 at g = 0 and saturates at 1, so
its pull df/dg = 2 g eps / (g^2 + eps)^2 is strongest near g ~ sqrt(eps/3)
and fades for |g| >> sqrt(eps): gates the task does not defend are funnelled
to zero while important ones are left alone (unlike L1, which shrinks all).

Other choices of ours: each gate is ``gate_scale`` x a parameter initialised to
1/gate_scale (default 30). Under the harness's Adam-type optimizers a
parameter moves about lr per step whatever its gradient, so with gate_scale 1
a phase of a few epochs moves gates by ~0.1 and nothing is funnelled; at 30
most gates the task does not defend reach ~0 within the phase. The drop score
is |g| by default (``score="gate"``);
``score="gate_sv"`` uses |g| * s / s_max (the component's singular value
normalised by its layer-mode's largest), which breaks the ties left by a short
regularization phase. Each layer keeps at least one component per mode. A
layer whose decomposed form would cost more than dense at the kept ranks is
deployed as one dense layer rebuilt from the same truncated factors (same
function, cheaper). The first conv and the classifier stay dense by default.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Literal

import torch
from pydantic import Field
from torch import Tensor, nn

from bench import Method, MethodContext, Target, register_method
from methods.layers import set_module
from methods.layers.gated import GATED, GatedLinear, GatedTuckerConv2d, funnel_penalty
from methods.layers.selection import LayerSelection
from methods.layers.surgery import probe_layers

__all__ = ["GATED", "Funnel", "FunnelParams", "GatedLinear", "GatedTuckerConv2d",
           "apply_drops", "deploy", "droppable_components", "funnel_penalty", "gate_model",
           "gated_modules", "select_to_budget"]


def _positions(model: nn.Module, layers: dict[str, nn.Module],
               input_shape: tuple[int, ...]) -> dict[str, tuple[int, int]]:
    """(input positions, output positions) per sample of each layer, from one forward."""
    found: dict[str, tuple[int, int]] = {}

    def record(path, mod, inp, out):
        if isinstance(mod, nn.Conv2d):
            found[path] = (inp[0].shape[-1] * inp[0].shape[-2], out.shape[-1] * out.shape[-2])
        else:
            tokens = out[0].numel() // out.shape[-1]
            found[path] = (tokens, tokens)

    probe_layers(model, layers, input_shape, record)
    return found


def gate_model(model: nn.Module, layers: dict[str, nn.Module], input_shape: tuple[int, ...],
               gate_scale: float = 1.0) -> dict[str, nn.Module]:
    """Swap every selected layer for its full-rank gated decomposition (same function)."""
    positions = _positions(model, layers, input_shape)
    gated: dict[str, nn.Module] = {}
    for path, layer in layers.items():
        pin, pout = positions.get(path, (1, 1))
        new = (GatedTuckerConv2d(layer, pin, pout, gate_scale) if isinstance(layer, nn.Conv2d)
               else GatedLinear(layer, pout, gate_scale))
        set_module(model, path, new)
        gated[path] = new
    return gated


def gated_modules(model: nn.Module) -> dict[str, nn.Module]:
    return {p: m for p, m in model.named_modules() if isinstance(m, GATED)}


@dataclass(frozen=True)
class Component:
    path: str
    mode: str
    index: int
    score: float
    tiebreak: float


def droppable_components(gated: dict[str, nn.Module], score: str) -> list[Component]:
    """Components in drop order (lowest score first); each mode's best one is never listed."""
    out: list[Component] = []
    for path, mod in gated.items():
        for mode, gate, sv in mod.gates():
            g = gate.detach().abs().double().cpu()
            s = sv.detach().double().cpu()
            sc = g * s if score == "gate_sv" else g
            best = int(torch.argmax(sc))
            out += [Component(path, mode, i, float(sc[i]), float(s[i]))
                    for i in range(len(g)) if i != best]
    return sorted(out, key=lambda c: (c.score, c.tiebreak))


def kept_ranks(gated: dict[str, nn.Module], order: list[Component],
               n_drop: int) -> dict[str, dict[str, int]]:
    kept = {p: {mode: len(gate) for mode, gate, _ in m.gates()} for p, m in gated.items()}
    for c in order[:n_drop]:
        kept[c.path][c.mode] -= 1
    return kept


def predicted_cost(gated: dict[str, nn.Module], kept: dict[str, dict[str, int]], metric: str,
                   others: int) -> int:
    return others + sum(m.cost(kept[p], metric) for p, m in gated.items())


@torch.no_grad()
def apply_drops(gated: dict[str, nn.Module], order: list[Component], n_drop: int) -> None:
    """Zero the masks of the first ``n_drop`` components (the gated model now computes
    exactly what the deployed model will)."""
    for mod in gated.values():
        for name, buf in mod.named_buffers():
            if name.startswith("mask"):
                buf.fill_(1.0)
    for c in order[:n_drop]:
        mod = gated[c.path]
        mask = mod.mask if c.mode == "r" else getattr(mod, f"mask_{c.mode}")
        mask[c.index] = 0.0


def deploy(model: nn.Module, metric: str) -> nn.Module:
    """Replace every gated module by plain layers with its gates folded in."""
    for path, mod in gated_modules(model).items():
        set_module(model, path, mod.deploy(metric))
    return model


def smallest_drop(gated: dict[str, nn.Module], order: list[Component], metric: str,
                  others: int, budget: float) -> int:
    """Fewest drops (bisection on the monotone closed-form cost) that meet ``budget``."""
    lo, hi = 0, len(order)
    if predicted_cost(gated, kept_ranks(gated, order, hi), metric, others) > budget:
        return hi
    while lo < hi:
        mid = (lo + hi) // 2
        if predicted_cost(gated, kept_ranks(gated, order, mid), metric, others) <= budget:
            hi = mid
        else:
            lo = mid + 1
    return lo


class FunnelParams(LayerSelection):
    reg_epochs: float | None = Field(
        default=None, ge=0, description="length of the gate regularization in epochs, taken "
        "out of the suite's fine-tune budget (None: half of it)")
    reg_lr: float | None = Field(
        default=None, gt=0, description="learning rate of the regularization phase (None: the "
        "suite's fine-tune lr)")
    reg_schedule: Literal["cosine", "constant"] | None = Field(
        default=None, description="lr schedule over the regularization phase alone (None: the "
        "suite's fine-tune schedule)")
    reg_warmup_epochs: float | None = Field(
        default=None, ge=0, description="warm-up epochs of the regularization phase (None: "
        "the suite's fine-tune warm-up)")
    lam: float = Field(default=1e-2, ge=0, description="weight of sum f(gate) in the loss")
    eps: float = Field(default=0.05, gt=0, description="funnel width: f(g)=g^2/(g^2+eps)")
    gate_scale: float = Field(
        default=30.0, gt=0, description="gate = gate_scale x a parameter initialised to "
        "1/gate_scale: under Adam-type optimizers the gates move gate_scale times faster")
    score: Literal["gate", "gate_sv"] = Field(
        default="gate", description="drop order: |gate|, or |gate| x normalised singular value")


def select_to_budget(model: nn.Module, gated: dict[str, nn.Module], target: Target,
                     ctx: MethodContext, score: str, others: int) -> int:
    """Mask the globally smallest components until the deployed model meets ``target``;
    return how many were dropped. The closed form is confirmed by the harness's counter."""
    order = droppable_components(gated, score)
    if ctx.dense_cost is not None:
        reference = ctx.dense_cost.get(target.metric)
    else:
        reference = others + sum(m.dense_cost(target.metric) for m in gated.values())
    budget = target.ratio * reference
    n = smallest_drop(gated, order, target.metric, others, budget)
    while True:
        apply_drops(gated, order, n)
        trial = deploy(copy.deepcopy(model), target.metric)
        if ctx.measure(trial).get(target.metric) <= budget + 1e-9 or n >= len(order):
            return n
        n += 1


@register_method
class Funnel(Method):
    """Tucker-2 / SVD with gated rank components, a funnel penalty, global rank drop."""

    name = "funnel"
    kind = "post"
    Params = FunnelParams
    description = "Tucker-2 (convs) / SVD (linears) with gates under a funnel penalty"

    def regularizer(self, model: nn.Module, ctx: MethodContext) -> Tensor | None:
        if ctx.phase != "funnel":
            return None
        p: FunnelParams = self.params
        gates = [g for m in model.modules() if isinstance(m, GATED) for _, g, _ in m.gates()]
        if not gates or p.lam == 0:
            return None
        return p.lam * funnel_penalty(torch.cat(gates), p.eps)

    def regularize(self, model: nn.Module, ctx: MethodContext) -> None:
        """The gate regularization phase: part of the suite's fine-tune budget.

        Its steps are taken out of the fine-tune budget (the harness fine-tunes
        for the rest); its lr, schedule and warm-up are the suite's fine-tune
        settings unless the declared ``reg_*`` parameters set them. Without a
        suite budget in ``ctx`` (direct use), it runs ``reg_epochs`` (default 1)
        whole epochs.
        """
        p: FunnelParams = self.params
        overrides: dict = {}
        declared: dict[str, str] = {}
        for setting, name in (("lr", "reg_lr"), ("schedule", "reg_schedule"),
                              ("warmup_epochs", "reg_warmup_epochs")):
            if getattr(p, name) is not None:
                overrides[setting], declared[setting] = getattr(p, name), name
        if not ctx.budget:
            epochs = round(p.reg_epochs) if p.reg_epochs is not None else 1
            if epochs > 0:
                ctx.train(model, epochs=epochs, method=self, phase="funnel", declared=declared,
                          **overrides)
            return
        finetune_epochs = float(ctx.budget["finetune"]["epochs"])
        epochs = finetune_epochs / 2 if p.reg_epochs is None else p.reg_epochs
        steps = round(epochs * ctx.steps_per_epoch("finetune"))
        if steps > ctx.budget_steps("finetune"):
            raise ValueError(
                f"funnel: params.reg_epochs {p.reg_epochs} exceeds the suite's fine-tune budget "
                f"of {finetune_epochs:g} epochs; the regularization phase is part of that budget"
                " (allowed: 0 to the fine-tune epochs)")
        ctx.record("reg_steps", steps)
        if steps > 0:
            ctx.train(model, method=self, phase="funnel", steps=steps, declared=declared,
                      **overrides)

    def compress(self, model: nn.Module, target: Target, ctx: MethodContext) -> nn.Module:
        p: FunnelParams = self.params
        layers = p.select(model)
        dense_now = ctx.measure(model).get(target.metric)
        positions = _positions(model, layers, ctx.input_shape)
        selected_dense = sum(
            (layer.weight.numel() * (1 if target.metric == "params" else positions[path][1]))
            for path, layer in layers.items())
        others = dense_now - selected_dense
        gated = gate_model(model, layers, ctx.input_shape, p.gate_scale)
        self.regularize(model, ctx)
        n = select_to_budget(model, gated, target, ctx, p.score, others)
        record_gates(ctx, gated, n)
        model = deploy(model, target.metric)
        reference = ctx.dense_cost.get(target.metric) if ctx.dense_cost else dense_now
        achieved = ctx.measure(model).get(target.metric) / reference
        ctx.record("achieved_ratio", achieved)
        ctx.record("budget_met", achieved <= target.ratio + 1e-9)
        return model


def record_gates(ctx: MethodContext, gated: dict[str, nn.Module], n_drop: int) -> None:
    ranks, full = {}, {}
    all_gates = []
    for path, mod in gated.items():
        names = {"r": "mask", "in": "mask_in", "out": "mask_out"}
        ranks[path] = {mode: int(getattr(mod, names[mode]).sum()) for mode, _, _ in mod.gates()}
        full[path] = {mode: len(g) for mode, g, _ in mod.gates()}
        all_gates += [g.detach().abs().flatten().cpu() for _, g, _ in mod.gates()]
    ctx.record("ranks", ranks)
    ctx.record("full_ranks", full)
    ctx.record("components_dropped", n_drop)
    if all_gates:
        g = torch.cat(all_gates)
        ctx.record("gate_stats", {"n": len(g), "min": float(g.min()), "median": float(g.median()),
                                  "max": float(g.max()),
                                  "below_0.1": int((g < 0.1).sum())})
