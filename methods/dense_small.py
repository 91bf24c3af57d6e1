"""The smaller-dense-model baseline: the same family made narrower, trained from scratch.

For each target, a width multiplier w in (0, 1] is searched (bisection on
freshly built, untrained models) so the narrower model's params or MACs land
at or under the budget; that model is trained from scratch with the harness's
loop under the suite's training budget and settings (ledger phase
``method_train``, which replaces the dense baseline's ``pretrain`` in its
ledger: its weights never saw that training), and the harness then fine-tunes
it like every compressed model. So it gets the same total optimizer steps as
every other row, and a compression method that loses to it at the same budget
shows as such in the leaderboard.

How each family is narrowed (our choice; shallower variants are not built):
- the built-in MLP: every hidden width times w;
- timm VisionTransformer: embed_dim times w, rounded to a multiple of the
  head count (heads and depth kept, so head_dim shrinks);
- timm ResNet: stem width and every stage's channels times w.
Widths are rounded to ``round_to`` (at least 1).

The models come from ``ctx.build_model``: the harness's builder makes the cell's
architecture with the overrides above. A builder that takes a
``width_multiplier`` argument (as :func:`bench.compress`'s ``build=`` may) is
called with w itself instead, so any family it can narrow works.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable
from typing import Any

from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from bench import Method, MethodContext, Target, register_method


class DenseSmallParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    round_to: int = Field(default=1, ge=1, description="round every width to this multiple")
    search_steps: int = Field(default=20, ge=4, le=40, description="bisection steps on w")


def _scale(width: int, w: float, multiple: int) -> int:
    return max(multiple, int(math.floor(width * w / multiple)) * multiple)


def width_overrides(model: nn.Module, w: float, round_to: int = 1) -> dict[str, Any]:
    """Model kwargs that build ``model``'s family at width multiplier ``w``."""
    from bench.models import MLP

    if isinstance(model, MLP):
        hidden = [m.out_features for m in model.features if isinstance(m, nn.Linear)]
        return {"hidden": [_scale(h, w, round_to) for h in hidden]}
    try:
        from timm.models.resnet import ResNet
        from timm.models.vision_transformer import VisionTransformer
    except ImportError:  # pragma: no cover - timm is a dependency
        ResNet = VisionTransformer = ()  # type: ignore[assignment,misc]
    if isinstance(model, VisionTransformer):
        heads = model.blocks[0].attn.num_heads
        return {"embed_dim": _scale(model.embed_dim, w, heads * round_to)}
    if isinstance(model, ResNet):
        stages = [model.get_submodule(f"layer{i}") for i in range(1, 5)]
        # the first block's bn1 width is the stage's base channel count
        channels = [s[0].bn1.num_features for s in stages]
        first_conv = next(m for m in model.modules() if isinstance(m, nn.Conv2d))
        stem = first_conv.out_channels if not isinstance(model.conv1, nn.Sequential) else \
            model.conv1[-1].out_channels // 2
        return {"channels": tuple(_scale(c, w, round_to) for c in channels),
                # timm's tiered/deep stems split stem_width (3 * (stem_width // 4)): keep >= 4
                "stem_width": max(4, _scale(stem, w, round_to))}
    raise ValueError(
        f"dense-small does not know how to narrow {type(model).__name__}; supported: the "
        "built-in mlp, timm VisionTransformer and ResNet. For another family, give a builder "
        "that takes width_multiplier (bench.compress(..., build=lambda width_multiplier: ...))")


BUILD_HELP = (
    "trains a narrower copy of the architecture from scratch: pass build=, a callable "
    "returning a fresh untrained model. If it takes a width_multiplier argument it "
    "is called as build(width_multiplier=w), w in (0, 1] (any family; keep every width at "
    "least 1); otherwise as build(**kw) with the family's width overrides (timm ResNet: "
    "channels=, stem_width=; timm VisionTransformer: embed_dim=; the built-in mlp: hidden=), "
    "e.g. build=lambda **kw: timm.create_model('resnet18', num_classes=10, **kw)")


def takes_width_multiplier(build: Callable[..., nn.Module]) -> bool:
    """Whether ``build`` names a ``width_multiplier`` parameter (then it gets w itself).

    Why: a caller's builder for a family :func:`width_overrides` does not know
    narrows itself from w; a ``**kw`` builder (the harness's) gets overrides.
    """
    try:
        return "width_multiplier" in inspect.signature(build).parameters
    except (TypeError, ValueError):  # a builtin or C callable without a signature
        return False


@register_method
class DenseSmall(Method):
    """A narrower model of the same family, trained from scratch, sized to the target."""

    name = "dense-small"
    kind = "post"
    Params = DenseSmallParams
    description = "same family made narrower (width multiplier), trained from scratch"
    needs_data = True
    needs_build = BUILD_HELP

    def size(self, model: nn.Module, target: Target, ctx: MethodContext) -> tuple[nn.Module,
                                                                                  float]:
        """The widest multiplier whose fresh model meets ``target``, and that model.

        The builder gets ``width_multiplier=w`` when it takes it, else the
        family's :func:`width_overrides` (an unknown family is refused before
        anything is built). Without a builder: a ValueError saying what to pass.
        """
        if ctx.build_model is None:
            raise ValueError(f"dense-small {BUILD_HELP}")
        make = ctx.build_model
        p: DenseSmallParams = self.params
        by_multiplier = takes_width_multiplier(make)
        if not by_multiplier:
            width_overrides(model, 1.0, p.round_to)  # refuse an unknown family up front
        budget = target.ratio * (ctx.dense_cost or ctx.measure(model)).get(target.metric)

        def build(w: float) -> tuple[nn.Module, int]:
            cand = make(width_multiplier=w) if by_multiplier else \
                make(**width_overrides(model, w, p.round_to))
            cand = cand.to(ctx.device)
            return cand, ctx.measure(cand).get(target.metric)

        lo, hi = 0.0, 1.0
        best, cost = build(1e-6)  # the narrowest the rounding allows
        best_w = 0.0
        if cost > budget:
            ctx.logger.warning("even the narrowest %s misses %s", type(model).__name__,
                               target.label)
            return best, best_w
        for _ in range(p.search_steps):
            mid = (lo + hi) / 2
            cand, cost = build(mid)
            if cost <= budget:
                lo, best, best_w = mid, cand, mid
            else:
                hi = mid
        return best, best_w

    def compress(self, model: nn.Module, target: Target, ctx: MethodContext) -> nn.Module:
        small, w = self.size(model, target, ctx)
        ctx.record("width_multiplier", w)
        if not takes_width_multiplier(ctx.build_model):
            ctx.record("width_overrides", width_overrides(model, w, self.params.round_to))
        stats = ctx.train(small, phase="train")
        ctx.record("from_scratch_epochs", getattr(stats, "epochs", None))
        return small
