"""The dense reference row: the trained baseline plus the common fine-tune phase.

The reference is "dense + fine-tune": the harness fine-tunes this row under
the same fine-tune phase as every compressed row, so every row of a suite has
the same total optimizer steps (docs/fairness.md, "Fairness: one budget for every row").
"""

from __future__ import annotations

from torch import nn

from bench import Method, MethodContext, Target, register_method


@register_method
class Dense(Method):
    """The uncompressed baseline every other row is compared against."""

    name = "dense"
    kind = "post"
    uses_target = False
    description = "uncompressed dense baseline, fine-tuned like every other row"

    def compress(self, model: nn.Module, target: Target | None, ctx: MethodContext) -> nn.Module:
        return model
