"""The models a group shares: built, trained once, cached as checkpoints.

A group is one (model, dataset, seed). Its dense baseline is trained once and
serves every post-training method; a "train" method's own model is trained
once per parameter set and serves all its targets. A stage that fails is
remembered, so the other cells of the group fail at once instead of retraining.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from bench.atomic import exclusive_lock
from bench.cells import Cell
from bench.data import DataBundle
from bench.ledger import cell_budgets, phase_entry, planned_phase
from bench.measure import measure_cost
from bench.measure.fingerprint import weights_digest
from bench.method import Cost, Method, MethodContext
from bench.models import build_model
from bench.progress import EpochBar
from bench.run.errors import StageFailedError
from bench.store import ResultStore
from bench.suite import TrainBudget
from bench.train import train

log = logging.getLogger("lowrank_bench")


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def budget_kwargs(b: TrainBudget) -> dict[str, Any]:
    return b.model_dump()


def seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)


def method_state(method: Method, model: nn.Module) -> dict:
    getter = getattr(method, "state_for_checkpoint", None)
    return getter(model) if getter else {}


def method_load_state(method: Method, model: nn.Module, ckpt: dict) -> None:
    setter = getattr(method, "load_from_checkpoint", None)
    if setter:
        setter(model, ckpt)
    else:
        model.load_state_dict(ckpt["state_dict"])


class GroupStages:
    """Baseline, method trainings and method contexts of one (model, dataset, seed)."""

    def __init__(self, store: ResultStore, data: DataBundle, device: torch.device,
                 say: Callable[[str], None]):
        self.store, self.data, self.device, self.say = store, data, device, say
        self._baseline: tuple[nn.Module, float] | None = None
        self._trained: dict[str, tuple[nn.Module, float, dict]] = {}
        # ledger phase (bench.ledger) of the baseline and of each method training
        self.phases: dict[str, dict] = {}
        self._failed: dict[str, tuple[str, BaseException]] = {}  # stage key -> (what, error)
        self._dense_cost: Cost | None = None
        self.work_s = 0.0  # seconds of training done here
        self.epoch_bars = False  # draw tqdm epoch bars (only in the driver's own process)
        self.sink: Callable[[str], None] | None = None  # the current cell's log

    # -- models ------------------------------------------------------------
    def fresh_model(self, cell: Cell) -> nn.Module:
        """The cell's architecture, freshly initialised from its seed, on the device."""
        seed_everything(cell.seed)
        m = cell.model
        return build_model(m.name, self.data.num_classes, self.data.in_chans, self.data.img_size,
                           kwargs=m.kwargs, stem=None if m.stem == "default" else m.stem,
                           checkpoint=m.checkpoint).to(self.device)

    def context(self, cell: Cell, dense_cost: Cost | None) -> MethodContext:
        """What a method may use for this cell (see bench.method.MethodContext)."""
        gen = torch.Generator().manual_seed(cell.seed)
        bs = cell.train.batch_size
        shape = self.data.input_shape

        def train_fn(model, epochs=None, method=None, phase="method", **overrides):
            kw = {**budget_kwargs(cell.train), **overrides}
            if epochs is not None:
                kw["epochs"] = epochs
            return train(model, self.data, seed=cell.seed + 2, method=method, ctx=ctx,
                         phase=phase, **kw)

        def build_fn(**overrides: Any) -> nn.Module:
            m = cell.model
            return build_model(m.name, self.data.num_classes, self.data.in_chans,
                               self.data.img_size, kwargs={**m.kwargs, **overrides},
                               stem=None if m.stem == "default" else m.stem).to(self.device)

        ctx = MethodContext(
            device=self.device, generator=gen, seed=cell.seed, train_fn=train_fn,
            build_model=build_fn,
            calibration_batches=lambda: self.data.batches(
                "train", bs, shuffle=True, generator=torch.Generator().manual_seed(cell.seed)),
            val_batches=lambda: self.data.batches("val", 256),
            measure=lambda model: measure_cost(model, shape),
            dense_cost=dense_cost, input_shape=shape, num_classes=self.data.num_classes,
            logger=log, budget=cell_budgets(cell), train_size=len(self.data.train))
        return ctx

    def epochs_bar(self, desc: str, epochs: int) -> EpochBar:
        return EpochBar(desc, epochs, sink=self.sink, enabled=None if self.epoch_bars else False)

    def _once(self, key: str, what: str, build: Callable[[], Any]) -> Any:
        """Run a shared stage once; if it failed, fail later cells at once without rerunning."""
        if key in self._failed:
            name, exc = self._failed[key]
            raise StageFailedError(f"{name} failed earlier in this group: "
                                   f"{type(exc).__name__}: {exc}") from exc
        try:
            return build()
        except Exception as exc:
            self._failed[key] = (what, exc)
            raise

    def dense_cost(self, cell: Cell) -> Cost:
        """Params/MACs of the dense model: the architecture's, trained or not."""
        if self._dense_cost is None:
            model = self._baseline[0] if self._baseline is not None else self.fresh_model(cell)
            self._dense_cost = measure_cost(model, self.data.input_shape)
        return self._dense_cost

    # -- the dense baseline ------------------------------------------------
    def baseline(self, cell: Cell) -> tuple[nn.Module, float]:
        """The trained dense model of this group and its training seconds (cached).

        A failure is cached too: every cell of the group fails with it, once.
        """
        if self._baseline is not None:
            return self._baseline
        return self._once(cell.baseline_key(), "dense baseline",
                          lambda: self._load_or_train_baseline(cell))

    def _load_or_train_baseline(self, cell: Cell) -> tuple[nn.Module, float]:
        key = cell.baseline_key()
        model = self.fresh_model(cell)
        label = f"{cell.model.display}/{cell.dataset.display} seed={cell.seed}"
        ckpt = self.store.load_checkpoint(key)
        if ckpt is None:  # trained by whoever takes the lock first; the others load it
            with exclusive_lock(self.store.checkpoint_path(key), on_wait=lambda: self.say(
                    f"  dense baseline {label}: being trained by another worker, waiting")):
                ckpt = self.store.load_checkpoint(key)
                if ckpt is None:
                    failed = self.store.baseline_failure(key)
                    if failed is not None:  # another unit of this run tried: its error stands
                        raise StageFailedError(f"dense baseline failed in another unit of this "
                                               f"run: {failed}")
                    try:
                        return self._train_baseline(cell, model, label)
                    except Exception as exc:
                        self.store.record_baseline_failure(key, f"{type(exc).__name__}: {exc}")
                        raise
        model.load_state_dict(ckpt["state_dict"])
        phase = ckpt.get("ledger_phase") or planned_phase(
            "pretrain", cell.train.model_dump(), len(self.data.train))
        self.say(f"  dense baseline {label}: cached checkpoint")
        return self._keep_baseline(key, model, float(ckpt["seconds"]), phase)

    def _train_baseline(self, cell: Cell, model: nn.Module, label: str
                        ) -> tuple[nn.Module, float]:
        self.say(f"  training dense baseline {label} ({cell.train.epochs} epochs)")
        with self.epochs_bar(f"dense {cell.model.display}", cell.train.epochs) as bar:
            stats = train(model, self.data, seed=cell.seed, progress=bar,
                          **budget_kwargs(cell.train))
        phase = phase_entry("pretrain", stats)
        self.work_s += stats.seconds
        self.store.save_checkpoint(cell.baseline_key(), {
            "state_dict": model.state_dict(), "seconds": stats.seconds,
            "history": stats.history, "ledger_phase": phase})
        return self._keep_baseline(cell.baseline_key(), model, stats.seconds, phase)

    def _keep_baseline(self, key: str, model: nn.Module, seconds: float, phase: dict
                       ) -> tuple[nn.Module, float]:
        # which trained dense model this is: every row of the group names it in its ledger
        self.phases[key] = {**phase, "weights": weights_digest(model)}
        self._baseline = (model, seconds)
        return self._baseline

    # -- a "train" method's own model --------------------------------------
    def method_trained(self, cell: Cell, method: Method,
                       dense_cost: Cost) -> tuple[nn.Module, float, dict]:
        """A "train" method's own trained model (once per params), with its seconds and info."""
        key = cell.training_key()
        if key in self._trained:
            return self._trained[key]
        return self._once(key, f"training of {cell.method_label}",
                          lambda: self._load_or_train_method(cell, method, dense_cost))

    def _load_or_train_method(self, cell: Cell, method: Method,
                              dense_cost: Cost) -> tuple[nn.Module, float, dict]:
        key = cell.training_key()
        model = self.fresh_model(cell)
        ctx = self.context(cell, dense_cost)
        model = method.prepare(model, ctx).to(self.device)
        ckpt = self.store.load_checkpoint(key)
        if ckpt is not None:
            method_load_state(method, model, ckpt)
            seconds, info = float(ckpt["seconds"]), dict(ckpt.get("info", {}))
            phase = ckpt.get("ledger_phase") or planned_phase(
                "method_train", cell.train.model_dump(), len(self.data.train))
            self.say(f"  {cell.method_label}: cached trained model")
        else:
            self.say(f"  training {cell.method_label} on {cell.model.display}/"
                     f"{cell.dataset.display} seed={cell.seed} ({cell.train.epochs} epochs)")
            kw = budget_kwargs(cell.train)
            kw["weight_decay"] = method.weight_decay(kw["weight_decay"])
            with self.epochs_bar(cell.method_label, cell.train.epochs) as bar:
                stats = train(model, self.data, seed=cell.seed, method=method, ctx=ctx,
                              phase="train", progress=bar, **kw)
            seconds, info = stats.seconds, dict(ctx.info)
            phase = phase_entry("method_train", stats, method.declares)
            self.work_s += seconds
            self.store.save_checkpoint(key, {"state_dict": model.state_dict(),
                                             "seconds": seconds, "info": info,
                                             "method_state": method_state(method, model),
                                             "ledger_phase": phase})
        self.phases[key] = phase
        self._trained[key] = (model, seconds, info)
        return self._trained[key]
