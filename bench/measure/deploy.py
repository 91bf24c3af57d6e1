"""One front door for measuring a deployable model: counts, latency, memory, size.

``measure_deployable`` returns the ``metrics`` part of a result record. Keys the
reports rely on (params, macs, flops, ratios, dense figures, budget, latency
cpu/cuda by batch) keep their meaning; everything else is added beside them.
Given a reference model (the dense architecture), it adds the paired timing
against it (``latency_paired``, see bench.measure.paired) and the per-layer-type
time breakdown of both (``latency_breakdown``, see bench.measure.breakdown).
"""

from __future__ import annotations

import copy
import logging
from typing import Any, Protocol

import torch
from torch import nn

from bench.measure.breakdown import profile_breakdown
from bench.measure.counting import count_params, mac_report
from bench.measure.latency import time_model
from bench.measure.paired import DEFAULT_CALLS, DEFAULT_ROUNDS, time_paired
from bench.measure.size import safetensors_bytes, tensor_bytes
from bench.method import Cost, Target

log = logging.getLogger("lowrank_bench")

# the figures measure_deployable takes by timing; everything else it counts
TIMING_KEYS: tuple[str, ...] = (
    "latency", "cuda_status", "latency_paired", "latency_paired_runtimes", "runtime_info",
    "runtime_vs_eager", "latency_breakdown", "cpu_peak_rss_mb_approx", "cuda_peak_mem_mb")


class LatencySettings(Protocol):
    """What timing needs from a suite's ``latency`` block (bench.suite.LatencySpec)."""

    batch_sizes: tuple[int, ...]
    threads: int
    warmup: int
    min_runs: int
    min_seconds: float
    cuda: str


def _timing_kwargs(spec: LatencySettings) -> dict[str, Any]:
    return {"warmup": spec.warmup, "min_runs": spec.min_runs, "min_seconds": spec.min_seconds,
            "max_runs": getattr(spec, "max_runs", 10_000)}


def _variants(spec: LatencySettings, input_shape: tuple[int, ...]) -> list[tuple[str, dict]]:
    """(record key suffix, time_model kwargs) for eager and each requested variant."""
    out: list[tuple[str, dict]] = [("", {})]
    if getattr(spec, "channels_last", False):
        out.append(("_channels_last", {"channels_last": True}))
    if getattr(spec, "compile", False):
        out.append(("_compile", {"compile": True,
                                 "compile_backend": getattr(spec, "compile_backend", "inductor")}))
    return out


def time_all(model: nn.Module, input_shape: tuple[int, ...], spec: LatencySettings,
             device: str) -> dict[str, Any]:
    """``{device[_variant]: {b<batch>: summary}}``; a failing variant records its error."""
    threads = spec.threads if device == "cpu" else None
    out: dict[str, Any] = {}
    for suffix, kw in _variants(spec, input_shape):
        if kw.get("channels_last") and len(input_shape) != 3:
            out[f"{device}{suffix}"] = {"skipped": f"input {input_shape} is not an image (C,H,W)"}
            continue
        by_batch: dict[str, Any] = {}
        largest = max(spec.batch_sizes)
        for bs in spec.batch_sizes:
            try:  # peak memory at the largest batch only: each reading costs a full GC
                lat = time_model(model, input_shape, bs, device, threads=threads,
                                 track_memory=bs == largest, **_timing_kwargs(spec), **kw)
                by_batch[f"b{bs}"] = lat.summary()
            except Exception as exc:
                if not suffix:
                    raise
                log.warning("latency variant %s%s b%d failed: %s", device, suffix, bs, exc)
                by_batch[f"b{bs}"] = {"error": f"{type(exc).__name__}: {exc}"}
        out[f"{device}{suffix}"] = by_batch
    return out


def paired_all(model: nn.Module, reference: nn.Module, input_shape: tuple[int, ...],
               spec: LatencySettings, device: str) -> dict[str, Any]:
    """``{b<batch>: entry}``: copies of both models (fresh every few blocks) in ABBA rounds."""
    return time_paired(model, reference, input_shape,
                       spec.batch_sizes, threads=spec.threads if device == "cpu" else None,
                       rounds=getattr(spec, "paired_rounds", DEFAULT_ROUNDS),
                       calls=getattr(spec, "paired_calls", DEFAULT_CALLS),
                       min_rounds=getattr(spec, "paired_min_rounds", None),
                       target_rel=getattr(spec, "paired_target_rel", None),
                       floor_rel=getattr(spec, "paired_floor_rel", 0.0),
                       warmup=spec.warmup, device=device)


def runtimes_all(model: nn.Module, reference: nn.Module, input_shape: tuple[int, ...],
                 spec: LatencySettings, reference_runtime: str | None = None,
                 only: tuple[str, ...] | None = None) -> tuple[dict[str, Any], dict[str, Any]]:
    """(``{runtime: {b<batch>: entry}}``, ``{runtime: info}``) for each non-eager runtime
    of the suite (or of ``only``), timed paired on the CPU like eager; a runtime that
    cannot take the model has an info with its state and error and no entries.
    ``reference_runtime="eager"`` keeps the reference in eager (see time_runtime)."""
    from bench.measure.runtimes import time_runtime

    entries: dict[str, Any] = {}
    infos: dict[str, Any] = {}
    for runtime in getattr(spec, "runtimes", ("eager",)):
        if runtime == "eager" or (only is not None and runtime not in only):
            continue
        got, info = time_runtime(
            model, reference, input_shape, spec.batch_sizes, runtime, threads=spec.threads,
            graph_optimization=getattr(spec, "ort_graph_optimization", "all"),
            rounds=getattr(spec, "paired_rounds", DEFAULT_ROUNDS),
            calls=getattr(spec, "paired_calls", DEFAULT_CALLS),
            min_rounds=getattr(spec, "paired_min_rounds", None),
            target_rel=getattr(spec, "paired_target_rel", None),
            floor_rel=getattr(spec, "paired_floor_rel", 0.0), warmup=spec.warmup,
            reference_runtime=reference_runtime)
        if got is None:
            log.warning("runtime %s: %s: %s", runtime, info.get("state"), info.get("error"))
        else:
            entries[runtime] = got
        infos[runtime] = info
    return entries, infos


def vs_eager_all(model: nn.Module, input_shape: tuple[int, ...], spec: LatencySettings,
                 infos: dict[str, Any]) -> dict[str, Any]:
    """``{runtime: {b<batch>: entry}}``: ``model`` under each runtime whose self-pair was
    measured (per ``infos``, updated with ``vs_eager_state``/``vs_eager_error``), paired
    against the same model in eager."""
    measured = tuple(rt for rt, info in infos.items() if info.get("state") == "measured")
    entries, got = runtimes_all(model, model, input_shape, spec, reference_runtime="eager",
                                only=measured)
    for rt, info in got.items():
        infos[rt]["vs_eager_state"] = info.get("state")
        if info.get("error"):
            infos[rt]["vs_eager_error"] = info["error"]
    return entries


def breakdown_pair(model: nn.Module, reference: nn.Module, input_shape: tuple[int, ...],
                   threads: int) -> dict[str, Any]:
    """``{"model": categories, "reference": categories}`` at batch 1 on CPU (copies)."""
    return {name: profile_breakdown(copy.deepcopy(m).to("cpu"), input_shape, batch_size=1,
                                    threads=threads).record()
            for name, m in (("model", model), ("reference", reference))}


def _max_of(latency: dict[str, Any], key: str, field: str) -> float | None:
    values = [s.get(field) for s in (latency.get(key) or {}).values() if isinstance(s, dict)]
    values = [v for v in values if v is not None]
    return max(values) if values else None


def measure_deployable(model: nn.Module, input_shape: tuple[int, ...],
                       latency_spec: LatencySettings, dense_cost: Cost,
                       target: Target | None,
                       reference: nn.Module | None = None,
                       runtime_vs_eager: bool = False,
                       timed: dict[str, Any] | None = None) -> dict[str, Any]:
    """All measurements of a deployable model, as the ``metrics`` of its record.

    MACs from both counters (with uncounted ops and per-layer own MACs), ratios
    against ``dense_cost``, the budget verdict for ``target``, CPU latency at
    each batch size (plus requested variants), CUDA latency and peak memory when
    a GPU is present and enabled, approximate CPU peak RSS, safetensors size.
    With a ``reference`` (the dense architecture; a deep copy of the model for
    the dense row itself, which makes its entry an A/A check): ``latency_paired``
    per measured device (``cpu``, and ``cuda`` when timed) and
    ``latency_breakdown``; with non-eager ``runtimes`` in the spec,
    ``latency_paired_runtimes`` (``{runtime: {b<batch>: entry}}``, CPU) and
    ``runtime_info`` (versions, settings, state and error per runtime; see
    bench.measure.runtimes). With ``runtime_vs_eager`` (the dense reference row) also
    ``runtime_vs_eager`` (``{runtime: {b<batch>: entry}}``): the model prepared for each
    runtime the self-pair measured, paired against itself in eager (speedup = eager
    time / runtime time; ``model`` is the runtime side, ``reference`` the eager one),
    with ``vs_eager_state`` (and ``vs_eager_error``) in that runtime's
    ``runtime_info``. Neither model passed in is moved or modified.

    ``timed`` (the :data:`TIMING_KEYS` of a record of the same architecture, timed on
    this machine) replaces all timing: only the counts and size are taken here.
    """
    params = count_params(model)
    macs = mac_report(model, input_shape)
    out: dict[str, Any] = {
        "params": params, "macs": macs["macs"], "flops": macs["flops"],
        "dense_params": dense_cost.params, "dense_macs": dense_cost.macs,
        "params_ratio": params / dense_cost.params,
        "macs_ratio": macs["macs"] / dense_cost.macs,
        **{k: v for k, v in macs.items() if k not in ("macs", "flops")},
    }
    if target is not None:
        achieved = out[f"{target.metric}_ratio"]
        out["budget"] = {"metric": target.metric, "ratio": target.ratio, "achieved": achieved,
                         "met": achieved <= target.ratio + 1e-9,
                         "over_by": max(0.0, achieved - target.ratio)}
    cpu_model = copy.deepcopy(model).to("cpu")
    if timed is not None:
        out.update(copy.deepcopy(timed))
    else:
        out.update(_timed(model, cpu_model, input_shape, latency_spec, reference,
                          runtime_vs_eager))
    out["size_bytes"] = safetensors_bytes(cpu_model)
    out["size_tensor_bytes"] = tensor_bytes(cpu_model)
    out["param_count_check"] = count_params(cpu_model)
    return out


def _timed(model: nn.Module, cpu_model: nn.Module, input_shape: tuple[int, ...],
           latency_spec: LatencySettings, reference: nn.Module | None,
           runtime_vs_eager: bool) -> dict[str, Any]:
    """The :data:`TIMING_KEYS` of measure_deployable, measured."""
    out: dict[str, Any] = {}
    latency = time_all(cpu_model, input_shape, latency_spec, "cpu")
    if latency_spec.cuda == "auto" and torch.cuda.is_available():
        gpu_model = copy.deepcopy(model).to("cuda")
        latency.update(time_all(gpu_model, input_shape, latency_spec, "cuda"))
        out["cuda_status"] = "measured"
    else:
        latency["cuda"] = None
        out["cuda_status"] = ("n/a: disabled in the suite" if latency_spec.cuda == "off"
                              else "n/a: no CUDA device")
    out["latency"] = latency
    if reference is not None:
        devices = ["cpu"] + (["cuda"] if out["cuda_status"] == "measured" else [])
        out["latency_paired"] = {d: paired_all(model, reference, input_shape, latency_spec, d)
                                 for d in devices}
        if any(r != "eager" for r in getattr(latency_spec, "runtimes", ("eager",))):
            entries, infos = runtimes_all(model, reference, input_shape, latency_spec)
            out["latency_paired_runtimes"] = entries
            out["runtime_info"] = infos
            if runtime_vs_eager:
                out["runtime_vs_eager"] = vs_eager_all(model, input_shape, latency_spec, infos)
        out["latency_breakdown"] = breakdown_pair(model, reference, input_shape,
                                                  latency_spec.threads)
    out["cpu_peak_rss_mb_approx"] = _max_of(latency, "cpu", "cpu_peak_rss_delta_mb_approx")
    out["cuda_peak_mem_mb"] = _max_of(latency, "cuda", "cuda_peak_mem_mb")
    return out
