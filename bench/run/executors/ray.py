"""``--executor ray``: groups as Ray tasks, on a cluster or a local Ray instance.

Connects to ``RAY_ADDRESS`` when it is set (a running cluster), otherwise
starts a Ray instance on this machine and stops it afterwards. Ray is an
optional extra: ``pip install 'lowrank-bench[ray]'``.

Placement: on a cluster with GPUs each task asks for one GPU (``num_gpus=1``)
and trains on it (Ray sets ``CUDA_VISIBLE_DEVICES``), so one training runs per
GPU and, without ``--jobs``, as many groups run at once as the cluster has
GPUs; each task also gets ``CPUs // jobs`` CPUs (its torch threads). Without
GPUs each task asks for ``CPUs // jobs`` CPUs and trains on the CPU. Ray's
scheduler keeps nodes from being oversubscribed.

Workers write records, checkpoints and pending models into the results
directory when they can reach it (a shared disk) and also send records and
pending models back, so the driver holds every result even without a shared
disk. Latency is timed on the driver after all tasks finish
(``defers_timing``): every cell is timed on the same machine, alone.

A task lost with its worker or node (killed, out of memory, the node gone) is
the machine's failure, not the method's: its cells get no record, what the
worker finished before it died stays on disk, and the next run computes the
rest. The driver says which groups were lost.
"""

from __future__ import annotations

import os
from collections.abc import Iterable

from bench.run.executors.base import (
    Event,
    Executor,
    GroupTask,
    Handler,
    available_cpus,
    threads_per_worker,
)

MISSING = ("the ray executor needs Ray: pip install 'lowrank-bench[ray]' "
           "(or pip install 'ray[default]')")


def ray_available() -> bool:
    try:
        import ray  # noqa: F401
    except ImportError:
        return False
    return True


def _run_group(task: GroupTask) -> list[Event]:
    import torch

    from bench.run.worker import execute_group

    if task.threads:
        torch.set_num_threads(task.threads)
    out: list[Event] = []
    execute_group(task, out.append)
    return out


def lost_task(exc: BaseException) -> bool:
    """True when Ray lost the task with its worker or node (not an error of the code run)."""
    import ray.exceptions as rex

    if isinstance(exc, rex.RayTaskError):  # the function itself raised
        return False
    lost = tuple(getattr(rex, name) for name in (
        "WorkerCrashedError", "NodeDiedError", "ObjectLostError", "OwnerDiedError",
        "LocalRayletDiedError", "RaySystemError", "OutOfMemoryError", "TaskCancelledError")
        if hasattr(rex, name))
    return isinstance(exc, lost)


class RayExecutor(Executor):
    name = "ray"
    defers_timing = True
    return_payloads = True
    shares_disk = False  # nodes may not share the results directory

    def __init__(self, jobs: int = 0, address: str | None = None):
        super().__init__(jobs or 1)
        self.requested_jobs = jobs
        self.address = address if address is not None else os.environ.get("RAY_ADDRESS")
        self._threads = 1

    @property
    def threads(self) -> int:
        return self._threads

    def describe(self) -> str:
        where = self.address or "a local Ray instance"
        return f"ray on {where}, up to {self.jobs} groups at once x {self.threads} threads"

    def _events(self, ray, ref, task: GroupTask) -> list[Event]:
        try:
            return ray.get(ref)
        except Exception as exc:
            why = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
            if lost_task(exc):  # the machine's failure: no record, the next run redoes it
                return [Event("message", task.index, text=(
                    f"  {task.label}: Ray lost this group's worker ({why}); its unfinished "
                    "cells get no record and run again next time")),
                        Event("group_done", task.index)]
            events = [Event("worker_died", task.index, cell_id=c.id,
                            text=f"ray task failed: {why}") for c in task.cells]
            return [*events, Event("group_done", task.index)]

    def run(self, tasks: Iterable[GroupTask], handle: Handler) -> None:
        try:
            import ray
        except ImportError as exc:
            raise RuntimeError(MISSING) from exc
        started_here = not ray.is_initialized()
        if started_here:
            if self.address:
                ray.init(address=self.address, log_to_driver=False)
            else:
                ray.init(num_cpus=available_cpus(), include_dashboard=False,
                         log_to_driver=False)
        try:
            resources = ray.cluster_resources()
            cpus = int(resources.get("CPU", 1))
            n_gpus = int(resources.get("GPU", 0))
            self.jobs = self.requested_jobs or max(1, n_gpus or cpus)
            self._threads = threads_per_worker(self.jobs, cpus)
            gpus = 1 if n_gpus >= 1 else 0
            remote = ray.remote(num_cpus=self._threads, num_gpus=gpus, max_retries=0)(_run_group)
            inflight: dict = {}
            source = iter(tasks)
            exhausted = False
            while True:
                while not exhausted and len(inflight) < self.jobs:
                    task = next(source, None)
                    if task is None:
                        exhausted = True
                        break
                    task.threads = self._threads
                    task.device = "cuda" if gpus else "cpu"  # the worker's, not the driver's
                    inflight[remote.remote(task)] = task
                if not inflight:
                    break
                ready, _ = ray.wait(list(inflight), num_returns=1)
                for ref in ready:
                    task = inflight.pop(ref)
                    for ev in self._events(ray, ref, task):
                        handle(ev)
        finally:
            if started_here:
                ray.shutdown()
