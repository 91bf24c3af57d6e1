"""One cell: compress -> fine-tune -> evaluate -> measure, and the record it becomes.

``compute_cell`` does everything but measurement and returns a
:class:`PendingCell`, which a parallel run saves for the driver's timing phase;
``finish_cell`` measures it (counting and timing) and makes the record.
"""

from __future__ import annotations

import copy
import datetime as dt
import time
import traceback
from dataclasses import dataclass
from typing import Any

from torch import nn

from bench.cells import Cell
from bench.ledger import cell_ledger, count_optimizer_steps, finetune_steps_left, phase_entry
from bench.measure import environment, measure_deployable
from bench.method import Cost, NotApplicableError
from bench.plugins import get_method
from bench.run.stages import GroupStages, budget_kwargs, seed_everything
from bench.train import evaluate, train


@dataclass
class PendingCell:
    """A cell trained, compressed, fine-tuned and evaluated; only measurement is left."""

    cell: Cell
    model: nn.Module
    dense_cost: Cost
    cost: dict[str, float]
    evals: dict[str, Any]
    info: dict[str, Any]
    ledger: dict[str, Any] | None = None  # bench.ledger: the training budget it spent

    def payload(self) -> dict:
        return {"cell_id": self.cell.id, "cell": self.cell.model_dump(mode="json"),
                "model": self.model, "dense_cost": [self.dense_cost.params, self.dense_cost.macs],
                "cost": self.cost, "evals": self.evals, "info": self.info,
                "ledger": self.ledger}

    @classmethod
    def from_payload(cls, cell: Cell, payload: dict) -> PendingCell:
        params, macs = payload["dense_cost"]
        return cls(cell, payload["model"], Cost(int(params), int(macs)), dict(payload["cost"]),
                   dict(payload["evals"]), dict(payload["info"]), payload.get("ledger"))


def make_record(cell: Cell, status: str, *, suite_name: str, suite_hash: str,
                data_info: dict | None = None, **extra: Any) -> dict:
    """The JSON record of a cell: its config, status and whatever the status carries."""
    return {
        "cell_id": cell.id, "status": status, "suite": suite_name,
        "suite_hash": suite_hash,
        "model": cell.model.display, "dataset": cell.dataset.display, "seed": cell.seed,
        "method": cell.method_label, "method_name": cell.method, "params": cell.params,
        "target": cell.target, "target_label": cell.target_label,
        "cell": cell.model_dump(mode="json"),
        "data_info": dict(data_info or {}),
        "env": environment(suite_hash),
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        **extra,
    }


def failed_record(cell: Cell, exc: BaseException, *, suite_name: str, suite_hash: str,
                  data_info: dict | None = None) -> dict:
    """A failed cell's record: error type, message and traceback (call inside ``except``)."""
    tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    return make_record(cell, "failed", suite_name=suite_name, suite_hash=suite_hash,
                       data_info=data_info,
                       error={"type": type(exc).__name__, "message": str(exc), "traceback": tb})


def training_precision(cell: Cell, device: Any) -> dict[str, str]:
    """How the cell's models were trained here: loop and precision per phase (for the record)."""
    from bench.fasttrain import resolve_precision, use_device_loop

    out = {}
    for phase, b in (("train", cell.train), ("finetune", cell.finetune)):
        device_loop = use_device_loop(device, b.loop, b.precision, b.compile)
        out[phase] = resolve_precision(b.precision, device) if device_loop else "fp32"
        out[f"{phase}_loop"] = "device" if device_loop else "host"
    return out


def not_applicable_reason(exc: BaseException) -> str | None:
    """The reason when ``exc`` is (or was caused by) a method's NotApplicableError, else None.

    A shared stage (a "train" method's ``prepare``) that found the target out of
    reach fails its later cells with a StageFailedError caused by it: those are
    not applicable too.
    """
    seen: set[int] = set()
    e: BaseException | None = exc
    while e is not None and id(e) not in seen:
        if isinstance(e, NotApplicableError):
            return e.reason
        seen.add(id(e))
        e = e.__cause__ or e.__context__
    return None


def not_applicable_record(cell: Cell, reason: str, *, suite_name: str, suite_hash: str,
                          data_info: dict | None = None) -> dict:
    """A cell the method cannot reach: its reason and no metrics; never ranked, not a failure."""
    return make_record(cell, "not_applicable", suite_name=suite_name, suite_hash=suite_hash,
                       data_info=data_info, reason=reason)


def error_record(cell: Cell, exc: BaseException, *, suite_name: str, suite_hash: str,
                 data_info: dict | None = None) -> dict:
    """The record of a cell that raised: not applicable, or failed (call inside ``except``)."""
    reason = not_applicable_reason(exc)
    if reason is not None:
        return not_applicable_record(cell, reason, suite_name=suite_name, suite_hash=suite_hash,
                                     data_info=data_info)
    return failed_record(cell, exc, suite_name=suite_name, suite_hash=suite_hash,
                         data_info=data_info)


class CellPipeline:
    """Runs the cells of one group on top of its shared stages."""

    def __init__(self, stages: GroupStages, suite_name: str, suite_hash: str,
                 slice: str | None = None):
        self.stages, self.suite_name, self.suite_hash = stages, suite_name, suite_hash
        self.slice = slice  # the --only filter of the run, stored in each record
        self.work_s = 0.0  # compression, fine-tuning, evaluation and measurement seconds

    @property
    def data(self):
        return self.stages.data

    @property
    def total_work_s(self) -> float:
        return self.work_s + self.stages.work_s

    def run_cell(self, cell: Cell) -> dict:
        """Compute and measure one cell: its record."""
        return self.finish_cell(self.compute_cell(cell))

    def compute_cell(self, cell: Cell) -> PendingCell:
        """Everything but measurement: (train) -> compress -> fine-tune -> evaluate.

        Post methods start from the group's dense baseline; a "train" method
        trains its own model and does not need the dense baseline at all (its
        ``baseline_train_s`` is 0), so its group runs anywhere.
        """
        st = self.stages
        started = time.perf_counter()
        method = get_method(cell.method)(cell.params)
        info: dict = {}
        if method.kind == "train":
            dense_cost = st.dense_cost(cell)
            cost: dict[str, float] = {"baseline_train_s": 0.0}
            source, cost["method_train_s"], info = st.method_trained(cell, method, dense_cost)
            phases = [st.phases[cell.training_key()]]
        else:
            base_model, base_seconds = st.baseline(cell)
            dense_cost = st.dense_cost(cell)
            cost = {"baseline_train_s": base_seconds, "method_train_s": 0.0}
            source = base_model
            phases = [st.phases[cell.baseline_key()]]
        ctx = st.context(cell, dense_cost)
        ctx.info.update(info)
        model = copy.deepcopy(source)
        t0 = time.perf_counter()
        seed_everything(cell.seed)
        target = cell.target_obj
        with count_optimizer_steps() as counter:  # steps a method takes outside ctx.train
            model = (method.compress(model, target, ctx) if target is not None
                     else method.uncompressed(model, ctx)).to(st.device)
        phases += ctx.ledger
        unaccounted = counter.steps - sum(p["steps"] for p in ctx.ledger)
        cost["compress_s"] = time.perf_counter() - t0
        # Every row, the dense reference included, is fine-tuned for what is left of the
        # fine-tune budget (all of it, unless a regularization phase spent part).
        n_train = len(st.data.train)
        ft_steps = finetune_steps_left(phases, cell.finetune.model_dump(), n_train)
        ft_seconds = 0.0
        if ft_steps > 0:
            with st.epochs_bar(f"finetune {cell.method_label}", cell.finetune.epochs) as bar:
                stats = train(model, st.data, seed=cell.seed + 1, method=method, ctx=ctx,
                              phase="finetune", progress=bar, steps=ft_steps,
                              **budget_kwargs(cell.finetune))
            ft_seconds = stats.seconds
            phases.append(phase_entry("finetune", stats))
        ledger = cell_ledger(cell, phases, n_train, unaccounted)
        cost["finetune_s"] = ft_seconds
        t0 = time.perf_counter()
        test = evaluate(model, st.data, "test")
        val = evaluate(model, st.data, "val")
        cost["eval_s"] = time.perf_counter() - t0
        self.work_s += cost["compress_s"] + ft_seconds + cost["eval_s"]
        cost["cell_s"] = time.perf_counter() - started
        evals = {"top1": test["top1"], "top5": test.get("top5"), "test_loss": test["loss"],
                 "val_top1": val["top1"], "test_n": len(st.data.test),
                 "precision": training_precision(cell, st.device)}
        return PendingCell(cell, model, dense_cost, cost, evals, dict(ctx.info), ledger)

    def finish_cell(self, pending: PendingCell) -> dict:
        """Measure (count, time) a computed cell and make its record."""
        t0 = time.perf_counter()
        model = pending.model.to(self.stages.device)
        metrics = self.measure(model, pending.cell, pending.dense_cost)
        cost = dict(pending.cost)
        cost["measure_s"] = time.perf_counter() - t0
        self.work_s += cost["measure_s"]
        evals = dict(pending.evals)
        precision = evals.pop("precision", None)  # where it was trained, not timed
        metrics.update(evals)
        cost["cell_s"] = cost.get("cell_s", 0.0) + cost["measure_s"]
        extra = {"precision": precision} if precision else {}
        return self.record(pending.cell, "ok", metrics=metrics, cost=cost,
                           method_info=pending.info, ledger=pending.ledger, **extra)

    def measure(self, model: nn.Module, cell: Cell, dense_cost: Cost) -> dict[str, Any]:
        """All figures of the deployable model: see bench.measure.measure_deployable.

        Latency is also timed paired with the dense reference: a fresh build of
        the cell's architecture (weights do not change dense latency); for the
        dense row itself a deep copy, so its paired figure is an A/A check.
        """
        reference = (copy.deepcopy(model) if cell.method == "dense"
                     else self.stages.fresh_model(cell))
        return measure_deployable(model, self.data.input_shape, cell.latency, dense_cost,
                                  cell.target_obj, reference=reference)

    def record(self, cell: Cell, status: str, **extra: Any) -> dict:
        if self.slice:
            extra["slice"] = self.slice
        return make_record(cell, status, suite_name=self.suite_name, suite_hash=self.suite_hash,
                           data_info=self.data.info, **extra)

    def failed_record(self, cell: Cell, exc: BaseException) -> dict:
        return failed_record(cell, exc, suite_name=self.suite_name, suite_hash=self.suite_hash,
                             data_info=self.data.info)
