"""The method plugin contract.

A method is a subclass of :class:`Method`. The harness owns training,
fine-tuning, evaluation and measurement; a method only reshapes the model
(``prepare``), adds to the loss (``regularizer``), reacts to training progress
(``before_step``, ``on_epoch_end``) and produces the deployable model
(``compress``). Methods never import the runner or the reports.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

import torch
from pydantic import BaseModel, ConfigDict
from torch import Tensor, nn

Metric = Literal["params", "macs"]


class NotApplicableError(Exception):
    """A method cannot reach a target on this model (e.g. nothing it can factorize enough).

    Raised from ``compress``; the harness records the cell as ``not_applicable``
    with ``reason`` and no metrics, never as a ranked row or a failure.
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

    def budget_met(self, model: nn.Module, target: Target, slack: float = 1e-9) -> bool:
        if self.dense_cost is None:
            raise RuntimeError("dense_cost is not set in this context")
        cost = self.measure(model)
        return cost.get(target.metric) <= target.ratio * self.dense_cost.get(target.metric) + slack

    def train(self, model: nn.Module, epochs: int | None = None, method: Method | None = None,
              phase: str = "method", **overrides: Any) -> Any:
        """Train ``model`` with the harness's loop and the suite's training budget.

        For methods that need training of their own inside ``compress`` (a
        regularization phase, a smaller model trained from scratch): the loop,
        optimizer, schedule and data order stay the harness's, so the budget is
        the same for every method. ``method`` supplies regularizer/hooks.
        """
        if self.train_fn is None:
            raise RuntimeError("this context has no training function")
        return self.train_fn(model, epochs=epochs, method=method, phase=phase, **overrides)

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
    """

    name: ClassVar[str] = ""
    kind: ClassVar[Literal["post", "train"]] = "post"
    Params: ClassVar[type[BaseModel]] = NoParams
    uses_target: ClassVar[bool] = True
    description: ClassVar[str] = ""

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
        """Weight decay for this method's own training; the suite's by default."""
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
