"""A hash of what a model computes with, not of its weights (and one of its weights).

Two models with the same fingerprint run the same kernels on tensors of the same
shapes and dtypes, so their latency is the same up to timing noise: the runner
times one architecture of a row once and lets its other seeds and recovery
budgets reuse the figures (see bench.run.timing_share).
"""

from __future__ import annotations

import hashlib
from typing import Any

import torch
from torch import nn


def architecture_fingerprint(model: nn.Module) -> str:
    """sha256 (16 hex) over every module's name, class and ``extra_repr`` (kernel size,
    stride, groups, features...) and every parameter's and buffer's name, shape and dtype.

    Weight values are left out on purpose: they do not change which kernels run. A
    module whose forward branches on a plain Python attribute that ``extra_repr`` does
    not show would hash the same in both states; such a module should show it there.
    """
    h = hashlib.sha256()
    for name, module in model.named_modules():
        cls = type(module)
        h.update(f"m|{name}|{cls.__module__}.{cls.__qualname__}|{module.extra_repr()}\n".encode())
    for kind, tensors in (("p", model.named_parameters()), ("b", model.named_buffers())):
        for name, t in tensors:
            h.update(f"{kind}|{name}|{tuple(t.shape)}|{t.dtype}\n".encode())
    return h.hexdigest()[:16]


def weights_digest(model: nn.Module) -> str:
    """sha256 (16 hex) over every parameter's and buffer's name, dtype, shape and bytes.

    Why: rows of one model x dataset x seed are compared paired on the dense model
    they share; this names which trained dense model a record started from, so a row
    compressed from a baseline trained again elsewhere (another CPU gives other
    weights) is caught instead of silently paired with the first one.
    """
    h = hashlib.sha256()
    hash_state(h, model)
    return h.hexdigest()[:16]


def hash_state(h: Any, model: nn.Module) -> None:
    """Feed every parameter and buffer (name, dtype, shape, bytes) of ``model`` into ``h``."""
    for name, t in model.state_dict(keep_vars=False).items():
        t = t.detach().to("cpu").contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
