"""What a run would do: cells grouped into units of work, each cell's state, the dry run."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.cells import Cell, expand
from bench.plugins import get_method
from bench.store import ResultStore
from bench.suite import Suite


def group_cells(cells: list[Cell], baseline_cached: Callable[[str], bool] | None = None,
                split: bool = False) -> OrderedDict[tuple, list[Cell]]:
    """Cells by the unit of work a worker takes: one per "train" method params on a
    (model, dataset, seed), and one per post method there, all of whose targets and
    recovery budgets stay together (one compression, fine-tuned per budget).

    Post methods start from the (model, dataset, seed)'s dense baseline. Where
    ``baseline_cached(baseline key)`` says it is not a checkpoint yet, they form one
    unit that trains it, unless ``split`` (workers that share the results directory):
    then the first post method's unit (the dense reference row, where the suite has
    one) trains it, and the other post methods' units come after every unit that needs
    no baseline, so that by the time a worker takes one the baseline is usually a
    checkpoint; a worker that gets there first waits for it (``GroupStages.baseline``
    holds a lock while it trains), so it is trained once. Units are returned in the
    order to dispatch them.
    """
    first: OrderedDict[tuple, list[Cell]] = OrderedDict()
    after: OrderedDict[tuple, list[Cell]] = OrderedDict()
    trains_baseline: dict[tuple, str] = {}  # group key -> the post method that trains it
    for c in cells:
        key: tuple = c.group_key()
        if get_method(c.method).kind == "train":
            first.setdefault((*key, c.training_key()), []).append(c)
        elif baseline_cached is not None and baseline_cached(c.baseline_key()):
            first.setdefault((*key, "post", c.method_label), []).append(c)
        elif not split:
            first.setdefault(key, []).append(c)
        elif trains_baseline.setdefault(key, c.method_label) == c.method_label:
            first.setdefault((*key, "post", c.method_label), []).append(c)
        else:
            after.setdefault((*key, "post", c.method_label), []).append(c)
    first.update(after)
    return first


def cell_state(store: ResultStore, cell: Cell, retry_failed: bool = False) -> str:
    """"done" (has a record to keep), "pending" (waiting for timing) or "todo"."""
    if store.is_done(cell.id, retry_failed):
        return "done"
    if store.has_pending(cell.id):
        return "pending"
    return "todo"


def record_work(r: dict) -> float:
    """Seconds of a record's own work, without the trainings it paid for (the plan adds
    each training once): its wall time `cell_s`, which holds the row's lr tuning and
    the fine-tunes of sibling budgets when this cell did them, less `trained_here_s`.
    Records from before that field take a training out of `cell_s` when what is left
    still covers the cell's own parts; records without `cell_s` sum those parts."""
    cost = r.get("cost", {})
    parts = sum(float(cost.get(k, 0.0)) for k in ("compress_s", "finetune_s", "eval_s",
                                                  "measure_s"))
    if "cell_s" not in cost:
        return parts
    work = float(cost["cell_s"])
    if "trained_here_s" in cost:
        return max(0.0, work - float(cost["trained_here_s"]))
    for key in ("baseline_train_s", "method_train_s"):
        trained = float(cost.get(key) or 0.0)
        if trained and work - trained >= parts:
            work -= trained
    return work


@dataclass
class Plan:
    """What a run would do: each cell's state and an estimate from earlier records."""

    rows: list[tuple[Cell, str]]
    estimate_s: float = 0.0
    estimated: int = 0  # cells to run that have an estimate
    unknown: int = 0  # cells to run with no earlier record to estimate from
    basis: int = 0  # records the estimate comes from

    @property
    def to_run(self) -> int:
        return sum(state != "done" for _, state in self.rows)


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def _mean_cost(records: list[dict], name: str) -> float | None:
    """The mean of a cost field over the records that have it (non-zero)."""
    return _mean([float(r["cost"][name]) for r in records if r["cost"].get(name)])


def plan_suite(suite: Suite, results_dir: str | Path, retry_failed: bool = False) -> Plan:
    """States of all cells and a serial time estimate from this directory's ok records.

    A cell's estimate is the mean work of records of the same method on the same
    model and dataset (else of any method there): each record's wall time less the
    trainings it paid for, so a row's lr tuning, done inside one of its cells, is
    spread over the row's budgets; each dense baseline and each "train"-method
    training without a checkpoint adds its recorded training seconds once (a
    "train" method without records, the dense baseline's).
    """
    store = ResultStore(results_dir)
    cells = expand(suite)
    plan = Plan([])
    records = [r for r in store.records() if r.get("status") == "ok"]
    plan.basis = len(records)
    for c in cells:
        state = cell_state(store, c, retry_failed)
        if state == "done":
            status = (store.load(c.id) or {}).get("status")
            state = "done" if status in ("ok", "not_applicable") else "failed"
        plan.rows.append((c, state))

    def where(**match: Any) -> list[dict]:
        return [r for r in records if all(r.get(k) == v for k, v in match.items())]

    trainings: set[str] = set()
    for c, state in plan.rows:
        if state == "done" or (state == "failed" and not retry_failed):
            continue
        same = where(model=c.model.display, dataset=c.dataset.display)
        if state == "pending":
            part = _mean([float(r["cost"].get("measure_s", 0.0)) for r in same])
        else:
            part = _mean([record_work(r) for r in same if r.get("method_name") == c.method]) \
                or _mean([record_work(r) for r in same])
        if part is None:
            plan.unknown += 1
            continue
        plan.estimated += 1
        plan.estimate_s += part
        if state == "pending":
            continue
        kind = get_method(c.method).kind
        key = c.training_key() if kind == "train" else c.baseline_key()
        if key in trainings or store.has_checkpoint(key):
            continue
        trainings.add(key)
        field_ = "method_train_s" if kind == "train" else "baseline_train_s"
        pool = [r for r in same if r.get("method_name") == c.method] if kind == "train" else same
        # a "train" method not recorded yet trains for the suite's training budget:
        # priced as the dense baseline's training
        plan.estimate_s += (_mean_cost(pool, field_)
                            or (_mean_cost(same, "baseline_train_s") if kind == "train"
                                else None) or 0.0)
    return plan


def format_plan(plan: Plan, suite: Suite, jobs: int = 1) -> str:
    width = max((len(c.describe()) for c, _ in plan.rows), default=0)
    lines = [f"suite '{suite.name}': {len(plan.rows)} cells, {plan.to_run} to run"]
    for c, state in plan.rows:
        lines.append(f"  {c.describe():<{width}}  {state:<8} {c.id}")
    counts = OrderedDict((s, 0) for s in ("done", "failed", "pending", "todo"))
    for _, state in plan.rows:
        counts[state] += 1
    lines.append("  " + ", ".join(f"{n} {s}" for s, n in counts.items()))
    if plan.to_run == 0:
        lines.append("nothing to run")
    elif plan.estimated:
        est = f"estimated time: {plan.estimate_s:.0f} s serial"
        if jobs > 1:
            est += f" (about {plan.estimate_s / jobs:.0f} s with {jobs} jobs, at best)"
        est += f", for {plan.estimated} of {plan.to_run} cells, from {plan.basis} earlier records"
        if plan.unknown:
            est += f"; {plan.unknown} cells have no earlier record to estimate from"
        lines.append(est)
    else:
        lines.append("estimated time: unknown (no earlier records in this results directory)")
    return "\n".join(lines)
