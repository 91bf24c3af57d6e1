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
from collections.abc import Iterable

from bench.run.tasks import Event, GroupTask, Handler

__all__ = ["Event", "Executor", "GroupTask", "Handler", "available_cpus", "threads_per_worker"]


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
    # workers see one results directory and its file locks, so a unit may wait for a
    # dense baseline another worker is training (bench.run.plan.group_cells)
    shares_disk: bool = True

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
