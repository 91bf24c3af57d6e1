"""Sequential freezing (Hajimolahoseini et al.): train one factor of each pair at a time.

During fine-tuning only one factor of every decomposed pair trains,
alternating every ``every`` epochs (or steps), which skips the frozen
factor's weight gradient. Used by ``svd-accel``.
"""

from __future__ import annotations

from torch import nn

from bench.method import MethodContext


def factor_pairs(model: nn.Module) -> list[tuple[nn.Module, nn.Module]]:
    """(first, second) of every decomposed pair: modules with ``first``/``second`` children."""
    pairs = []
    for m in model.modules():
        a, b = getattr(m, "first", None), getattr(m, "second", None)
        if isinstance(a, nn.Module) and isinstance(b, nn.Module):
            pairs.append((a, b))
    return pairs


class SequentialFreezer:
    """Alternates which factor of each pair trains, during fine-tuning only.

    Freezing is by ``requires_grad``: the optimizer is built with every
    parameter before the first step, and SGD/Adam(W) skip a parameter whose
    gradient is None, so a frozen factor is neither stepped nor decayed.
    """

    def __init__(self, every: int = 1, unit: str = "epoch"):
        self.every, self.unit = every, unit
        self.frozen: str | None = None

    def turn(self, ctx: MethodContext) -> str:
        tick = ctx.epoch if self.unit == "epoch" else ctx.step
        return "first" if (tick // self.every) % 2 == 0 else "second"

    def apply(self, model: nn.Module, frozen: str | None) -> None:
        for first, second in factor_pairs(model):
            for name, mod in (("first", first), ("second", second)):
                for p in mod.parameters():
                    p.requires_grad_(name != frozen)
        self.frozen = frozen

    def before_step(self, model: nn.Module, ctx: MethodContext) -> None:
        if ctx.phase != "finetune":
            return
        want = self.turn(ctx)
        if want != self.frozen:
            self.apply(model, want)

    def on_epoch_end(self, model: nn.Module, ctx: MethodContext) -> None:
        if ctx.phase == "finetune" and ctx.epoch >= ctx.epochs - 1:
            self.apply(model, None)  # hand back a fully trainable model
