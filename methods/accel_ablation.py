"""What each of svd-accel's techniques buys, one added at a time.

svd-accel differs from svd by rank rounding, a greedy top-up of the budget
that rounding leaves unused (ours), the skip rule, layer merging and
sequential freezing. Rounding and top-up raise ranks within the budget and so
move accuracy; the papers' speed-up techniques (skip rule, merging, freezing)
are about latency. The ablation compresses the same model to the same target
with the same rank rule at each cumulative stage and records its validation
top-1 and loss (before fine-tuning, which the harness does afterwards) and
its params and MACs ratios. Sequential freezing acts only during fine-tuning,
so it has no pre-fine-tuning figure: a suite row with ``techniques`` lacking
``freezing`` measures it after fine-tuning.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import nn

from methods.layers.ranks import has_val_data, val_scores

# cumulative stages: name -> techniques on
STAGES: tuple[tuple[str, list[str]], ...] = (
    ("svd", []),
    ("+rounding", ["rounding"]),
    ("+top_up", ["rounding", "top_up"]),
    ("+skip", ["rounding", "top_up", "skip"]),
    ("+merging", ["rounding", "top_up", "skip", "merging"]),
)


def ablation_record(stage: Callable[[list[str]], nn.Module], ctx: Any,
                    rule: str) -> dict[str, Any]:
    """Figures of every stage; ``stage(techniques)`` compresses a fresh copy of the model."""
    rows = []
    dense = ctx.dense_cost
    with_val = has_val_data(ctx)
    for name, techniques in STAGES:
        model = stage(list(techniques))
        cost = ctx.measure(model)
        sc = val_scores(model, ctx.val_batches(), ctx.device) if with_val else None
        rows.append({
            "stage": name, "techniques": list(techniques),
            "val_top1": None if sc is None else sc[0],
            "val_loss": None if sc is None else round(sc[1], 6),
            "macs_ratio": cost.macs / dense.macs if dense else None,
            "params_ratio": cost.params / dense.params if dense else None,
        })
        del model
    return {"rule": rule, "before_finetune": True, "stages": rows,
            "freezing": "acts in fine-tuning only: compare rows with and without it in "
                        "techniques"}
