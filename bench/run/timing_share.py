"""Time each architecture of a row once; its other seeds and budgets reuse the figures.

A row's cells (one method, params and target on one model and dataset) often
deploy the very same architecture on every seed and at every recovery budget:
SVD at a fixed rank, structured pruning at a fixed ratio, a from-scratch model.
Weights do not change which kernels run, so timing each of them again buys only
another sample of timing noise, at ~30 s a cell on a 2-core CPU. The runner
therefore times the first cell of each (row, architecture fingerprint) and gives
the others its latency figures, with ``metrics.timing.shared_from`` naming the
cell that was timed. Counts (params, MACs, size) are still taken per cell.

Figures are only shared between records taken on the same CPU model, kernel
instruction set, core count and torch build (:data:`SAME_TIMING_ENV`); a
different architecture (funnel's gates, svd-accel's per-layer choice, a rank that
moved with the seed) is timed on its own. ``lowrank-bench run --time-each-cell``
turns the sharing off.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from bench.cells import Cell, content_hash
from bench.measure.deploy import TIMING_KEYS
from bench.measure.environment import environment
from bench.store import ResultStore

# env fields two records must share for one's timing to stand for the other's
SAME_TIMING_ENV: tuple[str, ...] = ("cpu", "cpu_capability", "cpu_cores_available", "torch",
                                    "gpu")


def row_key(cell: Cell) -> str:
    """The row a cell belongs to whatever its seed and recovery budget, with its timing spec."""
    return content_hash({"model": cell.model.model_dump(mode="json"),
                         "dataset": cell.dataset.model_dump(mode="json"),
                         "method": cell.method, "params": cell.params, "target": cell.target,
                         "latency": cell.latency.model_dump(mode="json")})


def timing_part(metrics: dict[str, Any]) -> dict[str, Any]:
    """The timed figures of a record's metrics."""
    return {k: metrics[k] for k in TIMING_KEYS if k in metrics}


def same_timing_env(a: dict[str, Any] | None, b: dict[str, Any] | None) -> bool:
    a, b = a or {}, b or {}
    return all(a.get(k) == b.get(k) for k in SAME_TIMING_ENV) and a.get("cpu") is not None


@dataclass(frozen=True)
class Donor:
    cell_id: str
    timed: dict[str, Any]


class SharedTimings:
    """Timed figures by (row, architecture), from this run and from the store's records."""

    def __init__(self, store: ResultStore | None = None):
        self._store = store
        self._env = environment()
        self._known: dict[tuple[str, str], Donor] | None = None

    def _index(self) -> dict[tuple[str, str], Donor]:
        if self._known is None:
            self._known = {}
            for rec in self._store.records() if self._store is not None else []:
                self._learn(rec)
        return self._known

    def _learn(self, rec: dict[str, Any]) -> None:
        timing = (rec.get("metrics") or {}).get("timing") or {}
        if (rec.get("status") != "ok" or "shared_from" in timing or not timing.get("architecture")
                or not same_timing_env(rec.get("env"), self._env)):
            return
        try:
            cell = Cell.model_validate(rec["cell"])
        except Exception:  # a record of an older cell schema: never a donor
            return
        self._index().setdefault((row_key(cell), timing["architecture"]),
                                 Donor(rec["cell_id"], timing_part(rec["metrics"])))

    def find(self, cell: Cell, fingerprint: str) -> Donor | None:
        donor = self._index().get((row_key(cell), fingerprint))
        return donor if donor is not None and donor.cell_id != cell.id else None

    def add(self, cell: Cell, fingerprint: str, metrics: dict[str, Any]) -> None:
        """Remember a cell just timed here."""
        self._index().setdefault((row_key(cell), fingerprint),
                                 Donor(cell.id, timing_part(metrics)))
