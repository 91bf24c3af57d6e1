"""Parameters and MACs of a model, from two independent counters.

The primary figure is ``torch.utils.flop_counter`` (FLOPs / 2) on one sample in
eval mode: per-sample multiply-accumulates of the matmuls, convolutions and
attention the model really executes. fvcore's count (a TorchScript trace, the
figure most papers quote) is kept beside it. Each counter also reports the ops
it saw but has no formula for, so a reader knows what a figure leaves out.

Two gaps of the stock counters are closed here:

- ``flop_counter`` has an SDPA formula for the CUDA kernels only; on CPU the
  fused kernel is ``aten._scaled_dot_product_flash_attention_for_cpu``, which it
  skips. We map it (and the other fused SDPA variants) to the same formula.
- fvcore has no handle for ``aten::scaled_dot_product_attention`` and drops it,
  so timm ViTs are undercounted. We register one: B*H*Lq*Lk*(D + Dv) MACs.
"""

from __future__ import annotations

import logging
import warnings
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from typing import Any

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import FlopCounterMode, flop_registry, sdpa_flop_count

from bench.method import Cost

aten = torch.ops.aten
log = logging.getLogger("lowrank_bench")


def count_params(model: nn.Module) -> int:
    """All parameters of the model (shared tensors counted once)."""
    seen: set[int] = set()
    total = 0
    for p in model.parameters():
        if id(p) not in seen:
            seen.add(id(p))
            total += p.numel()
    return total


# -- torch.utils.flop_counter -------------------------------------------------

def _sdpa_formula(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    """FLOPs of attention: 2*B*H*Lq*Lk*(D + Dv), the formula flop_counter uses on CUDA."""
    return sdpa_flop_count(query_shape, key_shape, value_shape)


def _extra_sdpa_ops() -> dict[Any, Any]:
    names = ("_scaled_dot_product_flash_attention_for_cpu",
             "_scaled_dot_product_fused_attention_overrideable")
    ops = [getattr(aten, n) for n in names if hasattr(aten, n)]
    return {op: _sdpa_formula for op in ops if op not in flop_registry}


# Ops that move or create data without arithmetic; never reported as "uncounted".
_NO_COMPUTE = {
    "detach", "clone", "copy_", "_to_copy", "empty", "empty_like", "empty_strided", "zeros",
    "zeros_like", "ones", "ones_like", "full", "full_like", "fill_", "new_empty", "new_zeros",
    "new_ones", "new_full", "cat", "stack", "contiguous", "lift_fresh", "lift_fresh_copy",
    "arange", "constant_pad_nd", "index_select", "gather", "index", "clamp", "clamp_",
    "dropout", "native_dropout", "_local_scalar_dense", "sym_size", "sym_stride",
    "scalar_tensor", "split_with_sizes_copy", "embedding",
}


class _OpRecorder(TorchDispatchMode):
    """Counts every aten op executed (by name), to find those no formula covers."""

    def __init__(self) -> None:
        super().__init__()
        self.ops: Counter[str] = Counter()
        self.packets: dict[str, Any] = {}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        packet = func.overloadpacket
        name = str(packet)
        self.ops[name] += 1
        self.packets[name] = (packet, func.is_view)
        return func(*args, **(kwargs or {}))


def _uncounted(recorder: _OpRecorder, counted: set[Any]) -> dict[str, int]:
    out: dict[str, int] = {}
    for name, n in sorted(recorder.ops.items()):
        packet, is_view = recorder.packets[name]
        short = name.split(".", 1)[-1]
        if packet in counted or is_view or short in _NO_COMPUTE:
            continue
        out[name.replace(".", "::", 1)] = n
    return out


def _strip_root(name: str) -> str:
    return name.split(".", 1)[1] if "." in name else ""


def _self_counts(totals: dict[str, int]) -> dict[str, int]:
    """Module totals -> each module's own share (its total minus its children's)."""
    own: dict[str, int] = {}
    for name, total in totals.items():
        children = sum(t for n, t in totals.items()
                       if n != name and n.startswith(f"{name}." if name else "")
                       and n.count(".") == (name.count(".") + 1 if name else 0))
        value = total - children
        if value:
            own[name] = value
    return own


def _sample(model: nn.Module, input_shape: tuple[int, ...]) -> torch.Tensor:
    p = next(iter(model.parameters()), None)
    device = p.device if p is not None else torch.device("cpu")
    return torch.zeros((1, *input_shape), device=device)


@contextmanager
def _eval(model: nn.Module) -> Iterator[nn.Module]:
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


def flop_counter_macs(model: nn.Module, input_shape: tuple[int, ...],
                      record_ops: bool = True) -> dict[str, Any]:
    """Per-sample MACs from torch.utils.flop_counter, per-module own MACs and uncounted ops.

    ``record_ops=False`` skips the op census (cheaper, for methods' budget searches).
    """
    extra = _extra_sdpa_ops()
    counter = FlopCounterMode(display=False, custom_mapping=extra)
    recorder = _OpRecorder()
    with _eval(model), torch.no_grad(), counter, (recorder if record_ops else nullcontext()):
        model(_sample(model, input_shape))
    totals = {_strip_root(n): int(sum(ops.values())) // 2
              for n, ops in counter.get_flop_counts().items() if n != "Global"}
    counted = set(flop_registry) | set(extra)
    return {"macs": int(counter.get_total_flops()) // 2,
            "by_module": _self_counts(totals),
            "uncounted_ops": _uncounted(recorder, counted)}


def count_macs(model: nn.Module, input_shape: tuple[int, ...], per_module: bool = False):
    """Per-sample MACs (flop_counter); with ``per_module`` also each module's own MACs."""
    r = flop_counter_macs(model, input_shape, record_ops=False)
    return (r["macs"], r["by_module"]) if per_module else r["macs"]


# -- fvcore --------------------------------------------------------------------

# fvcore op names whose counts are multiply-accumulates of the kinds flop_counter also
# counts; the rest of fvcore's defaults (norms, pooling, upsampling) are elementwise.
MATMUL_LIKE_FVCORE_OPS = {"addmm", "bmm", "conv", "einsum", "linear", "matmul", "mm",
                          "scaled_dot_product_attention"}


def fvcore_sdpa_handle(inputs: list[Any], outputs: list[Any]) -> int:
    """fvcore handle for aten::scaled_dot_product_attention: B*H*Lq*Lk*(D + Dv) MACs."""
    from fvcore.nn.jit_handles import get_shape

    q, k, v = (get_shape(inputs[i]) for i in range(3))
    batch_heads = 1
    for d in q[:-2]:
        batch_heads *= d
    return int(batch_heads * q[-2] * k[-2] * (q[-1] + v[-1]))


def fvcore_macs(model: nn.Module, input_shape: tuple[int, ...]) -> dict[str, Any]:
    """fvcore's per-sample count (its "flops" are MACs) with attention registered.

    fvcore keeps its own conventions otherwise: its default handles also count
    normalization layers (about 5 ops per element) and pooling, which
    flop_counter does not; ``macs_matmul`` leaves those out.
    """
    with _eval(model), torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # TorchScript deprecation and tracer chatter
        from fvcore.nn import FlopCountAnalysis

        analysis = FlopCountAnalysis(model, _sample(model, input_shape))
        analysis.set_op_handle("aten::scaled_dot_product_attention", fvcore_sdpa_handle)
        analysis.unsupported_ops_warnings(False).uncalled_modules_warnings(False)
        analysis.tracer_warnings("none")
        total = int(analysis.total())
        by_op = {op: int(v) for op, v in sorted(analysis.by_operator().items())}
        by_module = {n: int(v) for n, v in analysis.by_module().items()}
        uncounted = dict(sorted(analysis.unsupported_ops().items()))
    matmul = sum(v for op, v in by_op.items() if op in MATMUL_LIKE_FVCORE_OPS)
    return {"macs": total, "macs_matmul": matmul, "by_op": by_op,
            "by_module": _self_counts(by_module), "uncounted_ops": uncounted}


# -- the record ----------------------------------------------------------------

def mac_report(model: nn.Module, input_shape: tuple[int, ...]) -> dict[str, Any]:
    """Both counters, their disagreement, and per-layer own MACs (flop_counter and fvcore)."""
    primary = flop_counter_macs(model, input_shape)
    out: dict[str, Any] = {"macs": primary["macs"], "flops": 2 * primary["macs"]}
    try:
        fv = fvcore_macs(model, input_shape)
    except Exception as exc:  # a model TorchScript cannot trace: keep the primary figure
        log.warning("fvcore could not count this model: %s: %s", type(exc).__name__, exc)
        fv = None
        out["macs_fvcore_error"] = f"{type(exc).__name__}: {exc}"
    out["macs_fvcore"] = fv["macs"] if fv else None
    out["macs_fvcore_rel_diff"] = (
        (fv["macs"] - primary["macs"]) / primary["macs"] if fv and primary["macs"] else None)
    # fvcore restricted to the op kinds flop_counter counts: an independent cross-check
    out["macs_fvcore_matmul"] = fv["macs_matmul"] if fv else None
    out["macs_fvcore_by_op"] = fv["by_op"] if fv else None
    out["uncounted_ops"] = {"flop_counter": primary["uncounted_ops"],
                            "fvcore": fv["uncounted_ops"] if fv else None}
    names = sorted(set(primary["by_module"]) | set(fv["by_module"] if fv else ()))
    out["macs_by_layer"] = {
        n: {"macs": primary["by_module"].get(n, 0),
            "macs_fvcore": (fv["by_module"].get(n, 0) if fv else None)} for n in names}
    return out


def measure_cost(model: nn.Module, input_shape: tuple[int, ...]) -> Cost:
    return Cost(params=count_params(model), macs=int(count_macs(model, input_shape)))
