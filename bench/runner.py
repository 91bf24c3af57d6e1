"""The front door of the run machinery (the parts live in ``bench.run``).

A suite expands into cells; cells are grouped by (model, dataset, seed) (plus
each "train" method's parameter set); an executor runs the groups; the driver
times whatever a parallel worker left pending and writes every record. See
``bench/run/__init__.py`` for the module map.
"""

from __future__ import annotations

from bench.run.driver import RunSummary, run_suite
from bench.run.errors import StageFailedError, TimingHandoffError, WorkerDiedError
from bench.run.pipeline import CellPipeline, PendingCell
from bench.run.plan import Plan, cell_state, format_plan, group_cells, plan_suite
from bench.run.stages import GroupStages, budget_kwargs, default_device, seed_everything
from bench.run.worker import execute_group

__all__ = [
    "CellPipeline", "GroupStages", "PendingCell", "Plan", "RunSummary", "StageFailedError",
    "TimingHandoffError", "WorkerDiedError", "budget_kwargs", "cell_state", "default_device",
    "execute_group", "format_plan", "group_cells", "plan_suite", "run_suite", "seed_everything",
]
