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

Layers the dependency graph cannot couple are left unpruned (our choice): the
graph assumes the last dimension of every Linear's input is the channel
dimension, which is false for layers that mix along another one (an
MLP-Mixer's token-mixing MLPs, applied to the transposed activations; Swin's
patch merging, which folds 2x2 positions into channels; a relative position
bias table indexed by head). Their groups would index past a layer's
channels or prune a layer by a different count than its input, so every
such group is skipped (see :func:`incoherent_groups`) and recorded in the
cell's ``unpruned``. A pruned model whose forward then still fails is
refused with :class:`bench.method.NotApplicableError` naming those layers.
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Sequence
from typing import Any, ClassVar

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from bench import Method, MethodContext, Target, register_method
from bench.method import NotApplicableError
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


# Graph nodes after which a layer legitimately sees only part of a group's
# channels (a concatenation, a split, a slice, qkv unbinding, a broadcast).
_PARTIAL_OPS = ("_ConcatOp", "_SplitOp", "_SliceOp", "_UnbindOp", "_ExpandOp")


def _classifier(model: nn.Module) -> tuple[str | None, list[nn.Module]]:
    path = classifier_path(model)
    return path, ([model.get_submodule(path)] if path is not None else [])


def _signed(d: int) -> int:
    return d - 2**64 if d >= 2**63 else d  # autograd stores negative dims as unsigned


def mixing_layers(model: nn.Module, example: torch.Tensor) -> set[nn.Module]:
    """Linear layers whose input features are not the channels of the tensor they read.

    Why: an MLP-Mixer's token-mixing MLP is applied to ``x.transpose(1, 2)``,
    so its ``in_features`` are the tokens. Found from autograd: the chain of
    transposes/permutes (and ``contiguous`` copies) right before the layer
    moves the last dimension.
    """
    found: set[nn.Module] = set()

    def hook(module: nn.Module, inputs: tuple[Any, ...]) -> None:
        x = inputs[0] if inputs else None
        if not isinstance(x, torch.Tensor) or x.ndim < 2:
            return
        ndim, pos, fn = x.ndim, x.ndim - 1, x.grad_fn
        while fn is not None:
            name = fn.name()
            if name == "TransposeBackward0":
                d0, d1 = (_signed(fn._saved_dim0) % ndim, _signed(fn._saved_dim1) % ndim)
                pos = d1 if pos == d0 else d0 if pos == d1 else pos
            elif name == "PermuteBackward0":
                pos = _signed(fn._saved_dims[pos]) % ndim
            elif name != "CloneBackward0":
                break
            fn = fn.next_functions[0][0] if fn.next_functions else None
        if pos != ndim - 1:
            found.add(module)

    handles = [m.register_forward_pre_hook(hook) for m in model.modules()
               if isinstance(m, nn.Linear)]
    was_training = model.training
    try:
        model.eval()
        with torch.enable_grad():
            model(example.detach().clone().requires_grad_(True))
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
    return found


def incoherent_groups(model: nn.Module, input_shape: tuple[int, ...],
                      ignored: Sequence[nn.Module] = ()) -> list[dict[str, Any]]:
    """Channel groups of Torch-Pruning's dependency graph that do not fit their layers.

    Why: the graph treats every transpose or reshape as channel-preserving, so a
    layer that mixes along another dimension (token-mixing MLPs, Swin's patch
    merging, a per-head bias table) lands in a group of a different size.
    Pruning such a group raises an IndexError inside Torch-Pruning (an index
    past the layer's channels) or builds a model whose forward fails (the
    layer loses fewer channels than its input). A group is incoherent when it
    prunes the inputs of a :func:`mixing_layers` layer, when a member's indices
    reach past its channel count, or when they cover fewer channels than it
    has with no concatenation/split/slice in the group to explain it. Each
    entry: ``root`` (the group's first layer), ``layers`` (the members that do
    not fit) and ``skip`` (every layer whose outputs are in the group: ignoring
    them keeps Torch-Pruning from pruning the group at all).
    """
    import torch_pruning as tp

    device = next(model.parameters()).device
    example = torch.zeros((1, *input_shape), device=device)
    names: dict[Any, str] = {m: n for n, m in model.named_modules()}
    names.update({p: n for n, p in model.named_parameters()})
    mixing = mixing_layers(model, example)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        graph = tp.DependencyGraph().build_dependency(model, example_inputs=example)
    roots = [tp.ops.TORCH_CONV, tp.ops.TORCH_LINEAR, tp.ops.TORCH_LSTM]  # BasePruner's
    out: list[dict[str, Any]] = []
    for group in graph.get_all_groups(ignored_layers=list(ignored), root_module_types=roots):
        partial_ok = any(type(dep.target.module).__name__ in _PARTIAL_OPS for dep, _ in group)
        bad: list[str] = []
        skip: list[str] = []
        for dep, idxs in group:
            module = dep.target.module
            if graph.get_pruner_of_module(module) is None or not idxs:
                continue
            is_out = graph.is_out_channel_pruning_fn(dep.handler)
            if is_out and isinstance(module, nn.Module) and module in names:
                skip.append(names[module])
            if not is_out and module in mixing:
                bad.append(names.get(module, type(module).__name__))
                continue
            try:
                n = graph.get_out_channels(module) if is_out else graph.get_in_channels(module)
            except Exception:  # an op node without a channel count
                continue
            if not isinstance(n, int):
                continue
            top = max(int(i) for i in idxs)
            if top >= n or (len(idxs) != n and not partial_ok):
                bad.append(names.get(module, type(module).__name__))
        if bad:
            root = group[0].dep.source.module
            out.append({"root": names.get(root, type(root).__name__),
                        "layers": sorted(set(bad)), "skip": sorted(set(skip))})
    return out


def unprunable_layers(model: nn.Module, input_shape: tuple[int, ...]) -> tuple[list[str],
                                                                             list[str]]:
    """Layers to hand Torch-Pruning as ignored so no incoherent group is pruned, and the
    layers that make those groups incoherent (for the messages)."""
    _, ignored = _classifier(model)
    groups = incoherent_groups(model, input_shape, ignored)
    return (sorted({n for g in groups for n in g["skip"]}),
            sorted({n for g in groups for n in g["layers"]}))


def prune_once(model: nn.Module, ratio: float, importance: str, input_shape: tuple[int, ...],
               params: PruneParams, seed: int = 0,
               skip: Sequence[str] | None = None) -> nn.Module:
    """Prune ``model`` in place at ``ratio`` and return it (attention attributes fixed).

    ``skip``: layer paths left unpruned (default: :func:`unprunable_layers`, the
    layers of groups the dependency graph cannot couple). A pruned model whose
    forward fails or changes the output shape raises NotApplicableError (a
    ValueError) naming them, never an error from inside the library.
    """
    import torch_pruning as tp

    device = next(model.parameters()).device
    example = torch.zeros((1, *input_shape), device=device)
    if skip is None:
        skip, _ = unprunable_layers(model, input_shape)
    path, ignored = _classifier(model)
    ignored += [model.get_submodule(name) for name in skip]
    expected = _output_shape(model, example)
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
        try:
            pruner.step()
        except (IndexError, RuntimeError) as e:
            raise NotApplicableError(_broken(model, importance, skip, e)) from e
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
    try:
        got = _output_shape(model, example)
    except (IndexError, RuntimeError) as e:
        raise NotApplicableError(_broken(model, importance, skip, e)) from e
    if got != expected:
        raise NotApplicableError(_broken(model, importance, skip,
                                         f"output shape {tuple(got)}, expected {tuple(expected)}"))
    return model


def _output_shape(model: nn.Module, example: torch.Tensor) -> torch.Size:
    """The output shape of one eval-mode forward (the model's mode is restored)."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            return model(example).shape
    finally:
        model.train(was_training)


def _broken(model: nn.Module, importance: str, skip: Sequence[str], error: object) -> str:
    """The refusal when pruning still broke the model: the method, the error, what was left."""
    first = (str(error).splitlines() or [type(error).__name__])[0][:200]
    left = f"; left unpruned: {', '.join(skip)}" if skip else ""
    return (f"prune-{importance}: Torch-Pruning's dependency graph cannot prune "
            f"{type(model).__name__} "
            f"consistently (the pruned model fails: {first}){left}")


def prune_to_budget(model: nn.Module, target: Target, ctx: MethodContext, importance: str,
                    params: PruneParams) -> tuple[nn.Module, float]:
    """Smallest pruning ratio whose pruned copy meets ``target`` (bisection), and that ratio.

    Layers in groups the dependency graph cannot couple (:func:`unprunable_layers`)
    are found once on ``model`` and left unpruned in every trial (recorded as
    ``unpruned``). When no ratio meets the target with such layers left alone,
    that is why: NotApplicableError naming them, not an over-budget model.
    """
    reference = ctx.dense_cost.get(target.metric) if ctx.dense_cost else \
        ctx.measure(model).get(target.metric)
    budget = target.ratio * reference

    skip, cause = unprunable_layers(model, ctx.input_shape)
    why = (f"{', '.join(skip)} stay unpruned: their channels reach {', '.join(cause)}, "
           "which the dependency graph cannot couple (they mix along another dimension or "
           "reshape channels)")
    if skip:
        ctx.record("unpruned", {"layers": skip, "because_of": cause})
        ctx.logger.info("%s", why)

    def trial(ratio: float) -> tuple[nn.Module, int]:
        cand = prune_once(copy.deepcopy(model), ratio, importance, ctx.input_shape, params,
                          ctx.seed, skip=skip)
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
        if skip:  # the layers left alone are why the budget is out of reach
            raise NotApplicableError(
                f"prune-{importance}: no pruning ratio up to {params.max_ratio:.2f} meets "
                f"{target.label} (best {cheapest[2] / reference:.3f} of dense): {why}")
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
