"""Run a suite: train each dense baseline once, run every method's cells, save records.

Work is grouped by (model, dataset, seed): the dense baseline is trained once
per group (and cached as a checkpoint), a "train" method is trained once per
(group, params) and serves all its targets. Each cell is compress ->
fine-tune -> evaluate -> measure -> one record. A failing cell becomes a
failed record and the suite goes on.
"""

from __future__ import annotations

import copy
import datetime as dt
import logging
import time
import traceback
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from bench.cells import Cell, expand
from bench.data import DataBundle, load_dataset
from bench.measure import environment, measure_cost, measure_deployable
from bench.method import Cost, Method, MethodContext
from bench.models import build_model
from bench.plugins import get_method
from bench.store import ResultStore
from bench.suite import Suite, TrainBudget
from bench.train import evaluate, train

log = logging.getLogger("lowrank_bench")


@dataclass
class RunSummary:
    total: int = 0
    skipped: int = 0
    ok: int = 0
    failed: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def computed(self) -> int:
        return self.ok + len(self.failed)


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def budget_kwargs(b: TrainBudget) -> dict[str, Any]:
    return b.model_dump()


def seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)


class GroupRunner:
    """Everything for one (model, dataset, seed): baseline, method trainings, cells."""

    def __init__(self, suite: Suite, store: ResultStore, data: DataBundle, device: torch.device,
                 suite_hash: str, say: Callable[[str], None]):
        self.suite, self.store, self.data, self.device = suite, store, data, device
        self.suite_hash, self.say = suite_hash, say
        self._baseline: tuple[nn.Module, float] | None = None
        self._trained: dict[str, tuple[nn.Module, float, dict]] = {}

    # -- models ------------------------------------------------------------
    def fresh_model(self, cell: Cell) -> nn.Module:
        seed_everything(cell.seed)
        m = cell.model
        return build_model(m.name, self.data.num_classes, self.data.in_chans, self.data.img_size,
                           kwargs=m.kwargs, stem=None if m.stem == "default" else m.stem,
                           checkpoint=m.checkpoint).to(self.device)

    def context(self, cell: Cell, dense_cost: Cost | None) -> MethodContext:
        gen = torch.Generator().manual_seed(cell.seed)
        bs = cell.train.batch_size
        shape = self.data.input_shape
        def train_fn(model, epochs=None, method=None, phase="method", **overrides):
            kw = {**budget_kwargs(cell.train), **overrides}
            if epochs is not None:
                kw["epochs"] = epochs
            return train(model, self.data, seed=cell.seed + 2, method=method, ctx=ctx,
                         phase=phase, **kw)

        ctx = MethodContext(
            device=self.device, generator=gen, seed=cell.seed, train_fn=train_fn,
            calibration_batches=lambda: self.data.batches(
                "train", bs, shuffle=True, generator=torch.Generator().manual_seed(cell.seed)),
            val_batches=lambda: self.data.batches("val", 256),
            measure=lambda model: measure_cost(model, shape),
            dense_cost=dense_cost, input_shape=shape, num_classes=self.data.num_classes,
            logger=log)
        return ctx

    def baseline(self, cell: Cell) -> tuple[nn.Module, float]:
        """The trained dense model of this group and its training seconds (cached)."""
        if self._baseline is not None:
            return self._baseline
        key = cell.baseline_key()
        model = self.fresh_model(cell)
        ckpt = self.store.load_checkpoint(key)
        if ckpt is not None:
            model.load_state_dict(ckpt["state_dict"])
            seconds = float(ckpt["seconds"])
            self.say(f"  dense baseline {cell.model.display}/{cell.dataset.display} "
                     f"seed={cell.seed}: cached checkpoint")
        else:
            self.say(f"  training dense baseline {cell.model.display}/{cell.dataset.display} "
                     f"seed={cell.seed} ({cell.train.epochs} epochs)")
            stats = train(model, self.data, seed=cell.seed, progress=self._epoch_printer(),
                          **budget_kwargs(cell.train))
            seconds = stats.seconds
            self.store.save_checkpoint(key, {"state_dict": model.state_dict(),
                                             "seconds": seconds, "history": stats.history})
        self._baseline = (model, seconds)
        return self._baseline

    def method_trained(self, cell: Cell, method: Method,
                       dense_cost: Cost) -> tuple[nn.Module, float, dict]:
        """A "train" method's own trained model (once per params), with its seconds and info."""
        key = cell.training_key()
        if key in self._trained:
            return self._trained[key]
        model = self.fresh_model(cell)
        ctx = self.context(cell, dense_cost)
        model = method.prepare(model, ctx).to(self.device)
        ckpt = self.store.load_checkpoint(key)
        if ckpt is not None:
            method_load_state(method, model, ckpt)
            seconds, info = float(ckpt["seconds"]), dict(ckpt.get("info", {}))
            self.say(f"  {cell.method_label}: cached trained model")
        else:
            self.say(f"  training {cell.method_label} on {cell.model.display}/"
                     f"{cell.dataset.display} seed={cell.seed} ({cell.train.epochs} epochs)")
            kw = budget_kwargs(cell.train)
            kw["weight_decay"] = method.weight_decay(kw["weight_decay"])
            stats = train(model, self.data, seed=cell.seed, method=method, ctx=ctx,
                          phase="train", progress=self._epoch_printer(), **kw)
            seconds, info = stats.seconds, dict(ctx.info)
            self.store.save_checkpoint(key, {"state_dict": model.state_dict(),
                                             "seconds": seconds, "info": info,
                                             "method_state": method_state(method, model)})
        self._trained[key] = (model, seconds, info)
        return self._trained[key]

    def _epoch_printer(self) -> Callable[[dict], None]:
        def show(row: dict) -> None:
            log.debug("    epoch %d loss %.4f train_acc %.4f", row["epoch"], row["loss"],
                      row["train_acc"])
        return show

    # -- one cell ----------------------------------------------------------
    def run_cell(self, cell: Cell) -> dict:
        started = time.perf_counter()
        base_model, base_seconds = self.baseline(cell)
        dense_cost = measure_cost(base_model, self.data.input_shape)
        method = get_method(cell.method)(cell.params)
        cost: dict[str, float] = {"baseline_train_s": base_seconds, "method_train_s": 0.0}
        info: dict = {}
        if method.kind == "train":
            source, cost["method_train_s"], info = self.method_trained(cell, method, dense_cost)
        else:
            source = base_model
        ctx = self.context(cell, dense_cost)
        ctx.info.update(info)
        model = copy.deepcopy(source)
        t0 = time.perf_counter()
        seed_everything(cell.seed)
        model = method.compress(model, cell.target_obj, ctx).to(self.device)
        cost["compress_s"] = time.perf_counter() - t0
        ft_seconds = 0.0
        if cell.target is not None and cell.finetune.epochs > 0:
            stats = train(model, self.data, seed=cell.seed + 1, method=method, ctx=ctx,
                          phase="finetune", **budget_kwargs(cell.finetune))
            ft_seconds = stats.seconds
        cost["finetune_s"] = ft_seconds
        t0 = time.perf_counter()
        test = evaluate(model, self.data, "test")
        val = evaluate(model, self.data, "val")
        cost["eval_s"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        metrics = self.measure(model, cell, dense_cost)
        cost["measure_s"] = time.perf_counter() - t0
        metrics.update(top1=test["top1"], top5=test.get("top5"), test_loss=test["loss"],
                       val_top1=val["top1"])
        cost["cell_s"] = time.perf_counter() - started
        return self.record(cell, "ok", metrics=metrics, cost=cost, method_info=ctx.info)

    def measure(self, model: nn.Module, cell: Cell, dense_cost: Cost) -> dict[str, Any]:
        """All figures of the deployable model: see bench.measure.measure_deployable."""
        return measure_deployable(model, self.data.input_shape, cell.latency, dense_cost,
                                  cell.target_obj)

    def record(self, cell: Cell, status: str, **extra: Any) -> dict:
        return {
            "cell_id": cell.id, "status": status, "suite": self.suite.name,
            "suite_hash": self.suite_hash,
            "model": cell.model.display, "dataset": cell.dataset.display, "seed": cell.seed,
            "method": cell.method_label, "method_name": cell.method, "params": cell.params,
            "target": cell.target, "target_label": cell.target_label,
            "cell": cell.model_dump(mode="json"),
            "data_info": self.data.info,
            "env": environment(self.suite_hash),
            "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            **extra,
        }

    def failed_record(self, cell: Cell, exc: BaseException) -> dict:
        return self.record(cell, "failed", error={
            "type": type(exc).__name__, "message": str(exc),
            "traceback": traceback.format_exc()})


def method_state(method: Method, model: nn.Module) -> dict:
    getter = getattr(method, "state_for_checkpoint", None)
    return getter(model) if getter else {}


def method_load_state(method: Method, model: nn.Module, ckpt: dict) -> None:
    setter = getattr(method, "load_from_checkpoint", None)
    if setter:
        setter(model, ckpt)
    else:
        model.load_state_dict(ckpt["state_dict"])


def group_cells(cells: list[Cell]) -> OrderedDict[tuple, list[Cell]]:
    groups: OrderedDict[tuple, list[Cell]] = OrderedDict()
    for c in cells:
        groups.setdefault(c.group_key(), []).append(c)
    return groups


def run_suite(suite: Suite, results_dir: str | Path, *, device: torch.device | None = None,
              data_root: str | None = None, retry_failed: bool = False,
              say: Callable[[str], None] = print) -> RunSummary:
    """Run every cell that has no record yet; return counts."""
    started = time.perf_counter()
    store = ResultStore(results_dir)
    cells = expand(suite)
    summary = RunSummary(total=len(cells))
    todo = [c for c in cells if not store.is_done(c.id, retry_failed)]
    summary.skipped = len(cells) - len(todo)
    if not todo:
        say(f"suite '{suite.name}': all {len(cells)} cells already have records; "
            "nothing to recompute")
        return summary
    say(f"suite '{suite.name}': {len(todo)} of {len(cells)} cells to run "
        f"({summary.skipped} already done)")
    device = device or default_device()
    suite_hash = suite.hash()
    datasets: dict[str, DataBundle] = {}
    done = 0
    for group in group_cells(todo).values():
        first = group[0]
        dkey = first.dataset.model_dump_json()
        if dkey not in datasets:
            datasets[dkey] = load_dataset(first.dataset.name, first.dataset.options, data_root)
        runner = GroupRunner(suite, store, datasets[dkey], device, suite_hash, say)
        for cell in group:
            done += 1
            t0 = time.perf_counter()
            try:
                record = runner.run_cell(cell)
                summary.ok += 1
                m = record["metrics"]
                say(f"[{done}/{len(todo)}] {cell.describe()}: top1 {m['top1']:.4f} "
                    f"params x{m['params_ratio']:.3f} macs x{m['macs_ratio']:.3f} "
                    f"({time.perf_counter() - t0:.1f}s)")
            except Exception as exc:  # recorded, and the suite goes on
                record = runner.failed_record(cell, exc)
                summary.failed.append(cell.describe())
                say(f"[{done}/{len(todo)}] {cell.describe()}: FAILED "
                    f"{type(exc).__name__}: {exc}")
            store.save(record)
    summary.seconds = time.perf_counter() - started
    return summary
