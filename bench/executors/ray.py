"""``--executor ray``: groups as Ray tasks, on a cluster or a local Ray instance.

Connects to ``RAY_ADDRESS`` when it is set (a running cluster), otherwise
starts a Ray instance on this machine and stops it afterwards. Ray is an
optional extra: ``pip install 'lowrank-bench[ray]'``.

Each task runs one group and asks Ray for ``threads`` CPUs (and one GPU when
the cluster has GPUs), so Ray's scheduler keeps nodes from being
oversubscribed. Workers write records and checkpoints into the results
directory when they can reach it (a shared disk) and also send records and
pending models back, so the driver holds every result even without a shared
disk. Latency is timed on the driver after all tasks finish
(``defers_timing``): every cell is timed on the same machine, alone.
"""

from __future__ import annotations

import os
from collections.abc import Iterable

from bench.executors.base import (
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


class RayExecutor(Executor):
    name = "ray"
    defers_timing = True
    return_payloads = True

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
            self.jobs = self.requested_jobs or max(1, cpus)
            self._threads = threads_per_worker(self.jobs, cpus)
            gpus = 1 if resources.get("GPU", 0) >= 1 else 0
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
                    inflight[remote.remote(task)] = task
                if not inflight:
                    break
                ready, _ = ray.wait(list(inflight), num_returns=1)
                for ref in ready:
                    task = inflight.pop(ref)
                    try:
                        events = ray.get(ref)
                    except Exception as exc:  # the task or its worker died
                        events = [Event("worker_died", task.index, cell_id=c.id,
                                        text=f"ray task failed: {type(exc).__name__}: {exc}")
                                  for c in task.cells]
                        events.append(Event("group_done", task.index))
                    for ev in events:
                        handle(ev)
        finally:
            if started_here:
                ray.shutdown()
