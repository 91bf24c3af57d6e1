"""Test-only methods that fail on purpose, named in suites as 'tests.failing_methods:Class'."""

from __future__ import annotations

import multiprocessing
import os
import signal

import torch
from torch import Tensor, nn

from bench import Method, MethodContext, Target


class Raises(Method):
    """compress raises: an ordinary bug in a method."""

    name = "test-raises"

    def compress(self, model: nn.Module, target: Target | None, ctx: MethodContext) -> nn.Module:
        raise RuntimeError("deliberate failure in compress")


class NaNLoss(Method):
    """A "train" method whose regularizer is NaN: training must stop with NonFiniteLossError."""

    name = "test-nan"
    kind = "train"

    def regularizer(self, model: nn.Module, ctx: MethodContext) -> Tensor | None:
        return torch.tensor(float("nan"))

    def compress(self, model: nn.Module, target: Target | None, ctx: MethodContext) -> nn.Module:
        return model


class OutOfMemory(Method):
    """Raises the error CUDA raises when memory runs out (without needing a GPU)."""

    name = "test-oom"

    def compress(self, model: nn.Module, target: Target | None, ctx: MethodContext) -> nn.Module:
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")


class KillsWorker(Method):
    """Kills its own worker process, as the kernel's out-of-memory killer would.

    Only in a worker process: in the driver it raises instead of killing the run.
    """

    name = "test-kill-worker"

    def compress(self, model: nn.Module, target: Target | None, ctx: MethodContext) -> nn.Module:
        if multiprocessing.parent_process() is None:
            raise RuntimeError("test-kill-worker only kills worker processes")
        os.kill(os.getpid(), signal.SIGKILL)
        return model
