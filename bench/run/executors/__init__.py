"""Where groups of cells run: ``serial`` (default), ``local`` (--jobs N), ``ray``."""

from __future__ import annotations

from bench.registry import unknown_message
from bench.run.executors.base import Event, Executor, GroupTask, threads_per_worker

EXECUTORS = ("serial", "local", "ray")


def make_executor(name: str | None = None, jobs: int = 1) -> Executor:
    """``name`` None picks serial for one job and local for more."""
    name = name or ("serial" if jobs <= 1 else "local")
    if name == "serial":
        from bench.run.executors.serial import SerialExecutor

        return SerialExecutor(1)
    if name == "local":
        from bench.run.executors.local import LocalExecutor

        return LocalExecutor(max(1, jobs))
    if name == "ray":
        from bench.run.executors.ray import RayExecutor

        return RayExecutor(jobs if jobs > 1 else 0)
    raise ValueError(unknown_message("executor", name, list(EXECUTORS)))


__all__ = ["EXECUTORS", "Event", "Executor", "GroupTask", "make_executor", "threads_per_worker"]
