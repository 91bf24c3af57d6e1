"""The training budget ledger of a cell: what training its deployed model got, checked.

The rule (docs/fairness.md, "Fairness: one budget for every row"): every row gets the
same total number of optimizer steps, the suite's training budget plus its
fine-tuning budget, each counted as ``epochs x ceil(train split / batch size)``.

- ``pretrain``: the shared dense baseline's training (train budget). Part of
  every post-training row, the dense reference included.
- ``method_train``: a model trained from scratch for the row (a "train"-kind
  method, or dense-small's narrower model): it spends the train budget and
  replaces ``pretrain``, whose weights the deployed model never saw.
- ``regularize``: a method's own phase on the trained model (funnel's gate
  regularization): it spends part of the fine-tune budget, and the harness
  fine-tunes for the rest.
- ``finetune``: the harness's fine-tuning, dense reference included.

Each phase also carries the optimizer settings it actually used. A setting
that differs from the suite's (train settings for the first two phases,
fine-tune settings for the last two) must be declared: the phase names the
method parameter that sets it and that parameter holds the value used.
Anything else, a different total included, is written as the ledger's
``violation`` text. Optimizer steps taken outside the harness's loop (a method
running its own optimizer) are counted by a process-wide hook and are a
violation too.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from torch.optim.optimizer import register_optimizer_step_post_hook

PHASES = ("pretrain", "method_train", "regularize", "finetune")
# Which of the suite's budgets a phase is charged to (and whose settings it must use).
CHARGED_TO = {"pretrain": "train", "method_train": "train", "regularize": "finetune",
              "finetune": "finetune"}
SETTINGS = ("name", "lr", "weight_decay", "schedule", "warmup_epochs")
# A budget's field for each optimizer setting of a phase.
BUDGET_FIELD = {"name": "optimizer", "lr": "lr", "weight_decay": "weight_decay",
                "schedule": "schedule", "warmup_epochs": "warmup_epochs"}


def recorded_lr_choice(record: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """The recovery-lr choice (``ledger.tuning`` with ``chosen_lr``) of an ok record, if any."""
    tuning = ((record or {}).get("ledger") or {}).get("tuning")
    if record and record.get("status") == "ok" and tuning and "chosen_lr" in tuning:
        return dict(tuning)
    return None


def ledger_phase(context_phase: str) -> str:
    """The ledger phase of a training run started as ``ctx.train(phase=...)``."""
    if context_phase in PHASES:
        return context_phase
    if context_phase == "train":
        return "method_train"
    return "regularize"


def steps_per_epoch(n_train: int, batch_size: int) -> int:
    return math.ceil(n_train / batch_size)


def budget_steps(train: Mapping[str, Any], finetune: Mapping[str, Any], n_train: int) -> int:
    """The suite's total: train epochs and fine-tune epochs, in optimizer steps."""
    return phase_budget(train, n_train) + phase_budget(finetune, n_train)


def phase_budget(budget: Mapping[str, Any], n_train: int) -> int:
    return int(budget["epochs"]) * steps_per_epoch(n_train, int(budget["batch_size"]))


def settings_of(budget: Mapping[str, Any]) -> dict[str, Any]:
    """The optimizer settings of a suite budget, as a ledger phase writes them."""
    return {k: budget[f] for k, f in BUDGET_FIELD.items()}


def phase_entry(phase: str, stats: Any, declared: Mapping[str, str] | None = None) -> dict:
    """A ledger phase from :class:`bench.train.TrainStats` (or anything with its fields)."""
    entry = {"phase": phase, "epochs": round(float(stats.epochs), 6), "steps": int(stats.steps),
             "batch_size": int(stats.batch_size), "optimizer": dict(stats.optimizer)}
    if declared:
        entry["declared"] = dict(declared)
    return entry


def planned_phase(phase: str, budget: Mapping[str, Any], n_train: int) -> dict:
    """The phase a budget prescribes (for a checkpoint saved before ledgers existed)."""
    steps = phase_budget(budget, n_train)
    spe = steps_per_epoch(n_train, int(budget["batch_size"]))
    return {"phase": phase, "epochs": steps / spe, "steps": steps,
            "batch_size": int(budget["batch_size"]), "optimizer": settings_of(budget)}


def history(phases: list[dict]) -> list[dict]:
    """The phases the deployed model went through: a from-scratch ``method_train``
    replaces the ``pretrain`` of the dense baseline it did not start from."""
    if any(p["phase"] == "method_train" for p in phases):
        return [p for p in phases if p["phase"] != "pretrain"]
    return list(phases)


def finetune_steps_left(phases: list[dict], finetune: Mapping[str, Any], n_train: int) -> int:
    """Fine-tune steps the harness still owes: the fine-tune budget less ``regularize``."""
    spent = sum(p["steps"] for p in phases if p["phase"] == "regularize")
    return max(0, phase_budget(finetune, n_train) - spent)


def _resolved(value: Any, suite_value: Any) -> Any:
    return suite_value if value is None else value


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return math.isclose(float(a), float(b), rel_tol=1e-9, abs_tol=1e-15)
    return a == b


def check(phases: list[dict], *, train: Mapping[str, Any], finetune: Mapping[str, Any],
          n_train: int, params: Mapping[str, Any] | None = None,
          unaccounted_steps: int = 0) -> list[str]:
    """Every way ``phases`` break the rule, as sentences (empty: the row is fair)."""
    params = params or {}
    budgets = {"train": train, "finetune": finetune}
    problems: list[str] = []
    counts = {name: sum(p["phase"] == name for p in phases) for name in PHASES}
    for name in ("pretrain", "method_train", "finetune"):
        if counts[name] > 1:
            problems.append(f"{counts[name]} {name} phases (at most one)")
    if counts["pretrain"] and counts["method_train"]:
        problems.append("both pretrain and method_train in the deployed model's history")
    for p in phases:
        if p["phase"] not in PHASES:
            problems.append(f"unknown phase '{p['phase']}' (allowed: {', '.join(PHASES)})")
            continue
        suite = budgets[CHARGED_TO[p["phase"]]]
        declared = p.get("declared") or {}
        for key in SETTINGS:
            used, expected = p["optimizer"].get(key), suite[BUDGET_FIELD[key]]
            if _same(used, expected):
                continue
            where = f"{p['phase']}: {key} {used!r} instead of the suite's {expected!r}"
            param = declared.get(key)
            if param is None:
                problems.append(f"{where}, not declared by any method parameter")
            elif param not in params:
                problems.append(f"{where}, declared by '{param}', which is not a parameter")
            elif not _same(_resolved(params[param], expected), used):
                problems.append(f"{where}, but parameter '{param}' is {params[param]!r}")
        if int(p.get("batch_size", suite["batch_size"])) != int(suite["batch_size"]):
            problems.append(f"{p['phase']}: batch size {p['batch_size']} instead of the "
                            f"suite's {suite['batch_size']}")
    if unaccounted_steps:
        problems.append(f"{unaccounted_steps} optimizer steps outside the harness's training "
                        "loop")
    total = sum(int(p["steps"]) for p in phases) + unaccounted_steps
    expected_total = budget_steps(train, finetune, n_train)
    if total != expected_total:
        problems.append(
            f"{total} optimizer steps in all, the suite's budget is {expected_total} "
            f"({phase_budget(train, n_train)} train + {phase_budget(finetune, n_train)} "
            "fine-tune)")
    return problems


def build_ledger(phases: list[dict], *, train: Mapping[str, Any], finetune: Mapping[str, Any],
                 n_train: int, params: Mapping[str, Any] | None = None,
                 unaccounted_steps: int = 0) -> dict:
    """The record's ``ledger``: the deployed model's phases, totals and any violation."""
    kept = history(phases)
    problems = check(kept, train=train, finetune=finetune, n_train=n_train, params=params,
                     unaccounted_steps=unaccounted_steps)
    return {"phases": kept,
            "total_steps": sum(int(p["steps"]) for p in kept) + unaccounted_steps,
            "budget_steps": budget_steps(train, finetune, n_train),
            "violation": "; ".join(problems) or None}


class StepCounter:
    """Optimizer steps taken anywhere in this process while it is active."""

    def __init__(self) -> None:
        self.steps = 0


@contextmanager
def count_optimizer_steps() -> Iterator[StepCounter]:
    """Count every ``torch.optim`` step in the process (the harness's loop included)."""
    counter = StepCounter()

    def hook(optimizer, args, kwargs) -> None:
        counter.steps += 1

    handle = register_optimizer_step_post_hook(hook)
    try:
        yield counter
    finally:
        handle.remove()


# -- for the runner: a cell's budgets and ledger -----------------------------------------


def cell_budgets(cell: Any) -> dict[str, dict[str, Any]]:
    """The suite's budgets of a cell (``bench.cells.Cell``) as ``MethodContext.budget``."""
    return {"train": cell.train.model_dump(), "finetune": cell.finetune.model_dump()}


def cell_ledger(cell: Any, phases: list[dict], n_train: int,
                unaccounted_steps: int = 0) -> dict:
    """The record's ``ledger`` of a cell whose model went through ``phases``."""
    budgets = cell_budgets(cell)
    return build_ledger(phases, train=budgets["train"], finetune=budgets["finetune"],
                        n_train=n_train, params=cell.params, unaccounted_steps=unaccounted_steps)
