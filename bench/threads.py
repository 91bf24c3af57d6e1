"""How many threads training gets, and how OpenMP waits: a suite on a busy machine.

With every core already busy, torch's default (one OpenMP thread per core,
each spinning while it waits for work) makes the threads fight the other
processes for the cores: the quick suite took 6.6x longer at load ~4 on 2
cores than idle. Two remedies, both applied before any work starts:

- ``OMP_WAIT_POLICY=PASSIVE`` (set with ``os.environ.setdefault`` when the
  ``bench`` package is imported, so before torch loads OpenMP; an explicit
  setting in the environment wins): idle OpenMP threads sleep instead of
  spinning, so they do not steal the cores that others' work needs.
- training threads from the cores actually free: the cores this process may
  use (``sched_getaffinity``) minus the 1-minute load average (other work),
  rounded, split between worker processes, at least 1
  (:func:`training_threads`). ``LOWRANK_BENCH_THREADS``, else ``OMP_NUM_THREADS``,
  overrides the choice. A serial run applies it in its own process for the
  run's duration (:func:`apply_training_threads`); ``--jobs N`` workers get it
  at start (bench.run.executors.local).

Latency timing is not affected: it always runs with the suite's fixed,
recorded ``latency.threads``.

This module imports nothing heavy: ``bench/__init__.py`` calls
:func:`configure_openmp_wait` before torch is imported.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable

WAIT_POLICY_ENV = "OMP_WAIT_POLICY"
OVERRIDE_ENV = "LOWRANK_BENCH_THREADS"


def configure_openmp_wait(policy: str = "PASSIVE") -> str:
    """Set ``OMP_WAIT_POLICY`` unless the user did; returns the policy in effect.

    Takes effect only if OpenMP has not been loaded yet (torch not imported).
    """
    return os.environ.setdefault(WAIT_POLICY_ENV, policy)


def available_cpus() -> int:
    """Cores this process may run on (its affinity mask), else the machine's count."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def load_1m() -> float | None:
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):
        return None


def training_threads(cpus: int, load: float | None, jobs: int = 1, own_load: float = 0.0,
                     override: str | None = None) -> int:
    """Threads per worker for training: free cores split between ``jobs`` workers.

    ``load`` is the 1-minute load average (None: unknown, all cores count as
    free); ``own_load`` is the part of it that is this run's own work (e.g. a
    worker re-deciding after it started), which does not count as busy.
    ``override`` (the ``LOWRANK_BENCH_THREADS`` value) wins when it is a
    positive integer.
    """
    if override not in (None, ""):
        try:
            value = int(override)
        except ValueError:
            value = 0
        if value < 1:
            raise ValueError(f"{OVERRIDE_ENV}={override!r}: expected a positive integer")
        return value
    cpus, jobs = max(1, cpus), max(1, jobs)
    busy = max(0.0, (load or 0.0) - own_load)
    free = max(0.0, cpus - busy)
    per_worker = math.floor(free / jobs + 0.5)
    return max(1, min(cpus // jobs or 1, per_worker))


def threads_override() -> tuple[str, str] | None:
    """(variable, value) of the user's explicit thread setting, if any."""
    for name in (OVERRIDE_ENV, "OMP_NUM_THREADS"):
        if os.environ.get(name):
            return name, os.environ[name]
    return None


def choose_training_threads(jobs: int = 1, own_load: float = 0.0) -> tuple[int, str]:
    """:func:`training_threads` on this machine now, and a line saying why."""
    cpus, load = available_cpus(), load_1m()
    override = threads_override()
    threads = training_threads(cpus, load, jobs, own_load, override and override[1])
    if override:
        why = f"{override[0]}={override[1]}"
    else:
        shown = "unknown" if load is None else f"{load:.2f}"
        why = f"{cpus} cores, load {shown}, {jobs} worker(s)"
    return threads, f"training threads per worker: {threads} ({why}; " \
                    f"{WAIT_POLICY_ENV}={os.environ.get(WAIT_POLICY_ENV, 'unset')})"


def apply_training_threads(executor_threads: int | None,
                           say: Callable[[str], None] | None = None) -> Callable[[], None]:
    """For a run whose cells train in this process (``executor_threads`` None): set torch's
    threads from :func:`choose_training_threads`; returns the function that restores them.
    Executors with their own workers set the workers' threads themselves: nothing to do."""
    if executor_threads is not None:
        return lambda: None
    import torch

    old = torch.get_num_threads()
    threads, why = choose_training_threads()
    torch.set_num_threads(threads)
    if say is not None:
        say(why)
    return lambda: torch.set_num_threads(old)
