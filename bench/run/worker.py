"""Run the cells of one group wherever an executor placed it; report each as an event.

Every executor (serial, local processes, Ray) calls :func:`execute_group`; the
worker never knows which one did. A cell's failure becomes a failed record and
the group goes on.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import torch

from bench.cells import Cell
from bench.data import DataBundle, load_dataset
from bench.preflight import is_environment_error
from bench.progress import CellLog
from bench.run.errors import StageFailedError, TimingHandoffError
from bench.run.pipeline import CellPipeline, error_record
from bench.run.stages import GroupStages, default_device
from bench.run.tasks import Event, GroupTask
from bench.run.timing_share import SharedTimings
from bench.store import ResultStore

_DATASETS: dict[tuple, DataBundle] = {}  # per process: a worker loads each dataset once


def load_cell_dataset(cell: Cell, data_root: str | None) -> DataBundle:
    """The cell's dataset, loaded once per process."""
    key = (cell.dataset.model_dump_json(), data_root)
    if key not in _DATASETS:
        _DATASETS[key] = load_dataset(cell.dataset.name, cell.dataset.options, data_root)
    return _DATASETS[key]


def free_memory() -> None:
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def make_pipeline(task: GroupTask, store: ResultStore, data: DataBundle,
                  say: Callable[[str], None]) -> CellPipeline:
    device = torch.device(task.device) if task.device else default_device()
    stages = GroupStages(store, data, device, say)
    stages.epoch_bars = task.epoch_bars
    return CellPipeline(stages, task.suite.name, task.suite_hash,
                        slice=getattr(task.suite, "slice", None),
                        timings=SharedTimings(store) if task.share_timing else None)


def _handoff(store: ResultStore, task: GroupTask, cell: Cell, pending: Any) -> Event:
    """Save a computed cell as pending for the driver's timing phase."""
    try:
        blob = store.pending_bytes(pending.payload())
    except Exception as exc:
        raise TimingHandoffError(
            f"the compressed model cannot be serialized for the timing phase "
            f"({type(exc).__name__}: {exc}); run this suite with the serial "
            "executor") from exc
    store.save_pending_bytes(cell.id, blob)
    return Event("pending", task.index, cell_id=cell.id,
                 payload=blob if task.return_payloads else None,
                 extra={"top1": pending.evals["top1"]})


def execute_group(task: GroupTask, emit: Callable[[Event], None]) -> None:
    """Run the cells of one group and report each through ``emit``; never raises for a cell.

    With ``task.defer_timing`` a computed cell is saved as pending (model and
    figures so far) for the driver to time; otherwise it is measured at once.
    """
    store = ResultStore(task.results_dir)
    sink: list[CellLog] = []

    def say(text: str) -> None:
        if sink:
            sink[-1].write(text)
        emit(Event("message", task.index, text=text))

    data_error: BaseException | None = None
    try:
        data = load_cell_dataset(task.cells[0], task.data_root)
    except Exception as exc:  # every cell of the group fails with it, once
        data, data_error = None, exc
    pipeline = make_pipeline(task, store, data, say) if data is not None else None
    for cell in task.cells:
        if store.is_done(cell.id, task.retry_failed):
            emit(Event("reused", task.index, cell_id=cell.id))  # another run finished it
            continue
        emit(Event("start", task.index, cell_id=cell.id, text=cell.describe()))
        work0 = pipeline.total_work_s if pipeline else 0.0
        with CellLog(store.log_path(cell.id), cell.describe()) as clog:
            sink[:] = [clog]
            if pipeline:
                pipeline.stages.sink = clog.write
            try:
                if pipeline is None:
                    raise StageFailedError(f"dataset '{cell.dataset.display}' could not be "
                                           f"loaded: {data_error}") from data_error
                pending = pipeline.compute_cell(cell)
                if task.defer_timing:
                    ev = _handoff(store, task, cell, pending)
                else:
                    record = pipeline.finish_cell(pending)
                    store.save(record)
                    ev = Event("done", task.index, cell_id=cell.id, record=record)
                del pending
            except Exception as exc:  # recorded, and the group goes on
                if is_environment_error(exc):  # the machine's failure: no record, stop here
                    clog.write(f"== environment: {type(exc).__name__}: {exc}")
                    sink.clear()
                    emit(Event("environment", task.index, cell_id=cell.id,
                               text=f"{type(exc).__name__}: {exc}"))
                    break
                record = error_record(cell, exc, suite_name=task.suite.name,
                                      suite_hash=task.suite_hash,
                                      data_info=data.info if data is not None else None)
                store.save(record)
                if record["status"] == "not_applicable":
                    clog.write(f"not applicable: {record['reason']}")
                    ev = Event("done", task.index, cell_id=cell.id, record=record)
                else:
                    clog.write(record["error"]["traceback"])
                    ev = Event("failed", task.index, cell_id=cell.id, record=record)
                free_memory()
            clog.write(f"== {ev.kind}")
            sink.clear()
            if pipeline:
                pipeline.stages.sink = None
        ev.work_s = (pipeline.total_work_s if pipeline else 0.0) - work0
        ev.extra["pid"] = os.getpid()
        emit(ev)
    emit(Event("group_done", task.index))
