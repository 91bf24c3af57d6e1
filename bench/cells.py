"""Expand a suite into cells, and the content-hash keys that make reruns cheap.

A cell is (model, dataset, seed, method, params, target) plus the budgets and
measurement settings that determine its result. Its id hashes all of that and
the harness version, so a finished cell is never recomputed and a changed
config reruns only what it changes. Labels and the suite name are display
only and are not part of any key.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from pydantic import BaseModel, ConfigDict

from bench import HARNESS_VERSION
from bench.method import Target
from bench.plugins import get_method
from bench.suite import DatasetSpec, LatencySpec, ModelSpec, Suite, TrainBudget


def content_hash(obj: Any, length: int = 16) -> str:
    blob = json.dumps(obj, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:length]


def _spec(m: BaseModel) -> dict:
    d = m.model_dump(mode="json")
    d.pop("label", None)
    d.pop("seeds", None)  # which seeds run is not part of one cell's content
    return d


class Cell(BaseModel):
    model_config = ConfigDict(frozen=True)

    model: ModelSpec
    dataset: DatasetSpec
    seed: int
    method: str
    method_label: str
    params: dict[str, Any]
    target: dict[str, float] | None
    train: TrainBudget
    finetune: TrainBudget
    latency: LatencySpec
    # With a suite's ``recovery`` axis: {"epochs": this cell's budget, "budgets": all of
    # them, "lr_grid": the recovery lrs tuned per row, and with lr_chosen_on: first-seed
    # "lr_from_seed": the seed whose choice every seed reuses}; ``finetune.epochs`` is the
    # budget.
    recovery: dict[str, Any] | None = None

    @property
    def target_obj(self) -> Target | None:
        if self.target is None:
            return None
        (metric, ratio), = self.target.items()
        return Target(metric, ratio)  # type: ignore[arg-type]

    @property
    def target_label(self) -> str:
        t = self.target_obj
        return t.label if t else "dense"

    def baseline_key(self) -> str:
        return content_hash({"v": HARNESS_VERSION, "model": _spec(self.model),
                             "dataset": _spec(self.dataset), "seed": self.seed,
                             "train": self.train.model_dump(mode="json")})

    def training_key(self) -> str:
        """Key of a "train" method's own trained model: shared by all its targets."""
        return content_hash({"base": self.baseline_key(), "method": self.method,
                             "params": self.params})

    def group_key(self) -> tuple[str, str, int]:
        return (content_hash(_spec(self.model)), content_hash(_spec(self.dataset)), self.seed)

    @property
    def id(self) -> str:
        content = {"v": HARNESS_VERSION, "base": self.baseline_key(),
                   "method": self.method, "params": self.params,
                   "target": self.target,
                   "finetune": self.finetune.model_dump(mode="json"),
                   "latency": self.latency.model_dump(mode="json")}
        if self.recovery is not None:  # absent without the axis: those ids stay as they were
            content["recovery"] = self.recovery
        return content_hash(content)

    @property
    def recovery_epochs(self) -> int | None:
        return None if self.recovery is None else int(self.recovery["epochs"])

    def family_key(self) -> str:
        """The row this cell belongs to, whatever its recovery budget: the cells that share
        one compression (or one training) and one lr choice."""
        finetune = self.finetune.model_dump(mode="json")
        finetune.pop("epochs", None)
        recovery = {k: v for k, v in (self.recovery or {}).items() if k != "epochs"}
        return content_hash({"base": self.baseline_key(), "method": self.method,
                             "params": self.params, "target": self.target,
                             "finetune": finetune, "recovery": recovery})

    def at_recovery(self, epochs: int, lr: float | None = None) -> Cell:
        """This row at another recovery budget (and, for running it, with the chosen lr)."""
        update: dict[str, Any] = {"epochs": epochs}
        if lr is not None:
            update["lr"] = lr
        return self.model_copy(update={
            "finetune": self.finetune.model_copy(update=update),
            "recovery": {**(self.recovery or {}), "epochs": epochs}})

    @property
    def lr_donor_seed(self) -> int | None:
        """The seed whose recovery-lr choice this row reuses; None when it tunes its own
        (every seed tunes, or this is the seed that tunes for the others)."""
        donor = (self.recovery or {}).get("lr_from_seed")
        return None if donor is None or int(donor) == self.seed else int(donor)

    def at_seed(self, seed: int) -> Cell:
        """The same row and budget on another seed."""
        return self.model_copy(update={"seed": seed})

    def describe(self) -> str:
        recovery = "" if self.recovery is None else f" recovery={self.recovery['epochs']}ep"
        return (f"{self.model.display}/{self.dataset.display} seed={self.seed} "
                f"{self.method_label} {self.target_label}{recovery}")


def lr_donors(cell: Cell) -> list[Cell]:
    """The cells (every recovery budget) of this row on the seed whose lr choice it reuses
    under ``lr_chosen_on: first-seed``; empty when the cell tunes its own."""
    if cell.lr_donor_seed is None:
        return []
    donor = cell.at_seed(cell.lr_donor_seed)
    return [donor.at_recovery(int(e)) for e in (cell.recovery or {}).get("budgets", [])]


def method_label(name: str, label: str | None, params: dict, grid_keys: list[str]) -> str:
    if label:
        suffix = ",".join(f"{k}={params[k]}" for k in grid_keys)
        return f"{label}[{suffix}]" if grid_keys else label
    if grid_keys:
        return f"{name}[" + ",".join(f"{k}={params[k]}" for k in grid_keys) + "]"
    return name


def bind_target(cls: type, params: dict, target: dict[str, float] | None) -> dict:
    """A cell's parameters: a method whose training depends on the target binds it in.

    A method may define ``params_for_target(params, target) -> params``; the
    bound target is then part of the cell's params, hence of its training key,
    so a "train" method trains one model per target instead of sharing one.
    """
    bind = getattr(cls, "params_for_target", None)
    if bind is None or target is None:
        return params
    return cls.Params(**bind(dict(params), dict(target))).model_dump(mode="json")


def recovery_budgets(suite: Suite, seeds: list[int]
                     ) -> list[tuple[TrainBudget, dict[str, Any] | None]]:
    """(fine-tune budget, the cell's ``recovery``) per recovery budget of the suite: the
    ``finetune`` block alone without the axis. ``seeds``: the model's, whose first tunes
    the lr for all of them under ``lr_chosen_on: first-seed``."""
    if suite.recovery is None:
        return [(suite.finetune, None)]
    rec = suite.recovery
    donor = {"lr_from_seed": seeds[0]} if rec.lr_chosen_on == "first-seed" else {}
    return [(suite.finetune.model_copy(update={"epochs": e}),
             {"epochs": e, "budgets": list(rec.epochs), "lr_grid": list(rec.lr_grid), **donor})
            for e in rec.epochs]


def expand(suite: Suite) -> list[Cell]:
    """All cells of a suite, grouped by (model, dataset, seed) in a stable order."""
    cells: list[Cell] = []
    for model in suite.models:
        for dataset in suite.datasets:
            # the seed that tunes for the others is the whole suite's first, in a slice too
            budgets = recovery_budgets(suite, list(model.seeds or suite.full_suite.seeds))
            for seed in (model.seeds or suite.seeds):
                for spec in suite.methods:
                    cls = get_method(spec.name)
                    targets = spec.targets if spec.targets is not None else suite.targets
                    for params in spec.param_sets():
                        full = cls.Params(**params).model_dump(mode="json")
                        label = method_label(spec.name, spec.label, params, sorted(spec.grid))
                        for target in (targets if cls.uses_target else [None]):
                            for finetune, recovery in budgets:
                                cells.append(Cell(
                                    model=model, dataset=dataset, seed=seed, method=spec.name,
                                    method_label=label, params=bind_target(cls, full, target),
                                    target=target, train=suite.train, finetune=finetune,
                                    latency=suite.latency, recovery=recovery))
    seen: set[str] = set()
    unique = []
    for c in cells:
        if c.id not in seen:
            seen.add(c.id)
            unique.append(c)
    return unique
