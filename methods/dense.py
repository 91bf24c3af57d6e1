"""The dense reference row: the trained baseline, unchanged."""

from __future__ import annotations

from torch import nn

from bench import Method, MethodContext, Target, register_method


@register_method
class Dense(Method):
    """The uncompressed baseline every other row is compared against."""

    name = "dense"
    kind = "post"
    uses_target = False
    description = "uncompressed dense baseline"

    def compress(self, model: nn.Module, target: Target | None, ctx: MethodContext) -> nn.Module:
        return model
