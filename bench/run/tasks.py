"""The unit of work an executor runs (a group of cells) and the events it reports.

Plain dataclasses with no tensors, so they pickle to any worker process or
Ray node; both the executors and the worker depend on this module, never on
each other's internals.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any


@dataclass
class GroupTask:
    """Everything a worker needs to run one group; picklable, holds no tensors."""

    index: int
    suite: Any  # bench.suite.Suite
    cells: list[Any]  # list[bench.cells.Cell]
    results_dir: str
    suite_hash: str
    data_root: str | None = None
    device: str | None = None
    retry_failed: bool = False
    defer_timing: bool = False
    return_payloads: bool = False  # send pending models back (workers without a shared disk)
    threads: int | None = None
    epoch_bars: bool = False
    share_timing: bool = True  # a row's architecture timed once (bench.run.timing_share)

    @property
    def label(self) -> str:
        c = self.cells[0]
        return f"{c.model.display}/{c.dataset.display} seed={c.seed}"


@dataclass
class Event:
    """One thing that happened in a group.

    kind: "message" (text), "start" (a cell began), "done" / "failed" (a record
    was written; ``record`` holds it), "pending" (trained and evaluated, waiting
    for the timing phase; ``payload`` holds it when the task asked), "environment"
    (the machine stopped the cell: missing data, a full disk; no record), "group_done".
    """

    kind: str
    group: int
    cell_id: str = ""
    text: str = ""
    record: dict | None = None
    payload: bytes | None = None
    work_s: float = 0.0
    extra: dict = field(default_factory=dict)


Handler = Callable[[Event], None]
