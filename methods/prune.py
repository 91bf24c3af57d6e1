"""Structured pruning baselines through Torch-Pruning's dependency graph.

``prune-l1`` is L1-norm filter pruning (Li et al., ICLR 2017): each output
channel is scored by the L1 norm of the filter of the layer that produces it
(Torch-Pruning's magnitude importance with p=1, reduced to the group's root
layer). ``prune-group`` scores each coupled channel group by the mean L2 norm
over every layer it touches (DepGraph's group norm, Fang et al. 2023).
``prune-random`` removes random channels: the sanity baseline.

The dependency graph keeps residual adds, concatenations and attention heads
consistent; timm attention modules get their ``num_heads``/``head_dim``
attributes updated after pruning. The pruning ratio (the same for every
group) is found by bisection on fresh copies of the model so the achieved
params or MACs ratio lands at or under the target; the harness fine-tunes
afterwards.

Simplifications against the papers: one-shot pruning (no iterative
prune/fine-tune rounds), and ``prune-group`` without DepGraph's sparse
group-regularized training before pruning (its importance criterion only).
"""

from __future__ import annotations

import copy
import warnings
from typing import Any, ClassVar

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from bench import Method, MethodContext, Target, register_method
from methods.layers import classifier_path


class PruneParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    round_to: int | None = Field(
        default=None, ge=1, description="round kept channel counts to a multiple of this")
    global_pruning: bool = Field(
        default=False, description="rank channel groups across the whole network instead of "
        "the same ratio per layer")
    prune_heads: bool = Field(
        default=False, description="remove whole attention heads (at the same ratio, keeping "
        "at least one) instead of shrinking every head's dimension")
    max_ratio: float = Field(default=0.95, gt=0.0, lt=1.0,
                             description="largest pruning ratio the search may use")
    scan_steps: int = Field(default=10, ge=1, le=100,
                            description="coarse ratio grid scanned before bisection")
    search_steps: int = Field(default=8, ge=0, le=40, description="bisection steps after it")


def attention_modules(model: nn.Module) -> dict[nn.Linear, nn.Module]:
    """qkv Linear -> its attention module, for every timm-style attention block."""
    out: dict[nn.Linear, nn.Module] = {}
    for module in model.modules():
        qkv = getattr(module, "qkv", None)
        if isinstance(qkv, nn.Linear) and isinstance(getattr(module, "num_heads", None), int):
            out[qkv] = module
    return out


def _importance(kind: str):
    import torch_pruning as tp

    if kind == "l1":
        return tp.importance.MagnitudeImportance(
            p=1, group_reduction="first", normalizer=None,
            target_types=[nn.modules.conv._ConvNd, nn.Linear])
    if kind == "group":
        return tp.importance.GroupMagnitudeImportance(p=2, group_reduction="mean",
                                                      normalizer="mean")
    if kind == "random":
        return tp.importance.RandomImportance()
    raise ValueError(f"Unknown importance '{kind}'. Allowed: l1, group, random")


def prune_once(model: nn.Module, ratio: float, importance: str, input_shape: tuple[int, ...],
               params: PruneParams, seed: int = 0) -> nn.Module:
    """Prune ``model`` in place at ``ratio`` and return it (attention attributes fixed)."""
    import torch_pruning as tp

    device = next(model.parameters()).device
    example = torch.zeros((1, *input_shape), device=device)
    ignored: list[nn.Module] = []
    if (path := classifier_path(model)) is not None:
        ignored.append(model.get_submodule(path))
    attns = attention_modules(model)
    num_heads = {qkv: attn.num_heads for qkv, attn in attns.items()}
    head_ratio = 0.0
    if params.prune_heads and num_heads:
        fewest = min(num_heads.values())
        head_ratio = min(ratio, (fewest - 1) / fewest)  # always keep one head
    torch.manual_seed(seed)  # random importance draws from the global generator
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # unwrapped cls_token/pos_embed notices
        pruner = tp.pruner.BasePruner(
            model, example, importance=_importance(importance),
            global_pruning=params.global_pruning, pruning_ratio=ratio,
            max_pruning_ratio=params.max_ratio, ignored_layers=ignored,
            round_to=params.round_to, num_heads=num_heads,
            prune_num_heads=params.prune_heads and head_ratio > 0,
            prune_head_dims=not params.prune_heads, head_pruning_ratio=head_ratio)
        pruner.step()
    for qkv, attn in attns.items():
        heads = pruner.num_heads.get(qkv, attn.num_heads)
        attn.num_heads = heads
        attn.head_dim = qkv.out_features // (3 * heads)
        if hasattr(attn, "attn_dim"):
            attn.attn_dim = heads * attn.head_dim
        attn.scale = attn.head_dim**-0.5  # what the fused kernel uses anyway
    head = model.get_submodule(path) if path else None
    for name in ("embed_dim", "num_features", "head_hidden_size"):  # timm bookkeeping
        if isinstance(getattr(model, name, None), int) and isinstance(head, nn.Linear):
            setattr(model, name, head.in_features)
    return model


def prune_to_budget(model: nn.Module, target: Target, ctx: MethodContext, importance: str,
                    params: PruneParams) -> tuple[nn.Module, float]:
    """Smallest pruning ratio whose pruned copy meets ``target`` (bisection), and that ratio."""
    reference = ctx.dense_cost.get(target.metric) if ctx.dense_cost else \
        ctx.measure(model).get(target.metric)
    budget = target.ratio * reference

    def trial(ratio: float) -> tuple[nn.Module, int]:
        cand = prune_once(copy.deepcopy(model), ratio, importance, ctx.input_shape, params,
                          ctx.seed)
        return cand, ctx.measure(cand).get(target.metric)

    if ctx.measure(model).get(target.metric) <= budget:
        return model, 0.0
    # Cost is not monotone in the ratio once channel counts are rounded (a group
    # rounded down to zero is left alone), so a coarse scan finds the first ratio
    # that meets the budget and bisection refines it against the ratio before.
    grid = [params.max_ratio * (i + 1) / params.scan_steps for i in range(params.scan_steps)]
    lo = 0.0
    found: tuple[nn.Module, float] | None = None
    cheapest: tuple[nn.Module, float, int] | None = None
    for ratio in grid:
        cand, cost = trial(ratio)
        if cheapest is None or cost < cheapest[2]:
            cheapest = (cand, ratio, cost)
        if cost <= budget:
            found = (cand, ratio)
            break
        lo = ratio
    if found is None:
        assert cheapest is not None
        ctx.logger.warning("no pruning ratio up to %.2f meets %s (best %.3f of dense)",
                           params.max_ratio, target.label, cheapest[2] / reference)
        return cheapest[0], cheapest[1]
    best, hi = found
    for _ in range(params.search_steps):
        mid = (lo + hi) / 2
        cand, cost = trial(mid)
        if cost <= budget:
            hi, best = mid, cand
        else:
            lo = mid
    return best, hi


def channel_summary(model: nn.Module) -> dict[str, Any]:
    """Output channels/features per prunable layer and heads per attention block."""
    out: dict[str, Any] = {}
    for path, m in model.named_modules():
        if isinstance(m, nn.Conv2d):
            out[path] = m.out_channels
        elif isinstance(m, nn.Linear):
            out[path] = m.out_features
        if isinstance(getattr(m, "num_heads", None), int):
            out[f"{path}.num_heads"] = m.num_heads
    return out


class _Prune(Method):
    """Shared body: bisection on the ratio, then a plain pruned module."""

    kind = "post"
    Params = PruneParams
    importance: ClassVar[str] = ""

    def compress(self, model: nn.Module, target: Target, ctx: MethodContext) -> nn.Module:
        pruned, ratio = prune_to_budget(model, target, ctx, self.importance, self.params)
        ctx.record("pruning_ratio", ratio)
        ctx.record("channels", channel_summary(pruned))
        for p in pruned.parameters():
            p.requires_grad_(True)
        return pruned


@register_method
class PruneL1(_Prune):
    """L1-norm filter pruning (Li et al. 2017) with Torch-Pruning's dependency graph."""

    name = "prune-l1"
    importance = "l1"
    description = "structured pruning: L1 norm of each output filter (Li et al. 2017)"


@register_method
class PruneGroup(_Prune):
    """DepGraph group-norm pruning (importance criterion only, no sparse training)."""

    name = "prune-group"
    importance = "group"
    description = "structured pruning: L2 norm of each coupled channel group (DepGraph)"


@register_method
class PruneRandom(_Prune):
    """Random structured pruning: the sanity baseline for the two above."""

    name = "prune-random"
    importance = "random"
    description = "structured pruning: random channels (sanity baseline)"
