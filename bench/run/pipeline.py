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
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from bench.cells import Cell
from bench.ledger import (
    CHARGED_TO,
    cell_ledger,
    count_optimizer_steps,
    finetune_steps_left,
    phase_entry,
    recorded_lr_choice,
)
from bench.measure import environment, measure_deployable
from bench.measure.fingerprint import architecture_fingerprint
from bench.method import Cost, NotApplicableError
from bench.plugins import get_method
from bench.run.errors import LrChoiceMissingError
from bench.run.stages import GroupStages, budget_kwargs, seed_everything
from bench.run.timing_share import SharedTimings
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
        **({"recovery": cell.recovery} if cell.recovery is not None else {}),
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


@dataclass
class _Source:
    """What a cell starts from, with the training it already holds."""

    method: Any
    model: nn.Module
    dense_cost: Cost
    cost: dict[str, float]
    phases: list[dict]
    info: dict[str, Any]


@dataclass
class _Compressed:
    """A compressed (or deployable) model with the ledger phases its compression ran."""

    model: nn.Module
    phases: list[dict]
    unaccounted: int
    seconds: float
    ctx: Any
    shared: bool = False  # spent nothing of the recovery budget: serves every budget and lr

    @property
    def info(self) -> dict[str, Any]:
        return dict(self.ctx.info)


@dataclass
class _Family:
    """One row across its recovery budgets: the source, the shared compression, the lr
    choice and the tuned model of the largest budget until its cell takes it."""

    source: _Source
    compressed: _Compressed | None = None
    tuning: dict[str, Any] | None = None
    tuned: dict[int, tuple] = field(default_factory=dict)
    done: set[int] = field(default_factory=set)


class CellPipeline:
    """Runs the cells of one group on top of its shared stages."""

    def __init__(self, stages: GroupStages, suite_name: str, suite_hash: str,
                 slice: str | None = None, timings: SharedTimings | None = None):
        self.stages, self.suite_name, self.suite_hash = stages, suite_name, suite_hash
        self.timings = timings  # latency figures shared by a row's cells (None: time each)
        self.slice = slice  # the --only filter of the run, stored in each record
        self.work_s = 0.0  # compression, fine-tuning, evaluation and measurement seconds
        self._families: dict[str, _Family] = {}  # rows with recovery budgets in progress
        self.compressions = 0  # compress calls of rows with recovery budgets

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
        ``baseline_train_s`` is 0), so its group runs anywhere. A cell of a
        suite with recovery budgets goes through :meth:`compute_recovered`.
        """
        if cell.recovery is not None:
            return self.compute_recovered(cell)
        started, trained0 = time.perf_counter(), self.stages.work_s
        src = self._source(cell)
        comp = self._compress(cell, src)
        model, phases, ft_seconds = self._finetune(cell, src.method, comp,
                                                   source_phases=src.phases)
        ledger = cell_ledger(cell, phases, len(self.data.train), comp.unaccounted)
        cost = {**src.cost, "compress_s": comp.seconds, "finetune_s": ft_seconds}
        return self._evaluated(cell, model, src, comp.info, cost, ledger, started, trained0)

    # -- the steps of a cell -------------------------------------------------
    def _source(self, cell: Cell) -> _Source:
        """The model a cell starts from: the dense baseline, or a "train" method's own."""
        st = self.stages
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
        return _Source(method, source, dense_cost, cost, phases, info)

    def _compress(self, cell: Cell, src: _Source) -> _Compressed:
        """A copy of the source compressed to the cell's target (or made deployable)."""
        st = self.stages
        ctx = st.context(cell, src.dense_cost)
        ctx.info.update(src.info)
        model = copy.deepcopy(src.model)
        t0 = time.perf_counter()
        seed_everything(cell.seed)
        target = cell.target_obj
        with count_optimizer_steps() as counter:  # steps a method takes outside ctx.train
            model = (src.method.compress(model, target, ctx) if target is not None
                     else src.method.uncompressed(model, ctx)).to(st.device)
        unaccounted = counter.steps - sum(p["steps"] for p in ctx.ledger)
        return _Compressed(model, list(ctx.ledger), unaccounted,
                           time.perf_counter() - t0, ctx)

    def _finetune(self, cell: Cell, method: Any, comp: _Compressed, *,
                  source_phases: list[dict] | None = None, copy_model: bool = False
                  ) -> tuple[nn.Module, list[dict], float]:
        """Fine-tune for what is left of the cell's fine-tune budget (all of it, unless a
        regularization phase spent part); every row, the dense reference included."""
        st = self.stages
        model = copy.deepcopy(comp.model) if copy_model else comp.model
        phases = [*(source_phases if source_phases is not None else []), *comp.phases]
        n_train = len(st.data.train)
        ft_steps = finetune_steps_left(phases, cell.finetune.model_dump(), n_train)
        ft_seconds = 0.0
        if ft_steps > 0:
            with st.epochs_bar(f"finetune {cell.method_label}", cell.finetune.epochs) as bar:
                stats = train(model, st.data, seed=cell.seed + 1, method=method, ctx=comp.ctx,
                              phase="finetune", progress=bar, steps=ft_steps,
                              **budget_kwargs(cell.finetune))
            ft_seconds = stats.seconds
            phases.append(phase_entry("finetune", stats))
        return model, phases, ft_seconds

    def _evaluated(self, cell: Cell, model: nn.Module, src: _Source, info: dict,
                   cost: dict[str, float], ledger: dict, started: float,
                   trained0: float, spent_s: float | None = None) -> PendingCell:
        """``spent_s``: the compression, tuning and fine-tuning seconds this cell spent
        itself, where ``cost`` carries its row's shared ones (recovery budgets)."""
        st = self.stages
        t0 = time.perf_counter()
        test = evaluate(model, st.data, "test")
        val = evaluate(model, st.data, "val")
        cost["eval_s"] = time.perf_counter() - t0
        if spent_s is None:
            spent_s = cost["compress_s"] + cost.get("tune_s", 0.0) + cost["finetune_s"]
        self.work_s += spent_s + cost["eval_s"]
        cost["cell_s"] = time.perf_counter() - started
        # trainings this cell paid for (0 when they came from a checkpoint or a sibling):
        # what the planner takes out of cell_s before it adds each training once
        cost["trained_here_s"] = self.stages.work_s - trained0
        evals = {"top1": test["top1"], "top5": test.get("top5"), "test_loss": test["loss"],
                 "val_top1": val["top1"], "test_n": len(st.data.test),
                 "precision": training_precision(cell, st.device)}
        return PendingCell(cell, model, src.dense_cost, cost, evals, dict(info), ledger)

    # -- recovery budgets ----------------------------------------------------
    def compute_recovered(self, cell: Cell) -> PendingCell:
        """A cell of a row with several recovery budgets and an lr grid.

        The row is compressed once (a method that trains inside its compression,
        such as funnel's gate phase, which lives in the recovery budget, is
        compressed again for each budget and lr it runs with) and its recovery lr
        chosen once: every lr of the grid fine-tunes a copy at the largest budget,
        the best validation top-1 wins (never the test split), and that run is the
        largest budget's cell; smaller budgets fine-tune with the chosen lr. The
        choice is per seed, read back from a finished sibling record after a
        restart; with ``lr_chosen_on: first-seed`` the other seeds read it from the first
        seed's record instead of tuning. Each cell's ledger shows its own phases and,
        apart, the tuning.
        """
        started, trained0 = time.perf_counter(), self.stages.work_s
        fam = self._families.get(cell.family_key())
        if fam is None:
            fam = self._families[cell.family_key()] = _Family(self._source(cell))
        src = fam.source
        tuning = fam.tuning or self._stored_tuning(cell) or (
            self._donated_tuning(cell) if cell.lr_donor_seed is not None
            else self._tune(cell, fam))
        fam.tuning = tuning
        epochs = cell.recovery_epochs
        tuned = fam.tuned.pop(epochs, None)
        run_cell = cell.at_recovery(epochs, tuning["chosen_lr"])
        if tuned is not None:
            model, phases, ft_seconds, comp = tuned
        else:
            comp = self._family_compressed(run_cell, fam)
            model, phases, ft_seconds = self._finetune(run_cell, src.method, comp,
                                                       source_phases=src.phases,
                                                       copy_model=comp.shared)
        ledger = cell_ledger(run_cell, phases, len(self.data.train), comp.unaccounted)
        ledger["tuning"] = {k: v for k, v in tuning.items() if k != "seconds"}
        cost = {**src.cost, "compress_s": comp.seconds, "tune_s": tuning.get("seconds", 0.0),
                "finetune_s": ft_seconds}
        fam.done.add(epochs)
        if fam.done >= set(cell.recovery["budgets"]):
            self._families.pop(cell.family_key(), None)  # every budget of the row is done
        # The record shows the row's compression and tuning in every cell of it; the run's
        # work counts them once: the time this call took, less training counted by stages.
        spent = time.perf_counter() - started - (self.stages.work_s - trained0)
        return self._evaluated(cell, model, src, comp.info, cost, ledger, started, trained0,
                               spent_s=max(0.0, spent))

    def _family_compressed(self, run_cell: Cell, fam: _Family) -> _Compressed:
        """The row's compressed model for this budget and lr: shared when compression
        spent nothing of the recovery budget, else compressed anew."""
        if fam.compressed is not None and fam.compressed.shared:
            return fam.compressed
        comp = self._compress(run_cell, fam.source)
        self.compressions += 1
        comp.shared = not any(CHARGED_TO.get(p["phase"]) == "finetune" for p in comp.phases)
        if comp.shared:
            fam.compressed = comp
        return comp

    def _tune(self, cell: Cell, fam: _Family) -> dict[str, Any]:
        """Fine-tune the row at the largest budget with every lr of the grid; keep the best
        on the validation split (ties: the first lr of the grid)."""
        grid = [float(lr) for lr in cell.recovery["lr_grid"]]
        top = max(int(e) for e in cell.recovery["budgets"])
        t0 = time.perf_counter()
        results = []
        for lr in grid:
            run_cell = cell.at_recovery(top, lr)
            comp = self._family_compressed(run_cell, fam)
            model, phases, seconds = self._finetune(run_cell, fam.source.method, comp,
                                                    source_phases=fam.source.phases,
                                                    copy_model=comp.shared)
            steps = sum(int(p["steps"]) for p in phases if CHARGED_TO.get(p["phase"])
                        == "finetune")
            val = evaluate(model, self.data, "val")["top1"] if len(grid) > 1 else None
            results.append((lr, val, steps, (model, phases, seconds, comp)))
        best = 0 if len(grid) == 1 else max(range(len(grid)),
                                              key=lambda i: (results[i][1], -i))
        fam.tuned[top] = results[best][3]
        return {"lr_grid": grid, "chosen_lr": grid[best], "epochs": top,
                "steps": sum(r[2] for r in results) if len(grid) > 1 else 0,
                "val_top1": {f"{lr:g}": val for lr, val, _, _ in results if val is not None},
                "split": "val", "per": "seed", "seconds": time.perf_counter() - t0}

    def _donated_tuning(self, cell: Cell) -> dict[str, Any]:
        """The lr the row chose on its first seed (``lr_chosen_on: first-seed``), read from
        that seed's record; this seed spends no tuning steps of its own."""
        donor = cell.at_seed(int(cell.lr_donor_seed or 0))
        tuning = self._stored_tuning(donor)
        if tuning is None:
            raise LrChoiceMissingError(
                f"{cell.describe()}: its recovery lr is the one chosen on seed {donor.seed} "
                f"(recovery.lr_chosen_on: first-seed), and {donor.describe()} has no "
                f"finished record with that choice in {self.stages.store.root}; run seed "
                f"{donor.seed} of this row first (a run without --only does it first)")
        return {**tuning, "steps": 0, "tuned_steps": tuning.get("steps", 0),
                "per": "first seed", "from_seed": donor.seed}

    def _stored_tuning(self, cell: Cell) -> dict[str, Any] | None:
        """The lr choice of this row and seed from a finished sibling record, if any."""
        for epochs in cell.recovery["budgets"]:
            tuning = recorded_lr_choice(self.stages.store.load(cell.at_recovery(int(epochs)).id))
            if tuning is not None:
                return tuning
        return None

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
        dense row itself a deep copy, so its paired figure is an A/A check. A row's
        architecture already timed on this machine lends its figures instead
        (bench.run.timing_share); ``metrics.timing`` says which cell was timed.
        """
        fingerprint = architecture_fingerprint(model)
        donor = self.timings.find(cell, fingerprint) if self.timings is not None else None
        reference = (copy.deepcopy(model) if cell.method == "dense"
                     else self.stages.fresh_model(cell))
        metrics = measure_deployable(model, self.data.input_shape, cell.latency, dense_cost,
                                     cell.target_obj, reference=reference,
                                     runtime_vs_eager=cell.method == "dense",
                                     timed=donor.timed if donor is not None else None)
        metrics["timing"] = ({"architecture": fingerprint, "shared_from": donor.cell_id}
                             if donor is not None else {"architecture": fingerprint})
        if donor is None and self.timings is not None:
            self.timings.add(cell, fingerprint, metrics)
        return metrics

    def record(self, cell: Cell, status: str, **extra: Any) -> dict:
        if self.slice:
            extra["slice"] = self.slice
        return make_record(cell, status, suite_name=self.suite_name, suite_hash=self.suite_hash,
                           data_info=self.data.info, **extra)

    def failed_record(self, cell: Cell, exc: BaseException) -> dict:
        return failed_record(cell, exc, suite_name=self.suite_name, suite_hash=self.suite_hash,
                             data_info=self.data.info)
