"""The method plugin contract.

A method is a subclass of :class:`Method`. The harness owns training,
fine-tuning, evaluation and measurement; a method only reshapes the model
(``prepare``), adds to the loss (``regularizer``), reacts to training progress
(``before_step``, ``on_epoch_end``) and produces the deployable model
(``compress``). Methods never import the runner or the reports.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

import torch
from pydantic import BaseModel, ConfigDict
from torch import Tensor, nn

Metric = Literal["params", "macs"]


class NotApplicableError(ValueError):
    """A method cannot reach a target on this model (e.g. nothing it can factorize enough).

    Raised from ``compress``; the harness records the cell as ``not_applicable``
    with ``reason`` and no metrics, never as a ranked row or a failure. A
    ValueError (the model given cannot be compressed so), so that
    :func:`bench.compress` callers catch every refusal as one.
    """

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


class NoParams(BaseModel):
    """Parameters of a method that takes none."""

    model_config = ConfigDict(extra="forbid")


@dataclass(frozen=True)
class Target:
    """A compression budget: keep at most ``ratio`` of the dense model's ``metric``."""

    metric: Metric
    ratio: float

    @property
    def label(self) -> str:
        return f"{self.metric}<={self.ratio:g}"

    def as_dict(self) -> dict[str, float]:
        return {self.metric: self.ratio}


@dataclass(frozen=True)
class Cost:
    """Params and MACs (per sample) of a model."""

    params: int
    macs: int

    def get(self, metric: Metric) -> int:
        return self.params if metric == "params" else self.macs


@dataclass
class MethodContext:
    """What a method may use. Built by the harness; methods only read it.

    ``calibration_batches`` yields training batches (for BN recalibration,
    activation statistics); ``val_batches`` yields the validation split, which is
    the only data a method may use for a search; ``measure`` counts params and
    MACs of a candidate model; ``dense_cost`` is the dense reference.
    """

    device: torch.device
    generator: torch.Generator
    seed: int
    calibration_batches: Callable[[], Iterator[tuple[Tensor, Tensor]]]
    val_batches: Callable[[], Iterator[tuple[Tensor, Tensor]]]
    measure: Callable[[nn.Module], Cost]
    dense_cost: Cost | None = None
    train_fn: Callable[..., Any] | None = None
    # A fresh, untrained model of the cell's architecture; keyword arguments
    # override the suite's model kwargs (e.g. a narrower width).
    build_model: Callable[..., nn.Module] | None = None
    input_shape: tuple[int, ...] = ()
    num_classes: int = 0
    logger: logging.Logger = field(default_factory=lambda: logging.getLogger("lowrank_bench"))
    phase: str = "train"  # "train", "finetune", or a method's own phase
    epoch: int = 0
    epochs: int = 0
    step: int = 0
    info: dict[str, Any] = field(default_factory=dict)
    # The suite's budgets ("train", "finetune": TrainBudget fields) and the size of
    # the training split, so a method can size a phase in the suite's own terms.
    budget: dict[str, dict[str, Any]] = field(default_factory=dict)
    train_size: int = 0
    # Ledger phases (bench.ledger) of the training run through ``train`` in this context.
    ledger: list[dict[str, Any]] = field(default_factory=list)

    def budget_met(self, model: nn.Module, target: Target, slack: float = 1e-9) -> bool:
        if self.dense_cost is None:
            raise RuntimeError("dense_cost is not set in this context")
        cost = self.measure(model)
        return cost.get(target.metric) <= target.ratio * self.dense_cost.get(target.metric) + slack

    def train(self, model: nn.Module, epochs: int | None = None, method: Method | None = None,
              phase: str = "method", *, steps: int | None = None,
              declared: dict[str, str] | None = None, **overrides: Any) -> Any:
        """Train ``model`` with the harness's loop under the suite's settings; ledger it.

        For methods that need training of their own inside ``compress``.
        ``phase="train"`` trains a model from scratch: it spends the suite's
        train budget and uses its settings. Any other phase (a regularization
        phase) uses the fine-tune settings and its steps come out of the
        fine-tune budget: the harness fine-tunes only for what is left.
        ``steps`` runs exactly that many optimizer steps (else ``epochs``, else
        the budget's epochs). ``overrides`` change settings (lr, weight_decay,
        schedule, warmup_epochs, ...); each one must be named in ``declared``
        ({setting: method parameter}) or the cell's ledger records a violation.
        ``method`` supplies regularizer/hooks.
        """
        from bench.ledger import CHARGED_TO, ledger_phase, phase_entry

        if self.train_fn is None:
            raise RuntimeError("this context has no training function")
        kind = ledger_phase(phase)
        settings = dict(self.budget.get(CHARGED_TO[kind], {}))
        settings.update(overrides)
        if epochs is not None or "epochs" not in settings:
            settings["epochs"] = epochs
        if steps is not None:
            settings["steps"] = steps
        stats = self.train_fn(model, method=method, phase=phase, **settings)
        if hasattr(stats, "optimizer"):
            self.ledger.append(phase_entry(kind, stats, declared))
        return stats

    def steps_per_epoch(self, budget: str = "finetune") -> int:
        """Optimizer steps of one epoch under the suite's ``budget`` ("train"/"finetune")."""
        if not self.budget or not self.train_size:
            raise RuntimeError("this context has no budget (ctx.budget / ctx.train_size)")
        return math.ceil(self.train_size / int(self.budget[budget]["batch_size"]))

    def budget_steps(self, budget: str = "finetune") -> int:
        """Optimizer steps of the suite's whole ``budget`` ("train"/"finetune")."""
        return int(self.budget[budget]["epochs"]) * self.steps_per_epoch(budget)

    def record(self, key: str, value: Any) -> None:
        """Store method-specific facts (chosen ranks, ...) in the cell's record."""
        self.info[key] = value


class Method:
    """Base class of every compression method.

    Class attributes a subclass sets:
      name: the short registered name (``svd``).
      kind: ``"post"`` compresses the trained dense baseline; ``"train"`` trains
        its own model from scratch after ``prepare`` and compresses that.
      Params: a pydantic model of the hyperparameters, validated from the suite.
      uses_target: False for methods that produce one model whatever the target
        (the ``dense`` reference row).
      needs_data: True for a method whose ``compress`` always trains on (or reads)
        the data; :func:`bench.compress` then refuses it without ``data`` up
        front, before any work (methods that read data only for some parameters
        are refused when they first ask for it).
      needs_build: for a method whose ``compress`` builds fresh models of the
        architecture (``ctx.build_model``, which the harness always sets), what
        the builder is called with; :func:`bench.compress` shows it when the
        caller gave no ``build=`` and none could be derived. Empty otherwise.
    """

    name: ClassVar[str] = ""
    kind: ClassVar[Literal["post", "train"]] = "post"
    Params: ClassVar[type[BaseModel]] = NoParams
    uses_target: ClassVar[bool] = True
    needs_data: ClassVar[bool] = False
    needs_build: ClassVar[str] = ""
    description: ClassVar[str] = ""
    # Settings of a "train" method's own training that a parameter sets, as
    # {setting: parameter name} (e.g. {"weight_decay": "weight_decay"}): the
    # budget ledger accepts a setting that differs from the suite's only so.
    declares: ClassVar[dict[str, str]] = {}

    def __init__(self, params: BaseModel | dict[str, Any] | None = None):
        if params is None or isinstance(params, dict):
            params = self.Params(**(params or {}))
        self.params = params

    def prepare(self, model: nn.Module, ctx: MethodContext) -> nn.Module:
        """Reparametrize a freshly built model before training (kind "train")."""
        return model

    def before_step(self, model: nn.Module, ctx: MethodContext) -> None:
        """Called before every training forward (e.g. to sample a sub-network)."""

    def regularizer(self, model: nn.Module, ctx: MethodContext) -> Tensor | None:
        """A term added to the training loss, or None."""
        return None

    def on_epoch_end(self, model: nn.Module, ctx: MethodContext) -> None:
        """Called after every epoch of training and of fine-tuning (see ctx.phase)."""

    def weight_decay(self, default: float) -> float:
        """Weight decay for this method's own training; the suite's by default.

        A method that returns anything else must declare the parameter that
        sets it in ``declares`` (the budget ledger flags it otherwise).
        """
        return default

    def uncompressed(self, model: nn.Module, ctx: MethodContext) -> nn.Module:
        """The deployable model of a cell with no target (the harness calls this, never
        ``compress``, then): the dense reference row, or a "train" method's own model at
        full size. The model itself by default; a method whose trained form is not plain
        modules (factors to merge, masks to drop) overrides it."""
        return model

    def compress(self, model: nn.Module, target: Target, ctx: MethodContext) -> nn.Module:
        """Return the deployable model meeting ``target``: plain modules only."""
        raise NotImplementedError("subclass must implement compress()")

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.params!r})"
