"""Where the time of a forward pass goes, per layer type, from ``torch.profiler`` (CPU).

"MACs dropped, latency did not" is answered by looking at what the time is
spent on: a factorized model that halves its matmul time but adds reshapes,
copies and per-op overhead can end up no faster. Each profiled call is wrapped
in a ``record_function`` span; every aten op's *self* CPU time (time in the op
itself, not in ops it calls, so nothing is counted twice) goes to one category:

- ``matmul_conv``: addmm/mm/bmm/matmul/linear, convolutions (any ``conv``,
  ``_convolution``, ``mkldnn_*``) and scaled-dot-product attention kernels;
- ``norm``: batch/layer/group/instance/RMS norms;
- ``activation``: relu (``clamp_min``), gelu, silu, sigmoid, tanh, hard*, softmax, ...;
- ``reshape``: view/reshape/permute/transpose/contiguous/copy_/clone/expand/cat/...;
- ``other``: every other op (adds, pooling, ...), plus the span's own self time:
  Python and dispatch overhead between ops.

The categories therefore sum to ``total_ms``, the wall time of one profiled
call (profiler overhead included, a few microseconds per op), averaged over a
few profiled calls after a warm-up. Batch 1, fixed thread count, eval mode,
``torch.inference_mode``.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.profiler import ProfilerActivity, profile, record_function

CATEGORIES = ("matmul_conv", "norm", "activation", "reshape", "other")
SPAN = "bench::forward"

_MATMUL = {"addmm", "mm", "bmm", "baddbmm", "addbmm", "matmul", "linear", "addmv", "mv",
           "dot", "einsum", "_addmm_activation"}
_ACTIVATION = {"relu", "relu6", "gelu", "silu", "sigmoid", "tanh", "hardswish", "hardsigmoid",
               "hardtanh", "clamp_min", "clamp", "elu", "selu", "celu", "leaky_relu", "mish",
               "softplus", "softmax", "_softmax", "log_softmax", "_log_softmax", "threshold",
               "prelu", "_prelu_kernel", "glu", "gelu_tanh"}
_RESHAPE = {"view", "reshape", "_reshape_alias", "permute", "transpose", "t", "contiguous",
            "copy_", "clone", "expand", "expand_as", "flatten", "unflatten", "unsqueeze",
            "squeeze", "as_strided", "_unsafe_view", "select", "slice", "narrow", "cat",
            "stack", "split", "split_with_sizes", "chunk", "unbind", "detach", "alias",
            "_to_copy", "to", "resolve_conj", "resolve_neg", "view_as", "movedim", "swapaxes",
            "pixel_shuffle", "pixel_unshuffle", "flip", "roll", "channel_shuffle",
            "native_channel_shuffle", "index_select", "gather", "lift_fresh"}


def categorize(op: str) -> str:
    """The category of a profiler event name such as ``aten::addmm`` or ``aten::relu_``."""
    name = op.split("::", 1)[-1]
    base = name.rstrip("_") if name != "copy_" else name
    if (base in _MATMUL or "conv" in base or base.startswith("mkldnn")
            or "scaled_dot_product" in base):
        return "matmul_conv"
    if "norm" in base and not base.startswith("linalg"):
        return "norm"
    if base in _ACTIVATION:
        return "activation"
    if name in _RESHAPE or base in _RESHAPE:
        return "reshape"
    return "other"


@dataclass
class Breakdown:
    """Per-call milliseconds per category, and per op (count and self time per call)."""

    categories: dict[str, float]
    total_ms: float
    calls: int
    threads: int
    ops: dict[str, dict[str, float]] = field(default_factory=dict)

    def record(self) -> dict[str, float]:
        """The record's shape: the five categories and ``total_ms``."""
        return {**{c: self.categories[c] for c in CATEGORIES}, "total_ms": self.total_ms}


@contextlib.contextmanager
def _quiet_native_stderr() -> Iterator[None]:
    """Silence the profiler backend's own start/stop and device-probe lines, which it writes
    to file descriptor 2 from C++ for every profiled region (one per cell in a suite run)."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def profile_breakdown(model: nn.Module, inputs: tuple[int, ...] | torch.Tensor,
                      batch_size: int = 1, threads: int | None = 1, calls: int = 5,
                      warmup: int = 3, seed: int = 0) -> Breakdown:
    """Profile ``calls`` forward passes of ``model`` on CPU and split their time by op type.

    ``inputs`` is a per-sample shape (a seeded random batch of ``batch_size``)
    or the batch itself. The model is put in eval mode and moved to the CPU.
    """
    if calls < 1:
        raise ValueError(f"profile_breakdown needs calls >= 1; got {calls}")
    if isinstance(inputs, torch.Tensor):
        x = inputs.to("cpu")
    else:
        x = torch.randn((batch_size, *inputs), generator=torch.Generator().manual_seed(seed))
    old_threads = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        model = model.eval().to("cpu")
        with torch.inference_mode():
            for _ in range(warmup):
                model(x)
            with _quiet_native_stderr(), profile(activities=[ProfilerActivity.CPU]) as prof:
                for _ in range(calls):
                    with record_function(SPAN):
                        model(x)
        used = torch.get_num_threads()
    finally:
        torch.set_num_threads(old_threads)
    return _summarize(prof.key_averages(), calls, used)


def _summarize(events: Any, calls: int, threads: int) -> Breakdown:
    cats = dict.fromkeys(CATEGORIES, 0.0)
    ops: dict[str, dict[str, float]] = {}
    total_us = 0.0
    for e in events:
        if e.key == SPAN:
            cats["other"] += e.self_cpu_time_total / 1000.0 / calls
            total_us += e.cpu_time_total
            ops["(overhead between ops)"] = {"count": e.count / calls,
                                             "self_ms": e.self_cpu_time_total / 1000.0 / calls}
            continue
        if "::" not in e.key:  # e.g. profiler bookkeeping spans
            continue
        ms = e.self_cpu_time_total / 1000.0 / calls
        cats[categorize(e.key)] += ms
        ops[e.key] = {"count": e.count / calls, "self_ms": ms}
    if total_us == 0.0:
        raise RuntimeError("the profiler recorded no forward span; nothing to break down")
    return Breakdown(categories=cats, total_ms=total_us / 1000.0 / calls, calls=calls,
                     threads=threads, ops=ops)
