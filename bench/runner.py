"""Run a suite: train each dense baseline once, run every method's cells, save records.

Work is grouped by (model, dataset, seed): the dense baseline is trained once
per group (and cached as a checkpoint), a "train" method is trained once per
(group, params) and serves all its targets. Each cell is compress ->
fine-tune -> evaluate -> measure -> one record. A failing cell becomes a
failed record and the suite goes on.

Groups are the unit an executor sends to a worker (bench.executors): the
post-training methods of a (model, dataset, seed) share its dense baseline, and
each "train" method's params get a group of their own (its training serves all
its targets and needs no dense baseline). Each group is locked in the results
directory while a run owns it, so two runs on one directory share the work.
With parallel executors the workers leave cells *pending* (trained, evaluated,
counted) and the driver times them alone afterwards.
"""

from __future__ import annotations

import copy
import datetime as dt
import logging
import os
import time
import traceback
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from bench.cells import Cell, content_hash, expand
from bench.data import DataBundle, load_dataset
from bench.executors import Event, Executor, GroupTask, make_executor
from bench.measure import environment, measure_cost, measure_deployable
from bench.method import Cost, Method, MethodContext
from bench.models import build_model
from bench.plugins import get_method
from bench.progress import CellLog, EpochBar, SuiteProgress
from bench.store import Locked, ResultStore
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
    failures: list[dict] = field(default_factory=list)  # cell, error type, message
    work_s: float = 0.0  # training, compression, evaluation and measurement, summed
    executor: str = "serial"
    jobs: int = 1
    timing_phase_s: float = 0.0  # wall seconds of the driver's timing phase(s)
    busy_s: dict[int, float] = field(default_factory=dict)  # work seconds per worker pid

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


class StageFailedError(RuntimeError):
    """A shared stage of a group (dense baseline, a method's training) failed earlier.

    The first cell that needed it holds the original traceback; the other cells
    of the group fail with this error at once instead of retraining.
    """


class WorkerDiedError(RuntimeError):
    """The process running a cell died (killed, out of memory, crashed in native code)."""


class TimingHandoffError(RuntimeError):
    """A compressed model could not be handed to the driver's timing phase."""


@dataclass
class PendingCell:
    """A cell trained, compressed, fine-tuned and evaluated; only measurement is left."""

    cell: Cell
    model: nn.Module
    dense_cost: Cost
    cost: dict[str, float]
    evals: dict[str, Any]
    info: dict[str, Any]

    def payload(self) -> dict:
        return {"cell_id": self.cell.id, "cell": self.cell.model_dump(mode="json"),
                "model": self.model, "dense_cost": [self.dense_cost.params, self.dense_cost.macs],
                "cost": self.cost, "evals": self.evals, "info": self.info}

    @classmethod
    def from_payload(cls, cell: Cell, payload: dict) -> PendingCell:
        params, macs = payload["dense_cost"]
        return cls(cell, payload["model"], Cost(int(params), int(macs)), dict(payload["cost"]),
                   dict(payload["evals"]), dict(payload["info"]))


class GroupRunner:
    """Everything for one (model, dataset, seed): baseline, method trainings, cells."""

    def __init__(self, suite: Suite, store: ResultStore, data: DataBundle, device: torch.device,
                 suite_hash: str, say: Callable[[str], None]):
        self.suite, self.store, self.data, self.device = suite, store, data, device
        self.suite_hash, self.say = suite_hash, say
        self._baseline: tuple[nn.Module, float] | None = None
        self._trained: dict[str, tuple[nn.Module, float, dict]] = {}
        self._failed: dict[str, tuple[str, BaseException]] = {}  # stage key -> (what, error)
        self._dense_cost: Cost | None = None
        self.work_s = 0.0  # seconds of training/compression/evaluation/measurement done here
        self.epoch_bars = False  # draw tqdm epoch bars (only in the driver's own process)
        self.sink: Callable[[str], None] | None = None  # the current cell's log

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
            logger=log)
        return ctx

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

    def _epochs(self, desc: str, epochs: int) -> EpochBar:
        return EpochBar(desc, epochs, sink=self.sink, enabled=None if self.epoch_bars else False)

    def dense_cost(self, cell: Cell) -> Cost:
        """Params/MACs of the dense model: the architecture's, trained or not."""
        if self._dense_cost is None:
            model = self._baseline[0] if self._baseline is not None else self.fresh_model(cell)
            self._dense_cost = measure_cost(model, self.data.input_shape)
        return self._dense_cost

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
        ckpt = self.store.load_checkpoint(key)
        if ckpt is not None:
            model.load_state_dict(ckpt["state_dict"])
            seconds = float(ckpt["seconds"])
            self.say(f"  dense baseline {cell.model.display}/{cell.dataset.display} "
                     f"seed={cell.seed}: cached checkpoint")
        else:
            self.say(f"  training dense baseline {cell.model.display}/{cell.dataset.display} "
                     f"seed={cell.seed} ({cell.train.epochs} epochs)")
            with self._epochs(f"dense {cell.model.display}", cell.train.epochs) as bar:
                stats = train(model, self.data, seed=cell.seed, progress=bar,
                              **budget_kwargs(cell.train))
            seconds = stats.seconds
            self.work_s += seconds
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
            self.say(f"  {cell.method_label}: cached trained model")
        else:
            self.say(f"  training {cell.method_label} on {cell.model.display}/"
                     f"{cell.dataset.display} seed={cell.seed} ({cell.train.epochs} epochs)")
            kw = budget_kwargs(cell.train)
            kw["weight_decay"] = method.weight_decay(kw["weight_decay"])
            with self._epochs(cell.method_label, cell.train.epochs) as bar:
                stats = train(model, self.data, seed=cell.seed, method=method, ctx=ctx,
                              phase="train", progress=bar, **kw)
            seconds, info = stats.seconds, dict(ctx.info)
            self.work_s += seconds
            self.store.save_checkpoint(key, {"state_dict": model.state_dict(),
                                             "seconds": seconds, "info": info,
                                             "method_state": method_state(method, model)})
        self._trained[key] = (model, seconds, info)
        return self._trained[key]

    # -- one cell ----------------------------------------------------------
    def run_cell(self, cell: Cell) -> dict:
        """Compute and measure one cell: its record."""
        return self.finish_cell(self.compute_cell(cell))

    def compute_cell(self, cell: Cell) -> PendingCell:
        """Everything but measurement: (train) -> compress -> fine-tune -> evaluate.

        Post methods start from the group's dense baseline; a "train" method
        trains its own model and does not need the dense baseline at all (its
        ``baseline_train_s`` is 0), so its group runs anywhere.
        """
        started = time.perf_counter()
        method = get_method(cell.method)(cell.params)
        info: dict = {}
        if method.kind == "train":
            dense_cost = self.dense_cost(cell)
            cost: dict[str, float] = {"baseline_train_s": 0.0}
            source, cost["method_train_s"], info = self.method_trained(cell, method, dense_cost)
        else:
            base_model, base_seconds = self.baseline(cell)
            dense_cost = self.dense_cost(cell)
            cost = {"baseline_train_s": base_seconds, "method_train_s": 0.0}
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
            with self._epochs(f"finetune {cell.method_label}", cell.finetune.epochs) as bar:
                stats = train(model, self.data, seed=cell.seed + 1, method=method, ctx=ctx,
                              phase="finetune", progress=bar, **budget_kwargs(cell.finetune))
            ft_seconds = stats.seconds
        cost["finetune_s"] = ft_seconds
        t0 = time.perf_counter()
        test = evaluate(model, self.data, "test")
        val = evaluate(model, self.data, "val")
        cost["eval_s"] = time.perf_counter() - t0
        self.work_s += cost["compress_s"] + ft_seconds + cost["eval_s"]
        cost["cell_s"] = time.perf_counter() - started
        evals = {"top1": test["top1"], "top5": test.get("top5"), "test_loss": test["loss"],
                 "val_top1": val["top1"]}
        return PendingCell(cell, model, dense_cost, cost, evals, dict(ctx.info))

    def finish_cell(self, pending: PendingCell) -> dict:
        """Measure (count, time) a computed cell and make its record."""
        t0 = time.perf_counter()
        model = pending.model.to(self.device)
        metrics = self.measure(model, pending.cell, pending.dense_cost)
        cost = dict(pending.cost)
        cost["measure_s"] = time.perf_counter() - t0
        self.work_s += cost["measure_s"]
        metrics.update(pending.evals)
        cost["cell_s"] = cost.get("cell_s", 0.0) + cost["measure_s"]
        return self.record(pending.cell, "ok", metrics=metrics, cost=cost,
                           method_info=pending.info)

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
    """Cells by the unit of work: (model, dataset, seed) for the post methods, which
    share the dense baseline, plus (..., training key) per "train" method params."""
    groups: OrderedDict[tuple, list[Cell]] = OrderedDict()
    for c in cells:
        key: tuple = c.group_key()
        if get_method(c.method).kind == "train":
            key = (*key, c.training_key())
        groups.setdefault(key, []).append(c)
    return groups


# -- one group, inside a worker ------------------------------------------------

_DATASETS: dict[tuple, DataBundle] = {}  # per process: a worker loads each dataset once


def _dataset(cell: Cell, data_root: str | None) -> DataBundle:
    key = (cell.dataset.model_dump_json(), data_root)
    if key not in _DATASETS:
        _DATASETS[key] = load_dataset(cell.dataset.name, cell.dataset.options, data_root)
    return _DATASETS[key]


class _NoData:
    """Stands in for a dataset that could not be loaded, so failures still get records."""

    info: dict = {}


def _free_memory() -> None:
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def execute_group(task: GroupTask, emit: Callable[[Event], None]) -> None:
    """Run the cells of one group and report each through ``emit``; never raises for a cell.

    With ``task.defer_timing`` a computed cell is saved as pending (model and
    figures so far) for the driver to time; otherwise it is measured at once.
    """
    store = ResultStore(task.results_dir)
    device = torch.device(task.device) if task.device else default_device()
    sink: list[CellLog] = []

    def say(text: str) -> None:
        if sink:
            sink[-1].write(text)
        emit(Event("message", task.index, text=text))

    data_error: BaseException | None = None
    try:
        data: Any = _dataset(task.cells[0], task.data_root)
    except Exception as exc:  # every cell of the group fails with it, once
        data, data_error = _NoData(), exc
    runner = GroupRunner(task.suite, store, data, device, task.suite_hash, say)
    runner.epoch_bars = task.epoch_bars
    for cell in task.cells:
        if store.is_done(cell.id, task.retry_failed):
            emit(Event("reused", task.index, cell_id=cell.id))  # another run finished it
            continue
        emit(Event("start", task.index, cell_id=cell.id, text=cell.describe()))
        work0 = runner.work_s
        with CellLog(store.log_path(cell.id), cell.describe()) as clog:
            sink[:] = [clog]
            runner.sink = clog.write
            try:
                if data_error is not None:
                    raise StageFailedError(f"dataset '{cell.dataset.display}' could not be "
                                           f"loaded: {data_error}") from data_error
                pending = runner.compute_cell(cell)
                if task.defer_timing:
                    try:
                        blob = store.pending_bytes(pending.payload())
                    except Exception as exc:
                        raise TimingHandoffError(
                            f"the compressed model cannot be serialized for the timing phase "
                            f"({type(exc).__name__}: {exc}); run this suite with the serial "
                            "executor") from exc
                    store.save_pending_bytes(cell.id, blob)
                    ev = Event("pending", task.index, cell_id=cell.id,
                               payload=blob if task.return_payloads else None,
                               extra={"top1": pending.evals["top1"]})
                else:
                    record = runner.finish_cell(pending)
                    store.save(record)
                    ev = Event("done", task.index, cell_id=cell.id, record=record)
                del pending
            except Exception as exc:  # recorded, and the group goes on
                record = runner.failed_record(cell, exc)
                clog.write(record["error"]["traceback"])
                store.save(record)
                ev = Event("failed", task.index, cell_id=cell.id, record=record)
                _free_memory()
            clog.write(f"== {ev.kind}")
            sink.clear()
            runner.sink = None
        ev.work_s = runner.work_s - work0
        ev.extra["pid"] = os.getpid()
        emit(ev)
    emit(Event("group_done", task.index))


# -- the driver ----------------------------------------------------------------

def cell_state(store: ResultStore, cell: Cell, retry_failed: bool = False) -> str:
    """"done" (has a record to keep), "pending" (waiting for timing) or "todo"."""
    if store.is_done(cell.id, retry_failed):
        return "done"
    if store.has_pending(cell.id):
        return "pending"
    return "todo"


class _Driver:
    """One `run`: claims groups, feeds the executor, times pending cells, tallies."""

    def __init__(self, suite: Suite, store: ResultStore, executor: Executor,
                 device: torch.device, data_root: str | None, retry_failed: bool,
                 summary: RunSummary, progress: SuiteProgress):
        self.suite, self.store, self.executor = suite, store, executor
        self.device, self.data_root, self.retry_failed = device, data_root, retry_failed
        self.summary, self.progress = summary, progress
        self.suite_hash = suite.hash()
        self.held: list[Path] = []
        self.locked: list[tuple[str, list[Cell]]] = []
        self.timing: list[Cell] = []
        self.cells: dict[str, Cell] = {}
        self.group_of: dict[int, list[Cell]] = {}
        self.ticked: set[str] = set()

    def write(self, line: str) -> None:
        self.progress.write(line)

    # -- claiming ------------------------------------------------------------
    def tasks(self, groups: list[tuple[str, list[Cell]]]):
        """Yield a task per group this run could lock; note the others as locked."""
        for name, gcells in groups:
            try:
                self.held.append(self.store.acquire(name))
            except Locked as exc:
                self.locked.append((name, gcells))
                self.write(f"  {_group_label(gcells)}: being run by pid {exc.owner.get('pid')} "
                           f"on {exc.owner.get('host')}; left to it")
                continue
            todo = []
            for c in gcells:  # look again: another run may have finished some meanwhile
                state = cell_state(self.store, c, self.retry_failed)
                if state == "done":
                    self._reused(c)
                elif state == "pending":
                    self.timing.append(c)
                else:
                    todo.append(c)
            if not todo:
                continue
            index = len(self.group_of)
            self.group_of[index] = todo
            self.cells.update((c.id, c) for c in todo)
            yield GroupTask(index=index, suite=self.suite, cells=todo,
                            results_dir=str(self.store.root), suite_hash=self.suite_hash,
                            data_root=self.data_root,
                            device=str(self.device), retry_failed=self.retry_failed,
                            defer_timing=self.executor.defers_timing,
                            return_payloads=self.executor.return_payloads,
                            threads=self.executor.threads,
                            epoch_bars=self.executor.epoch_bars and self.progress.enabled)

    def release(self) -> None:
        for path in self.held:
            self.store.release(path)
        self.held.clear()

    # -- events ---------------------------------------------------------------
    def handle(self, ev: Event) -> None:
        self.summary.work_s += ev.work_s
        if ev.work_s:
            pid = int(ev.extra.get("pid", 0))
            self.summary.busy_s[pid] = self.summary.busy_s.get(pid, 0.0) + ev.work_s
        if ev.kind == "message":
            self.write(ev.text)
        elif ev.kind == "reused":
            self._reused(self.cells[ev.cell_id])
        elif ev.kind in ("done", "failed"):
            assert ev.record is not None
            if self.store.load(ev.cell_id) is None:  # a worker without our disk
                self.store.save(ev.record)
            self._recorded(self.cells[ev.cell_id], ev.record)
        elif ev.kind == "pending":
            if ev.payload is not None and not self.store.has_pending(ev.cell_id):
                self.store.save_pending_bytes(ev.cell_id, ev.payload)
            cell = self.cells[ev.cell_id]
            self.timing.append(cell)
            self.write(f"{self._tick(cell)} {cell.describe()}: top1 "
                       f"{ev.extra.get('top1', float('nan')):.4f} (timed after training)")
        elif ev.kind == "worker_died":
            cell = self.cells[ev.cell_id]
            if self.store.load(cell.id) is None:
                self._fail_here(cell, WorkerDiedError(ev.text))
            else:
                self._recorded(cell, self.store.load(cell.id) or {})

    def _tick(self, cell: Cell) -> str:
        """Move the suite bar once per cell; the "[i/n]" prefix of its line."""
        if cell.id not in self.ticked:
            self.ticked.add(cell.id)
            self.progress.advance()
        return f"[{len(self.ticked)}/{self.progress.bar.total}]"

    def _reused(self, cell: Cell) -> None:
        self.summary.skipped += 1
        self._tick(cell)

    def _recorded(self, cell: Cell, record: dict) -> None:
        n = "  timed" if cell.id in self.ticked else self._tick(cell)
        if record.get("status") == "ok":
            self.summary.ok += 1
            m = record["metrics"]
            lat = (m.get("latency") or {}).get("cpu") or {}
            first = next(iter(lat.values()), {}) if isinstance(lat, dict) else {}
            ms = first.get("median_ms") if isinstance(first, dict) else None
            timing = f" cpu {ms:.3f} ms" if isinstance(ms, (int, float)) else ""
            self.write(f"{n} {cell.describe()}: top1 {m['top1']:.4f} "
                       f"params x{m['params_ratio']:.3f} macs x{m['macs_ratio']:.3f}{timing} "
                       f"({record['cost'].get('cell_s', 0.0):.1f}s)")
        else:
            err = record.get("error", {})
            self.summary.failed.append(cell.describe())
            self.summary.failures.append({"cell": cell.describe(), "cell_id": cell.id,
                                          "type": err.get("type"),
                                          "message": err.get("message")})
            self.write(f"{n} {cell.describe()}: FAILED {err.get('type')}: {err.get('message')}")

    def _fail_here(self, cell: Cell, exc: Exception) -> None:
        runner = GroupRunner(self.suite, self.store, _NoData(), self.device,  # type: ignore
                             self.suite_hash, self.write)
        with CellLog(self.store.log_path(cell.id), cell.describe()) as clog:
            try:
                raise exc
            except Exception as raised:
                record = runner.failed_record(cell, raised)
            clog.write(f"{record['error']['type']}: {record['error']['message']}\n== failed")
        self.store.save(record)
        self._recorded(cell, record)

    # -- the timing phase ------------------------------------------------------
    def time_pending(self) -> None:
        """Measure every pending cell here, one at a time, with nothing else running."""
        if not self.timing:
            return
        cells, self.timing = self.timing, []
        self.write(f"timing {len(cells)} cell(s) on {self.device}, one at a time, "
                   "with nothing else running")
        runners: dict[tuple, GroupRunner] = {}
        with SuiteProgress(len(cells), "timing", enabled=self.progress.enabled) as bar:
            for cell in cells:
                self.cells.setdefault(cell.id, cell)
                payload = self.store.load_pending(cell.id)
                if payload is None:  # corrupt or lost: compute it again, here, alone
                    self.store.drop_pending(cell.id)
                    self.write(f"  {cell.describe()}: pending file unreadable; recomputing")
                    self._recompute_here(cell)
                else:
                    self._time_one(cell, payload, runners)
                bar.advance()

    def _time_one(self, cell: Cell, payload: dict, runners: dict[tuple, GroupRunner]) -> None:
        with CellLog(self.store.log_path(cell.id), f"timing {cell.describe()}") as clog:
            try:
                key = cell.group_key()
                if key not in runners:
                    runners[key] = GroupRunner(self.suite, self.store,
                                               _dataset(cell, self.data_root), self.device,
                                               self.suite_hash, self.write)
                runner = runners[key]
                work0 = runner.work_s
                record = runner.finish_cell(PendingCell.from_payload(cell, payload))
                self.summary.work_s += runner.work_s - work0
            except Exception as exc:
                record = GroupRunner(self.suite, self.store, _NoData(),  # type: ignore[arg-type]
                                     self.device, self.suite_hash,
                                     self.write).failed_record(cell, exc)
                clog.write(record["error"]["traceback"])
            clog.write(f"== {'done' if record['status'] == 'ok' else 'failed'}")
        self.store.save(record)
        self._recorded(cell, record)

    def _recompute_here(self, cell: Cell) -> None:
        index = len(self.group_of)
        self.group_of[index] = [cell]
        self.cells[cell.id] = cell
        task = GroupTask(index=index, suite=self.suite, cells=[cell],
                         results_dir=str(self.store.root), suite_hash=self.suite_hash,
                         data_root=self.data_root, device=str(self.device),
                         retry_failed=self.retry_failed)
        execute_group(task, self.handle)


def _group_label(cells: list[Cell]) -> str:
    c = cells[0]
    return f"{c.model.display}/{c.dataset.display} seed={c.seed}"


def run_suite(suite: Suite, results_dir: str | Path, *, device: torch.device | None = None,
              data_root: str | None = None, retry_failed: bool = False,
              say: Callable[[str], None] = print, executor: Executor | str | None = None,
              jobs: int = 1, wait_poll_s: float = 1.0) -> RunSummary:
    """Run every cell that has no record yet (or a failed one, with ``retry_failed``).

    Groups locked by another live run on the same directory are left to it; once
    this run's own work is done it waits for them, and takes over any whose run
    died, so both runs end with every cell recorded exactly once.
    """
    started = time.perf_counter()
    store = ResultStore(results_dir)
    store.clean_stale_temp_files()
    cells = expand(suite)
    summary = RunSummary(total=len(cells))
    states = {c.id: cell_state(store, c, retry_failed) for c in cells}
    todo = [c for c in cells if states[c.id] != "done"]
    summary.skipped = len(cells) - len(todo)
    if not todo:
        say(f"suite '{suite.name}': all {len(cells)} cells already have records; "
            "nothing to recompute")
        return summary
    ex = executor if isinstance(executor, Executor) else make_executor(executor, jobs)
    summary.executor, summary.jobs = ex.name, ex.jobs
    n_pending = sum(states[c.id] == "pending" for c in todo)
    say(f"suite '{suite.name}': {len(todo)} of {len(cells)} cells to run "
        f"({summary.skipped} already done"
        + (f", {n_pending} trained and waiting for timing" if n_pending else "")
        + f"); executor: {ex.describe()}")
    device = device or default_device()
    groups = [(content_hash(list(key)), g) for key, g in group_cells(todo).items()]
    with SuiteProgress(len(todo), suite.name) as progress:
        if not progress.enabled:
            progress.write = say  # type: ignore[method-assign]
        driver = _Driver(suite, store, ex, device, data_root, retry_failed, summary, progress)
        waited = False
        try:
            while groups:
                driver.locked = []
                ex.run(driver.tasks(groups), driver.handle)
                t0 = time.perf_counter()
                driver.time_pending()
                summary.timing_phase_s += time.perf_counter() - t0
                driver.release()
                groups = driver.locked
                if groups and not waited:
                    say(f"waiting for {len(groups)} group(s) held by another run on "
                        f"{store.root} to finish")
                    waited = True
                while groups and all(_held_by_other(store, name) for name, _ in groups):
                    time.sleep(wait_poll_s)
        finally:
            driver.release()
    summary.seconds = time.perf_counter() - started
    return summary


def _held_by_other(store: ResultStore, name: str) -> bool:
    try:
        path = store.acquire(name)
    except Locked:
        return True
    store.release(path)
    return False


# -- dry run ----------------------------------------------------------------------

@dataclass
class Plan:
    """What a run would do: each cell's state and an estimate from earlier records."""

    rows: list[tuple[Cell, str]]
    estimate_s: float = 0.0
    estimated: int = 0  # cells to run that have an estimate
    unknown: int = 0  # cells to run with no earlier record to estimate from
    basis: int = 0  # records the estimate comes from

    @property
    def to_run(self) -> int:
        return sum(state != "done" for _, state in self.rows)


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def plan_suite(suite: Suite, results_dir: str | Path, retry_failed: bool = False) -> Plan:
    """States of all cells and a serial time estimate from this directory's ok records.

    A cell's estimate is the mean compress + fine-tune + evaluation + measurement
    seconds of records of the same method on the same model and dataset (else of
    any method there); each dense baseline and each "train"-method training
    without a checkpoint adds its recorded training seconds once.
    """
    store = ResultStore(results_dir)
    cells = expand(suite)
    plan = Plan([])
    records = [r for r in store.records() if r.get("status") == "ok"]
    plan.basis = len(records)
    for c in cells:
        state = cell_state(store, c, retry_failed)
        if state == "done":
            state = "done" if (store.load(c.id) or {}).get("status") == "ok" else "failed"
        plan.rows.append((c, state))

    def cell_part(r: dict) -> float:
        cost = r.get("cost", {})
        return sum(float(cost.get(k, 0.0)) for k in ("compress_s", "finetune_s", "eval_s",
                                                     "measure_s"))

    def where(**match: Any) -> list[dict]:
        return [r for r in records if all(r.get(k) == v for k, v in match.items())]

    trainings: set[str] = set()
    for c, state in plan.rows:
        if state == "done" or (state == "failed" and not retry_failed):
            continue
        same = where(model=c.model.display, dataset=c.dataset.display)
        if state == "pending":
            part = _mean([float(r["cost"].get("measure_s", 0.0)) for r in same])
        else:
            part = _mean([cell_part(r) for r in same if r.get("method_name") == c.method]) \
                or _mean([cell_part(r) for r in same])
        if part is None:
            plan.unknown += 1
            continue
        plan.estimated += 1
        plan.estimate_s += part
        if state == "pending":
            continue
        kind = get_method(c.method).kind
        key = c.training_key() if kind == "train" else c.baseline_key()
        if key in trainings or store.has_checkpoint(key):
            continue
        trainings.add(key)
        field_ = "method_train_s" if kind == "train" else "baseline_train_s"
        pool = [r for r in same if r.get("method_name") == c.method] if kind == "train" else same
        plan.estimate_s += _mean([float(r["cost"].get(field_, 0.0)) for r in pool
                                  if r["cost"].get(field_)]) or 0.0
    return plan


def format_plan(plan: Plan, suite: Suite, jobs: int = 1) -> str:
    width = max((len(c.describe()) for c, _ in plan.rows), default=0)
    lines = [f"suite '{suite.name}': {len(plan.rows)} cells, {plan.to_run} to run"]
    for c, state in plan.rows:
        lines.append(f"  {c.describe():<{width}}  {state:<8} {c.id}")
    counts = OrderedDict((s, 0) for s in ("done", "failed", "pending", "todo"))
    for _, state in plan.rows:
        counts[state] += 1
    lines.append("  " + ", ".join(f"{n} {s}" for s, n in counts.items()))
    if plan.to_run == 0:
        lines.append("nothing to run")
    elif plan.estimated:
        est = f"estimated time: {plan.estimate_s:.0f} s serial"
        if jobs > 1:
            est += f" (about {plan.estimate_s / jobs:.0f} s with {jobs} jobs, at best)"
        est += f", for {plan.estimated} of {plan.to_run} cells, from {plan.basis} earlier records"
        if plan.unknown:
            est += f"; {plan.unknown} cells have no earlier record to estimate from"
        lines.append(est)
    else:
        lines.append("estimated time: unknown (no earlier records in this results directory)")
    return "\n".join(lines)
