"""One ``run``: claim groups, feed an executor, time pending cells alone, tally.

The driver owns the results directory for the run: group locks, records of
cells whose worker died, and the timing phase, in which every cell a parallel
worker left pending is measured here, one at a time, with nothing else running.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from bench.cells import Cell, content_hash, expand, lr_donors
from bench.manifest import write_manifest
from bench.progress import CellLog, SuiteProgress
from bench.run.errors import WorkerDiedError
from bench.run.executors import Event, Executor, GroupTask, make_executor
from bench.run.pipeline import CellPipeline, PendingCell, failed_record
from bench.run.plan import cell_state, group_cells
from bench.run.stages import GroupStages, default_device
from bench.run.timing_share import SharedTimings
from bench.run.worker import execute_group, load_cell_dataset
from bench.store import Locked, ResultStore
from bench.suite import Suite
from bench.threads import apply_training_threads


@dataclass
class RunSummary:
    total: int = 0
    skipped: int = 0
    ok: int = 0
    not_applicable: int = 0  # cells a method cannot reach: recorded, not failures
    failed: list[str] = field(default_factory=list)
    seconds: float = 0.0
    failures: list[dict] = field(default_factory=list)  # cell, error type, message
    work_s: float = 0.0  # training, compression, evaluation and measurement, summed
    executor: str = "serial"
    jobs: int = 1
    timing_phase_s: float = 0.0  # wall seconds of the driver's timing phase(s)
    busy_s: dict[int, float] = field(default_factory=dict)  # work seconds per worker pid
    environment: list[str] = field(default_factory=list)  # cells stopped by the machine
    stale_locks: int = 0  # lock files of dead processes removed at the end

    @property
    def computed(self) -> int:
        return self.ok + self.not_applicable + len(self.failed)


class Driver:
    """One `run`: claims groups, feeds the executor, times pending cells, tallies."""

    def __init__(self, suite: Suite, store: ResultStore, executor: Executor,
                 device: torch.device, data_root: str | None, retry_failed: bool,
                 summary: RunSummary, progress: SuiteProgress, share_timing: bool = True):
        self.suite, self.store, self.executor = suite, store, executor
        self.share_timing = share_timing
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
                            epoch_bars=self.executor.epoch_bars and self.progress.enabled,
                            share_timing=self.share_timing)

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
        elif ev.kind == "environment":  # no record: the next run computes the cell
            cell = self.cells[ev.cell_id]
            self.summary.environment.append(f"{cell.describe()}: {ev.text}")
            self.write(f"  {cell.describe()}: stopped by the environment, not recorded: "
                       f"{ev.text}")
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
        elif record.get("status") == "not_applicable":
            self.summary.not_applicable += 1
            self.write(f"{n} {cell.describe()}: not applicable: {record.get('reason')}")
        else:
            err = record.get("error", {})
            self.summary.failed.append(cell.describe())
            self.summary.failures.append({"cell": cell.describe(), "cell_id": cell.id,
                                          "type": err.get("type"),
                                          "message": err.get("message")})
            self.write(f"{n} {cell.describe()}: FAILED {err.get('type')}: {err.get('message')}")

    def _fail_here(self, cell: Cell, exc: Exception) -> None:
        with CellLog(self.store.log_path(cell.id), cell.describe()) as clog:
            record = failed_record(cell, exc, suite_name=self.suite.name,
                                   suite_hash=self.suite_hash)
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
        pipelines: dict[tuple, CellPipeline] = {}
        timings = SharedTimings(self.store) if self.share_timing else None
        reused = 0
        with SuiteProgress(len(cells), "timing", enabled=self.progress.enabled) as bar:
            for cell in cells:
                self.cells.setdefault(cell.id, cell)
                payload = self.store.load_pending(cell.id)
                if payload is None:  # corrupt or lost: compute it again, here, alone
                    self.store.drop_pending(cell.id)
                    self.write(f"  {cell.describe()}: pending file unreadable; recomputing")
                    self._recompute_here(cell)
                else:
                    reused += self._time_one(cell, payload, pipelines, timings)
                bar.advance()
        if reused:
            self.write(f"  {reused} of {len(cells)} cell(s) carry the timing of an identical "
                       "architecture of their row (metrics.timing.shared_from)")

    def _time_one(self, cell: Cell, payload: dict, pipelines: dict[tuple, CellPipeline],
                  timings: SharedTimings | None) -> bool:
        """Time (or reuse the timing of) one pending cell and save its record; whether it
        reused another cell's timing."""
        with CellLog(self.store.log_path(cell.id), f"timing {cell.describe()}") as clog:
            try:
                key = cell.group_key()
                if key not in pipelines:
                    stages = GroupStages(self.store, load_cell_dataset(cell, self.data_root),
                                         self.device, self.write)
                    pipelines[key] = CellPipeline(stages, self.suite.name, self.suite_hash,
                                                  slice=self.suite.slice, timings=timings)
                pipeline = pipelines[key]
                work0 = pipeline.total_work_s
                record = pipeline.finish_cell(PendingCell.from_payload(cell, payload))
                self.summary.work_s += pipeline.total_work_s - work0
            except Exception as exc:
                record = failed_record(cell, exc, suite_name=self.suite.name,
                                       suite_hash=self.suite_hash)
                clog.write(record["error"]["traceback"])
            clog.write(f"== {'done' if record['status'] == 'ok' else 'failed'}")
        self.store.save(record)
        self._recorded(cell, record)
        return "shared_from" in ((record.get("metrics") or {}).get("timing") or {})

    def _recompute_here(self, cell: Cell) -> None:
        index = len(self.group_of)
        self.group_of[index] = [cell]
        self.cells[cell.id] = cell
        task = GroupTask(index=index, suite=self.suite, cells=[cell],
                         results_dir=str(self.store.root), suite_hash=self.suite_hash,
                         data_root=self.data_root, device=str(self.device),
                         retry_failed=self.retry_failed, share_timing=self.share_timing)
        execute_group(task, self.handle)


def _group_label(cells: list[Cell]) -> str:
    c = cells[0]
    return f"{c.model.display}/{c.dataset.display} seed={c.seed}"


def run_suite(suite: Suite, results_dir: str | Path, *, device: torch.device | None = None,
              data_root: str | None = None, retry_failed: bool = False,
              say: Callable[[str], None] = print, executor: Executor | str | None = None,
              jobs: int = 1, wait_poll_s: float = 1.0, share_timing: bool = True) -> RunSummary:
    """Run every cell that has no record yet (or a failed one, with ``retry_failed``).

    Groups locked by another live run on the same directory are left to it; once
    this run's own work is done it waits for them, and takes over any whose run
    died, so both runs end with every cell recorded exactly once. With ``share_timing`` a
    row's architecture is timed once on this machine and its other cells reuse the
    figures (bench.run.timing_share); without it every cell is timed.
    """
    started = time.perf_counter()
    store = ResultStore(results_dir)
    store.clean_stale_temp_files()
    store.clear_baseline_failures()  # a new run tries a failed baseline again
    # what the whole suite expects, read by the reports (a slice's run promises no less)
    write_manifest(suite.full_suite, results_dir)
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
    restore_threads = apply_training_threads(ex.threads, say)
    waves = lr_waves(todo)
    if len(waves) > 1:
        say(f"the first seed's {len(waves[0])} cell(s) run first: {len(waves[1])} other "
            "cell(s) reuse its recovery-lr choices (recovery.lr_chosen_on: first-seed)")
    with SuiteProgress(len(todo), suite.name) as progress:
        if not progress.enabled:
            progress.write = say  # type: ignore[method-assign]
        driver = Driver(suite, store, ex, device, data_root, retry_failed, summary, progress,
                        share_timing=share_timing)
        waited = False
        try:
            for wave in waves:
                groups = [(content_hash(list(key)), g) for key, g in group_cells(
                    wave, store.has_checkpoint, split=ex.shares_disk and ex.jobs > 1).items()]
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
            restore_threads()
            summary.stale_locks = store.clean_stale_locks()
    summary.seconds = time.perf_counter() - started
    return summary


def lr_waves(cells: list[Cell]) -> list[list[Cell]]:
    """The cells in the order their lr choices allow: under ``lr_chosen_on: first-seed``
    the rows whose first seed runs here wait for it (records land after each wave's
    timing phase, and the later seeds read the choice from them); one wave otherwise."""
    running = {c.id for c in cells}
    later = [c for c in cells if any(d.id in running for d in lr_donors(c))]
    if not later:
        return [cells]
    held = {c.id for c in later}
    return [[c for c in cells if c.id not in held], later]


def _held_by_other(store: ResultStore, name: str) -> bool:
    try:
        path = store.acquire(name)
    except Locked:
        return True
    store.release(path)
    return False
