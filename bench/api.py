"""Compress a model of your own with one call, outside the runner.

    import timm, torch, bench
    model = timm.create_model("resnet18", num_classes=10)
    result = bench.compress(model, "svd", macs=0.5, example_input=torch.randn(1, 3, 32, 32))

Post-training methods only: a "train" method (LoRITa, Maestro, Monarch from
scratch) owns the whole training run and needs the harness (a suite). Methods
that read data (a calibration pass, a search on the validation split, a
fine-tune inside ``compress``) get it from ``data``, a
:class:`bench.data.DataBundle` (``bench.data.load_dataset(...)``); without it
they stop with an error that says so. Methods that build fresh models of the
architecture (dense-small) get a builder from ``build=``, or one derived from
a timm model's architecture name when rebuilding it reproduces the model.
Every refusal is a ValueError (a method that cannot reach the budget on this
model raises :class:`bench.method.NotApplicableError`, a ValueError too).
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from bench.data import DataBundle
from bench.measure import measure_cost
from bench.method import Cost, Method, MethodContext, NotApplicableError, Target
from bench.plugins import get_method
from bench.train import train as run_training


@dataclass
class Compressed:
    """What :func:`compress` returns: the deployable model and what it cost."""

    model: nn.Module
    cost: Cost  # params and per-sample MACs of ``model``
    dense_cost: Cost  # the same of the input model
    info: dict[str, Any] = field(default_factory=dict)  # the method's facts (ranks, ...)
    method: Method | None = None  # the method instance (its fine-tuning hooks)
    context: MethodContext | None = None

    @property
    def macs_ratio(self) -> float:
        return self.cost.macs / self.dense_cost.macs

    @property
    def params_ratio(self) -> float:
        return self.cost.params / self.dense_cost.params


def _no_data_message(method: str, what: str) -> str:
    return (f"method '{method}' needs {what}; pass data=bench.data.load_dataset(...)"
            " (a DataBundle) to bench.compress")


def _no_data(method: str, what: str):
    def fail(*_: Any, **__: Any):
        raise ValueError(_no_data_message(method, what))
    return fail


def timm_builder(model: nn.Module, input_shape: tuple[int, ...]
                 ) -> tuple[Callable[..., nn.Module] | None, str]:
    """A builder of fresh ``model``s from its timm architecture name, or None and why not.

    Why: timm models carry their architecture name (``pretrained_cfg``) but not
    the constructor arguments they were made with, so the builder passes only
    what the model shows (classes, input channels, image size) and is trusted
    only if a fresh build without overrides has the same class, the same
    parameter and buffer names and shapes, and the same MACs as ``model``.
    Keyword arguments of the builder override the constructor's (as the
    harness's ``ctx.build_model`` does).
    """
    cfg = getattr(model, "pretrained_cfg", None) or getattr(model, "default_cfg", None)
    arch = cfg.get("architecture") if isinstance(cfg, dict) else None
    if not arch:
        return None, f"{type(model).__name__} carries no timm architecture name"
    import timm

    if not timm.is_model(arch):
        return None, f"'{arch}' is not a registered timm architecture"
    base: dict[str, Any] = {"pretrained": False, "in_chans": input_shape[0]}
    if isinstance(getattr(model, "num_classes", None), int):
        base["num_classes"] = model.num_classes
    img_size = getattr(getattr(model, "patch_embed", None), "img_size", None)
    if img_size is not None:
        base["img_size"] = img_size

    def build(**overrides: Any) -> nn.Module:
        return timm.create_model(arch, **{**base, **overrides})

    try:
        fresh = build()
    except Exception as e:  # noqa: BLE001 - any failure means "not rebuildable"
        return None, f"timm.create_model('{arch}') failed: {e}"

    def layout(m: nn.Module) -> list[tuple[str, tuple[int, ...]]]:
        return [(k, tuple(v.shape)) for k, v in m.state_dict().items()]

    if (type(fresh) is not type(model) or layout(fresh) != layout(model)
            or measure_cost(fresh, input_shape) != measure_cost(model, input_shape)):
        return None, (f"timm.create_model('{arch}') does not reproduce this model (it was "
                      "built with other arguments, or changed afterwards)")
    return build, ""


def _target(macs: float | None, params: float | None) -> Target:
    if (macs is None) == (params is None):
        raise ValueError("give exactly one budget: macs=<ratio> or params=<ratio> "
                         "(fraction of the input model's, in (0, 1])")
    metric, ratio = ("macs", macs) if macs is not None else ("params", params)
    if not 0 < float(ratio) <= 1:
        raise ValueError(f"{metric}={ratio} is not a fraction of the dense model in (0, 1]")
    return Target(metric, float(ratio))  # type: ignore[arg-type]


def compress(model: nn.Module, method: str, *, macs: float | None = None,
             params: float | None = None, example_input: Tensor | None = None,
             data: DataBundle | None = None, method_params: dict[str, Any] | None = None,
             build: Callable[..., nn.Module] | None = None,
             train: dict[str, Any] | None = None,
             seed: int = 0, inplace: bool = False) -> Compressed:
    """Compress ``model`` with a registered post-training ``method`` to a MACs or params budget.

    ``example_input`` (one batch, e.g. ``torch.randn(1, 3, 32, 32)``) gives the
    input shape for counting MACs; it may be left out when ``data`` is given.
    ``method_params`` are the method's own parameters (``lowrank-bench methods``
    lists them). The input model is copied unless ``inplace``.

    ``build``: for a method that builds fresh models of the architecture
    (dense-small), a callable returning a new untrained model; its keyword
    arguments are the method's (``Method.needs_build`` says which). Left out,
    a timm model is rebuilt from its architecture name when that reproduces it
    (:func:`timm_builder`). ``train``: settings of any training the method does
    inside ``compress`` (dense-small's from-scratch training, a regularization
    phase), as :class:`bench.suite.TrainBudget` fields; TrainBudget's defaults
    for the rest, and one epoch unless ``epochs`` is given.

    Refusals are ValueErrors that say what is missing, checked before any work
    where the method declares its needs (a builder first, then data, in one
    message when both are missing). A result over the budget is refused too
    (:class:`bench.method.NotApplicableError`, a ValueError): a method that
    cannot reach it on this model says so instead of returning a larger model.
    """
    from bench.suite import TrainBudget

    cls = get_method(method)
    if cls.kind == "train":
        raise ValueError(f"method '{method}' trains its own model from scratch (kind 'train'); "
                         "it needs the harness: list it in a suite and run `lowrank-bench run`")
    target = _target(macs, params)
    if example_input is not None:
        shape = tuple(example_input.shape[1:])
    elif data is not None:
        shape = data.input_shape
    else:
        raise ValueError("pass example_input (one batch) or data, to know the input shape")
    settings = TrainBudget(**(train or {})).model_dump()
    if "epochs" not in (train or {}):
        settings["epochs"] = 1
    if cls.needs_build and build is None:
        build, why_not = timm_builder(model, shape)
        if build is None:
            need = f"method '{method}' {cls.needs_build} (none derived: {why_not})"
            if cls.needs_data and data is None:
                need += (". It also needs data=bench.data.load_dataset(...) (a DataBundle) to "
                         "train on")
            raise ValueError(need)
    if cls.needs_data and data is None:
        raise ValueError(_no_data_message(method, "training data"))
    instance = cls(method_params or {})
    device = next(iter(model.parameters()), torch.zeros(())).device
    work = model if inplace else copy.deepcopy(model)
    work.eval()
    dense_cost = measure_cost(work, shape)
    gen = torch.Generator().manual_seed(seed)

    def train_fn(m, epochs=None, method=None, phase="method", **kw):
        kw = {**settings, **kw, **({"epochs": epochs} if epochs is not None else {})}
        return run_training(m, data, seed=seed + 2, method=method, ctx=ctx, phase=phase, **kw)

    ctx = MethodContext(
        device=device, generator=gen, seed=seed,
        calibration_batches=(lambda: data.batches("train", 64, shuffle=True,
                                                  generator=torch.Generator().manual_seed(seed)))
        if data is not None else _no_data(method, "training batches for calibration"),
        val_batches=(lambda: data.batches("val", 256)) if data is not None
        else _no_data(method, "the validation split for its search"),
        measure=lambda m: measure_cost(m, shape), dense_cost=dense_cost,
        train_fn=train_fn if data is not None else _no_data(method, "training data"),
        build_model=build, input_shape=shape,
        num_classes=data.num_classes if data is not None else 0)
    torch.manual_seed(seed)
    out = instance.compress(work, target, ctx)
    cost = measure_cost(out, shape)
    if cls.uses_target and not ctx.budget_met(out, target):
        ratio = cost.get(target.metric) / dense_cost.get(target.metric)
        raise NotApplicableError(
            f"method '{method}' reached {ratio:.3f} of the dense model's {target.metric} on "
            f"this {type(model).__name__}, over the budget {target.label}: it cannot compress "
            "this model that far (try a looser budget or another method)")
    return Compressed(out, cost, dense_cost, ctx.info, instance, ctx)


def finetune(result: Compressed, data: DataBundle, *, epochs: int, seed: int = 0,
             **budget: Any) -> Any:
    """Fine-tune a compressed model with the harness's loop and the method's hooks.

    ``budget`` takes the suite's ``finetune:`` fields (batch_size, optimizer,
    lr, weight_decay, ...). Methods with fine-tuning behaviour of their own
    (svd-accel's sequential freezing) apply it here as they do in a suite.
    """
    if result.context is None:
        raise ValueError("this result has no method context; make it with bench.compress")
    return run_training(result.model, data, seed=seed + 1, method=result.method,
                        ctx=result.context, phase="finetune", epochs=epochs, **budget)


class PairedTiming(dict):
    """``{"b<batch>": entry}`` as :func:`time_against` returns it, with the runtime's
    versions and settings in ``info``."""

    def __init__(self, entries: dict[str, Any], info: dict[str, Any]):
        super().__init__(entries)
        self.info = info


def time_against(model: nn.Module, reference: nn.Module, example_input: Tensor, *,
                 runtime: str = "eager", batch_sizes: list[int] | tuple[int, ...] | None = (1, 64),
                 threads: int = 1, rounds: int = 20, calls: int = 5, min_rounds: int = 8,
                 target_rel: float | None = 0.03, floor_rel: float = 0.02, warmup: int = 3,
                 graph_optimization: str = "all", seed: int = 0) -> PairedTiming:
    """Time ``model`` against ``reference`` on the CPU, paired and interleaved, under a runtime.

    The same timing a suite records (``metrics.latency_paired`` for eager,
    ``metrics.latency_paired_runtimes.<runtime>`` otherwise): both models
    prepared the same way (``"eager"``; ``"compile"``: ``torch.compile``,
    inductor, static shapes; ``"onnxruntime"``: exported with
    ``torch.onnx.export`` and run on onnxruntime's CPU provider with
    ``threads`` intra-op threads and the ``graph_optimization`` level
    ``disable``/``basic``/``extended``/``all``), in alternating ABBA rounds on
    the same random batch of ``example_input``'s per-sample shape at each of
    ``batch_sizes`` (``None``: ``example_input`` itself is the one batch).

    Returns ``{"b<batch>": entry}``; ``entry["speedup"]`` has ``median``,
    ``ci_low``/``ci_high`` (95%, bootstrap over ABBA blocks widened by
    ``floor_rel``), ``noisy`` and ``rounds``; ``entry["model"]`` and
    ``entry["reference"]`` the p50/p90 ms of each side. ``.info`` holds the
    runtime's versions and settings (opset, exporter, onnxruntime version,
    ...). A model the runtime cannot take raises
    :class:`bench.measure.runtimes.RuntimeUnavailable` (``.state``:
    "not exportable", "not compilable" or "unavailable"; ``.message``).

    Example::

        import torch, bench
        from torch import nn
        dense = nn.Sequential(nn.Linear(512, 512), nn.ReLU(), nn.Linear(512, 10))
        small = bench.compress(dense, "svd", macs=0.5,
                               example_input=torch.randn(1, 512)).model
        t = bench.time_against(small, dense, torch.randn(1, 512),
                               runtime="onnxruntime", batch_sizes=[1, 64], threads=1)
        s = t["b64"]["speedup"]
        print(f"{s['median']:.2f}x [{s['ci_low']:.2f}, {s['ci_high']:.2f}]", t.info["opset"])
    """
    from bench.measure.runtimes import RUNTIMES, RuntimeUnavailable, time_runtime

    if runtime not in RUNTIMES:
        raise ValueError(f"unknown runtime {runtime!r}; known: {', '.join(RUNTIMES)}")
    inputs: tuple[int, ...] | Tensor = (example_input.detach().to("cpu") if batch_sizes is None
                                        else tuple(example_input.shape[1:]))
    paired = {"rounds": rounds, "calls": calls, "min_rounds": min_rounds,
              "target_rel": target_rel, "floor_rel": floor_rel, "warmup": warmup, "seed": seed}
    if runtime == "eager":
        from bench.measure.paired import time_paired
        from bench.measure.runtimes import runtime_info

        entries = time_paired(model, reference, inputs, batch_sizes, threads=threads,
                              device="cpu", **paired)
        return PairedTiming(entries, {**runtime_info("eager", threads), "state": "measured"})
    entries, info = time_runtime(model, reference, inputs, batch_sizes, runtime,
                                 threads=threads, graph_optimization=graph_optimization,
                                 **paired)
    if entries is None:
        raise RuntimeUnavailable(runtime, info["state"], info.get("error", ""))
    return PairedTiming(entries, info)
