"""The executor interface: run groups of cells somewhere, report events back.

The unit of work is a *group*: the cells that share one (model, dataset, seed)
and so one dense baseline, which is trained once and whose targets follow on
the same worker. An executor pulls :class:`GroupTask` objects from an iterator
(the driver claims each group's lock only when it is pulled, so two runs on one
results directory share the work) and passes every :class:`Event` of a group to
the driver's handler, in order.

An executor that runs several groups at once sets ``defers_timing``: its
workers train, compress, fine-tune and evaluate, and save each cell as
*pending*; the driver then times all pending cells itself once the workers are
done, so latency is never measured beside other work on the same device.
"""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable
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

    @property
    def label(self) -> str:
        c = self.cells[0]
        return f"{c.model.display}/{c.dataset.display} seed={c.seed}"


@dataclass
class Event:
    """One thing that happened in a group.

    kind: "message" (text), "start" (a cell began), "done" / "failed" (a record
    was written; ``record`` holds it), "pending" (trained and evaluated, waiting
    for the timing phase; ``payload`` holds it when the task asked), "group_done".
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


def available_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def threads_per_worker(jobs: int, cpus: int | None = None) -> int:
    """Split the machine's cores between workers so that it is not oversubscribed."""
    return max(1, (cpus or available_cpus()) // max(1, jobs))


class Executor(ABC):
    """Runs group tasks; see the module docstring for the contract."""

    name: str = ""
    defers_timing: bool = False
    return_payloads: bool = False

    def __init__(self, jobs: int = 1):
        self.jobs = max(1, jobs)

    @property
    def threads(self) -> int | None:
        """torch threads per worker; None keeps torch's default (one worker)."""
        return None

    @property
    def epoch_bars(self) -> bool:
        """Whether workers may draw epoch bars (only when they share the driver's terminal)."""
        return False

    @abstractmethod
    def run(self, tasks: Iterable[GroupTask], handle: Handler) -> None:
        """Run every task the iterator yields; call ``handle`` for each event."""

    def describe(self) -> str:
        return self.name
