"""Test-only methods that break the one-budget rule, named in suites as
'tests.budget_methods:Class'. Each must end with a ledger violation."""

from __future__ import annotations

import itertools

import torch
import torch.nn.functional as F
from torch import nn

from bench import Method, MethodContext, Target


class TrainsLonger(Method):
    """A post method that trains 3 more epochs inside compress, under no declared parameter."""

    name = "test-trains-longer"

    def compress(self, model: nn.Module, target: Target | None, ctx: MethodContext) -> nn.Module:
        ctx.train(model, epochs=3, phase="polish")
        return model


class OwnWeightDecay(Method):
    """A "train" method that changes its weight decay without declaring a parameter."""

    name = "test-own-weight-decay"
    kind = "train"

    def weight_decay(self, default: float) -> float:
        return 0.1

    def compress(self, model: nn.Module, target: Target | None, ctx: MethodContext) -> nn.Module:
        return model


class OwnOptimizer(Method):
    """A post method that runs its own optimizer in compress, outside the harness's loop."""

    name = "test-own-optimizer"

    def compress(self, model: nn.Module, target: Target | None, ctx: MethodContext) -> nn.Module:
        opt = torch.optim.SGD(model.parameters(), lr=1e-3)
        for x, y in itertools.islice(ctx.calibration_batches(), 3):
            opt.zero_grad()
            F.cross_entropy(model(x.to(ctx.device)), y.to(ctx.device)).backward()
            opt.step()
        return model
