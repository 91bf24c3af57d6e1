"""The default executor: every group in this process, one after another.

Nothing else runs beside a cell, so its latency is timed right after it is
evaluated and no pending state is kept.
"""

from __future__ import annotations

from collections.abc import Iterable

from bench.run.executors.base import Executor, GroupTask, Handler


class SerialExecutor(Executor):
    name = "serial"
    defers_timing = False

    @property
    def epoch_bars(self) -> bool:
        return True

    def run(self, tasks: Iterable[GroupTask], handle: Handler) -> None:
        from bench.run.worker import execute_group

        for task in tasks:
            execute_group(task, handle)
