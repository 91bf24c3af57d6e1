"""Deployment runtimes beside eager: the same paired timing under torch.compile and onnxruntime.

A speedup measured in eager PyTorch need not survive deployment: a compiler
fuses what eager runs op by op, and a factorised layer's two small matmuls may
gain or lose more than the dense one. For each runtime, both the model and its
dense reference are prepared the same way (same threads, same batch sizes) and
timed against each other with `bench.measure.paired.time_paired`, so each
runtime has its own speedup and interval.

- ``compile``: ``torch.compile(copy, dynamic=False)`` (inductor), compiled and
  run once per batch size before timing, so a model that does not compile is
  caught here. A refresh reuses the compiled copy (recompiling would cost more
  than the whole timing).
- ``onnxruntime``: exported with PyTorch's own exporter (``torch.onnx.export``,
  ``dynamo=True``, one static graph per batch size, through a temporary file),
  run by ``onnxruntime.InferenceSession`` on ``CPUExecutionProvider`` with
  ``intra_op_num_threads`` = the suite's threads, ``inter_op_num_threads`` = 1,
  sequential execution, thread spinning off (an idle session must not take the
  other side's CPU) and the given graph optimization level. A refresh opens
  new sessions from the exported bytes.

A model that cannot be prepared raises `RuntimeUnavailable` with the state
("not exportable", "not compilable", "unavailable" when the package is not
installed) and the error message; `time_runtime` turns it into the record's
``runtime_info`` without timing.
"""

from __future__ import annotations

import copy
import hashlib
import os
import re
import tempfile
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from bench.measure.fingerprint import hash_state
from bench.measure.paired import DEFAULT_CALLS, DEFAULT_ROUNDS, time_paired

RUNTIMES = ("eager", "compile", "onnxruntime")
ORT_LEVELS = {"disable": "ORT_DISABLE_ALL", "basic": "ORT_ENABLE_BASIC",
              "extended": "ORT_ENABLE_EXTENDED", "all": "ORT_ENABLE_ALL"}
FAILED_STATE = {"compile": "not compilable", "onnxruntime": "not exportable"}
ERROR_CHARS = 2000


class RuntimeUnavailable(RuntimeError):
    """A model (or the reference) cannot run under a runtime; ``state`` says how."""

    def __init__(self, runtime: str, state: str, message: str):
        super().__init__(f"{runtime}: {state}: {message}")
        self.runtime, self.state, self.message = runtime, state, message


_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def _short(exc: BaseException) -> str:
    """One line of text: the error, then its cause (an exporter wraps the real error)."""
    text = f"{type(exc).__name__}: {exc}"
    if exc.__cause__ is not None and str(exc.__cause__) not in text:
        text += f" (cause: {type(exc.__cause__).__name__}: {exc.__cause__})"
    text = " ".join(_ANSI.sub("", text).split())
    return text if len(text) <= ERROR_CHARS else text[: ERROR_CHARS - 1] + "…"


def runtime_info(runtime: str, threads: int | None = 1,
                 graph_optimization: str = "all") -> dict[str, Any]:
    """Versions and settings of a runtime (what a record keeps beside its figures)."""
    info: dict[str, Any] = {"runtime": runtime, "torch": torch.__version__,
                            "threads": threads}
    if runtime == "compile":
        info.update({"backend": "inductor", "dynamic": False, "mode": "default"})
    elif runtime == "onnxruntime":
        try:
            import onnxruntime as ort

            info["onnxruntime"] = ort.__version__
        except ImportError:
            info["onnxruntime"] = None
        info.update({"exporter": "dynamo", "provider": "CPUExecutionProvider",
                     "graph_optimization": ORT_LEVELS[graph_optimization],
                     "intra_op_num_threads": threads or 0, "inter_op_num_threads": 1,
                     "execution_mode": "ORT_SEQUENTIAL", "allow_spinning": False,
                     "static_batch": True})
    return info


# -- torch.compile -------------------------------------------------------------
@dataclass
class CompiledSide:
    """A compiled copy of a module, compiled for every batch size up front."""

    fn: Callable[[torch.Tensor], Any]

    def fresh(self) -> Callable[[torch.Tensor], Any]:
        return self.fn


def prepare_compile(module: nn.Module, batches: dict[int, torch.Tensor]) -> CompiledSide:
    """``torch.compile(copy, dynamic=False)``, run once per batch size (raises
    RuntimeUnavailable "not compilable" when compilation or that run fails)."""
    work = copy.deepcopy(module).eval().to("cpu")
    try:
        compiled = torch.compile(work, dynamic=False)
        with torch.inference_mode():
            for x in batches.values():
                compiled(x)
    except Exception as exc:
        raise RuntimeUnavailable("compile", "not compilable", _short(exc)) from exc
    return CompiledSide(compiled)


# -- onnxruntime ---------------------------------------------------------------
# Exports of the dense reference, which every cell of a model x dataset x seed times
# against: exporting it again for each cell and batch size cost about a third of a cell's
# timing. Keyed by the module's structure, classes and weights and the input's shape.
EXPORT_CACHE_SIZE = 8
_exports: OrderedDict[str, tuple[bytes, int | None]] = OrderedDict()


def export_key(module: nn.Module, x: torch.Tensor) -> str:
    """A digest of what decides an export: every submodule's class and repr, every
    parameter and buffer (name, dtype, shape, bytes), the input's shape and dtype, torch."""
    h = hashlib.sha256()
    h.update(f"{torch.__version__}|{tuple(x.shape)}|{x.dtype}|{module!r}".encode())
    for name, sub in module.named_modules():
        h.update(f"{name}:{type(sub).__module__}.{type(sub).__qualname__};".encode())
    hash_state(h, module)
    return h.hexdigest()


def export_onnx_cached(module: nn.Module, x: torch.Tensor) -> tuple[bytes, int | None]:
    """`export_onnx` through a small in-process cache (for the reference side only: a
    method's module may keep state that decides its forward outside its weights)."""
    key = export_key(module, x)
    if key in _exports:
        _exports.move_to_end(key)
        return _exports[key]
    out = export_onnx(module, x)
    _exports[key] = out
    while len(_exports) > EXPORT_CACHE_SIZE:
        _exports.popitem(last=False)
    return out


def export_onnx(module: nn.Module, x: torch.Tensor) -> tuple[bytes, int | None]:
    """(serialised ONNX model, default-domain opset) of ``module`` on a batch like ``x``,
    exported by ``torch.onnx.export(dynamo=True)`` through a temporary file."""
    import warnings

    work = copy.deepcopy(module).eval().to("cpu")
    with tempfile.TemporaryDirectory(prefix="lowrank-bench-onnx-") as tmp:
        path = os.path.join(tmp, "model.onnx")
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            torch.onnx.export(work, (x,), path, dynamo=True, verbose=False,
                              external_data=False)
        with open(path, "rb") as fh:
            data = fh.read()
    opset = None
    try:
        import onnx

        proto = onnx.load_from_string(data)
        opset = next((int(o.version) for o in proto.opset_import if o.domain in ("", "ai.onnx")),
                     None)
    except Exception:  # the opset is information only
        pass
    return data, opset


@dataclass
class OrtSide:
    """Exported graphs per batch size; ``fresh()`` opens new sessions on them."""

    graphs: dict[int, bytes]
    threads: int | None
    graph_optimization: str = "all"
    opset: int | None = None
    input_names: dict[int, str] = field(default_factory=dict)

    def session(self, data: bytes) -> Any:
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = self.threads or 0
        opts.inter_op_num_threads = 1
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        opts.graph_optimization_level = getattr(ort.GraphOptimizationLevel,
                                                ORT_LEVELS[self.graph_optimization])
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        opts.log_severity_level = 3
        return ort.InferenceSession(data, sess_options=opts,
                                    providers=["CPUExecutionProvider"])

    def fresh(self) -> Callable[[torch.Tensor], Any]:
        runs = {}
        for bs, data in self.graphs.items():
            sess = self.session(data)
            name = sess.get_inputs()[0].name
            runs[bs] = (sess, name)

        def run(x: torch.Tensor) -> Any:
            sess, name = runs[int(x.shape[0])]
            return sess.run(None, {name: x.numpy()})

        return run


def prepare_onnxruntime(module: nn.Module, batches: dict[int, torch.Tensor],
                        threads: int | None, graph_optimization: str = "all",
                        cache: bool = False) -> OrtSide:
    """Export per batch size and open a session once (raises RuntimeUnavailable:
    "unavailable" without onnxruntime, "not exportable" when export or loading fails).
    ``cache`` reuses an earlier export of the same module (the dense reference)."""
    export = export_onnx_cached if cache else export_onnx
    try:
        import onnxruntime  # noqa: F401
    except ImportError as exc:
        raise RuntimeUnavailable("onnxruntime", "unavailable",
                                 "onnxruntime is not installed (pip install "
                                 "'lowrank-bench[onnx]')") from exc
    graphs, opset = {}, None
    try:
        for bs, x in batches.items():
            graphs[bs], opset = export(module, x)
        side = OrtSide(graphs, threads, graph_optimization, opset)
        check = side.fresh()
        for x in batches.values():
            check(x)
    except RuntimeUnavailable:
        raise
    except Exception as exc:
        raise RuntimeUnavailable("onnxruntime", "not exportable", _short(exc)) from exc
    return side


def prepare(module: nn.Module, runtime: str, batches: dict[int, torch.Tensor],
            threads: int | None, graph_optimization: str = "all", cache: bool = False) -> Any:
    """``module`` prepared for ``runtime`` (a side for time_paired); ``cache``: the
    reference side, whose ONNX export may be reused (`export_onnx_cached`)."""
    if runtime == "compile":
        return prepare_compile(module, batches)
    if runtime == "onnxruntime":
        return prepare_onnxruntime(module, batches, threads, graph_optimization, cache)
    if runtime == "eager":
        return module
    raise ValueError(f"unknown runtime {runtime!r}; known: {', '.join(RUNTIMES)}")


def example_batches(inputs: tuple[int, ...] | torch.Tensor,
                    batch_sizes: Sequence[int] | None, seed: int = 0) -> dict[int, torch.Tensor]:
    """One batch per batch size, the shapes time_paired will call with."""
    if isinstance(inputs, torch.Tensor):
        return {int(inputs.shape[0]): inputs.detach().to("cpu")}
    gen = torch.Generator().manual_seed(seed)
    return {int(bs): torch.randn((int(bs), *inputs), generator=gen) for bs in batch_sizes or ()}


def time_runtime(model: nn.Module, reference: nn.Module, inputs: tuple[int, ...] | torch.Tensor,
                 batch_sizes: Sequence[int] | None, runtime: str, threads: int | None = 1,
                 graph_optimization: str = "all", rounds: int = DEFAULT_ROUNDS,
                 calls: int = DEFAULT_CALLS, reference_runtime: str | None = None,
                 **paired: Any) -> tuple[dict[str, Any] | None, dict[str, Any]]:
    """(``{b<batch>: entry}`` or None, info): both sides prepared for ``runtime`` on the
    CPU and timed paired. ``info`` holds versions, settings and ``state``: "measured",
    or "not exportable" / "not compilable" / "unavailable" / "failed" with ``error``
    (then no entries). ``paired`` goes to time_paired (min_rounds, target_rel, ...).
    ``reference_runtime`` prepares the reference for another runtime instead (``"eager"``:
    the model under ``runtime`` against itself in eager, speedup = eager / runtime time).
    """
    info = runtime_info(runtime, threads, graph_optimization)
    batches = example_batches(inputs, batch_sizes, paired.get("seed", 0))
    old_threads = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)  # prepare (compile, first runs) as it will be timed
    try:
        sides = {}
        for name, module, rt in (("model", model, runtime),
                                 ("reference", reference, reference_runtime or runtime)):
            try:
                sides[name] = prepare(module, rt, batches, threads, graph_optimization,
                                      cache=name == "reference")
            except RuntimeUnavailable as exc:
                info.update(state=exc.state, error=f"{name}: {exc.message}")
                return None, info
        if runtime == "onnxruntime":
            info["opset"] = sides["model"].opset
        try:
            entries = time_paired(sides["model"], sides["reference"], inputs, batch_sizes,
                                  threads=threads, rounds=rounds, calls=calls, device="cpu",
                                  **paired)
        except Exception as exc:
            info.update(state="failed", error=_short(exc))
            return None, info
    finally:
        torch.set_num_threads(old_threads)
    info["state"] = "measured"
    return entries, info
