"""Test-only methods that cannot reach a target, named in suites as 'tests.na_methods:Class'."""

from __future__ import annotations

from torch import nn

from bench import Method, MethodContext, Target
from bench.method import NotApplicableError


class TrainUnreachable(Method):
    """A "train" method whose prepare finds the target out of reach (shared by all targets)."""

    name = "test-train-unreachable"
    kind = "train"

    def prepare(self, model: nn.Module, ctx: MethodContext) -> nn.Module:
        raise NotApplicableError("nothing to train in this architecture")

    def compress(self, model: nn.Module, target: Target | None, ctx: MethodContext) -> nn.Module:
        return model
