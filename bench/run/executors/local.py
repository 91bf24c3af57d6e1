"""``--jobs N``: N worker processes on this machine, one group at a time each.

Each worker gets the free cores split N ways as torch threads (see
bench.threads: the cores minus the load average, at least 1), so the workers
together do not oversubscribe the machine, even when other work runs on it.
Workers train and evaluate; the driver times the pending cells afterwards
(``defers_timing``).

Robustness: a worker that dies (killed by the out-of-memory killer, a
segfault in native code) costs only the cell it was running, which gets a
failed record saying so; the rest of its group goes to a fresh worker. Workers
watch their parent and exit when it is gone, so killing the driver with
SIGKILL leaves no orphan still writing into the results directory.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import queue
import signal
import threading
import time
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field, replace
from typing import Any

from bench.run.executors.base import Event, Executor, GroupTask, Handler
from bench.threads import available_cpus, load_1m, threads_override, training_threads

_POLL_S = 0.5


def _watch_parent(parent: int) -> None:
    while True:
        if os.getppid() != parent:
            os._exit(70)
        time.sleep(_POLL_S)


def _worker_main(inbox: Any, events: Any, parent: int, threads: int) -> None:
    threading.Thread(target=_watch_parent, args=(parent,), daemon=True).start()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the driver handles Ctrl-C
    import logging

    import torch

    torch.set_num_threads(threads)
    logging.getLogger("lowrank_bench").setLevel(logging.INFO)
    from bench.run.worker import execute_group

    while True:
        task = inbox.get()
        if task is None:
            return
        execute_group(task, events.put)


@dataclass
class _Worker:
    proc: Any
    inbox: Any
    task: GroupTask | None = None
    current: str = ""  # cell id in flight
    finished: set[str] = field(default_factory=set)


def describe_exit(code: int | None) -> str:
    if code is not None and code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        hint = " (killed, e.g. by the out-of-memory killer)" if -code == signal.SIGKILL else ""
        return f"worker process died of {name}{hint}"
    return f"worker process exited with code {code}"


class LocalExecutor(Executor):
    name = "local"
    defers_timing = True

    def __init__(self, jobs: int = 2, cpus: int | None = None):
        super().__init__(jobs)
        # cpus given: a fixed split (no load reading); else the cores free right now
        load = None if cpus is not None else load_1m()
        self._threads = training_threads(cpus or available_cpus(), load, self.jobs,
                                         override=(threads_override() or ("", None))[1])

    @property
    def threads(self) -> int:
        return self._threads

    def describe(self) -> str:
        return f"local, {self.jobs} worker processes x {self.threads} threads"

    def run(self, tasks: Iterable[GroupTask], handle: Handler) -> None:
        ctx = mp.get_context("spawn")  # fork is unsafe once torch has started threads
        # SimpleQueue writes each event to the pipe before put() returns: a worker killed
        # right after reporting a finished cell cannot lose that report (a Queue's feeder
        # thread could).
        events = ctx.SimpleQueue()
        source: Iterator[GroupTask] = iter(tasks)
        retry: deque[GroupTask] = deque()
        workers: list[_Worker] = []
        exhausted = False

        def next_task() -> GroupTask | None:
            nonlocal exhausted
            if retry:
                return retry.popleft()
            if exhausted:
                return None
            task = next(source, None)
            exhausted = task is None
            return task

        def start_worker() -> _Worker:
            inbox = ctx.Queue()
            proc = ctx.Process(target=_worker_main, daemon=True,
                               args=(inbox, events, os.getpid(), self.threads))
            proc.start()
            w = _Worker(proc, inbox)
            workers.append(w)
            return w

        def dispatch() -> None:
            workers[:] = [w for w in workers if w.task is not None or w.proc.is_alive()]
            while sum(w.task is not None for w in workers) < self.jobs:
                task = next_task()
                if task is None:
                    return
                w = next((w for w in workers if w.task is None and w.proc.is_alive()), None)
                w = w or start_worker()
                w.task, w.current, w.finished = task, "", set()
                w.inbox.put(task)

        def on_event(ev: Event) -> None:
            w = next((w for w in workers if w.task is not None and w.task.index == ev.group),
                     None)
            if w is not None:
                if ev.kind == "start":
                    w.current = ev.cell_id
                elif ev.kind in ("done", "failed", "pending"):
                    w.finished.add(ev.cell_id)
                    w.current = ""
                elif ev.kind == "group_done":
                    w.task = None
            handle(ev)

        def next_event(timeout: float) -> Event:
            deadline = time.monotonic() + timeout
            while events.empty():
                if time.monotonic() >= deadline:
                    raise queue.Empty
                time.sleep(0.01)
            return events.get()

        def drain() -> None:
            while not events.empty():
                on_event(events.get())

        def bury(w: _Worker) -> None:
            """A worker died: fail the cell it was on, give the rest of its group to another."""
            drain()
            workers.remove(w)
            task = w.task
            if task is None:
                return
            why = describe_exit(w.proc.exitcode)
            rest = [c for c in task.cells if c.id not in w.finished and c.id != w.current]
            if w.current:
                handle(Event("worker_died", task.index, cell_id=w.current, text=why))
            elif rest:  # died before starting a cell (e.g. while loading data): fail the first
                handle(Event("worker_died", task.index, cell_id=rest[0].id, text=why))
                rest = rest[1:]
            if rest:
                retry.appendleft(replace(task, cells=rest))
            else:
                handle(Event("group_done", task.index))

        try:
            dispatch()
            while any(w.task is not None for w in workers):
                try:
                    on_event(next_event(_POLL_S))
                except queue.Empty:
                    for w in list(workers):
                        if w.task is not None and not w.proc.is_alive():
                            bury(w)
                dispatch()
        finally:
            for w in workers:
                if w.proc.is_alive():
                    w.inbox.put(None)
            deadline = time.monotonic() + 10
            for w in workers:
                w.proc.join(max(0.1, deadline - time.monotonic()))
                if w.proc.is_alive():
                    w.proc.kill()
                    w.proc.join()
