"""Parameters and MACs of a model.

MACs come from ``torch.utils.flop_counter`` (FLOPs / 2) on one sample, so they
are per-sample multiply-accumulates of whatever the model really executes.
"""

from __future__ import annotations

from collections import defaultdict

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from bench.method import Cost


def count_params(model: nn.Module) -> int:
    """All parameters of the model (shared tensors counted once)."""
    seen: set[int] = set()
    total = 0
    for p in model.parameters():
        if id(p) not in seen:
            seen.add(id(p))
            total += p.numel()
    return total


@torch.no_grad()
def count_macs(model: nn.Module, input_shape: tuple[int, ...], per_module: bool = False):
    """Per-sample MACs from torch.utils.flop_counter; with ``per_module`` also a breakdown."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    x = torch.zeros((1, *input_shape), device=device)
    counter = FlopCounterMode(display=False)
    with counter:
        model(x)
    model.train(was_training)
    total = counter.get_total_flops() // 2
    if not per_module:
        return total
    breakdown: dict[str, int] = defaultdict(int)
    for name, ops in counter.get_flop_counts().items():
        breakdown[name] = int(sum(ops.values())) // 2
    return total, dict(breakdown)


def measure_cost(model: nn.Module, input_shape: tuple[int, ...]) -> Cost:
    return Cost(params=count_params(model), macs=int(count_macs(model, input_shape)))
