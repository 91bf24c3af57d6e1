"""Recompute committed records from scratch and compare their figures.

A reference record is only worth committing if another machine gets the same
result from the same suite. ``lowrank-bench verify SUITE --only ...`` runs the
sliced cells again in an empty temporary results directory (dense baselines
and training-time methods retrained too, so nothing is reused) and compares,
cell by cell, the figures a leaderboard is built from: test and validation
top-1, MACs, params and the per-layer ranks a method chose. Latency is not
compared: it is a property of the machine and the moment, not of the cell.

Methods that decide from timings can legitimately differ between machines;
:data:`TIMING_DECIDED` names them and says why, and their differences are
reported as expected rather than as failures.
"""

from __future__ import annotations

import math
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.cells import expand
from bench.store import ResultStore
from bench.suite import Suite

COMPARED: tuple[tuple[str, str], ...] = (
    ("status", "status"),
    ("top1", "metrics.top1"),
    ("val_top1", "metrics.val_top1"),
    ("macs", "metrics.macs"),
    ("params", "metrics.params"),
    ("ranks", "method_info.ranks"),
)

TIMING_DECIDED: dict[str, str] = {
    "svd-accel": "keeps each layer dense or factorized, and rounds its rank, from paired "
                 "timings of that layer on the machine that runs it; where the two forms time "
                 "within noise of each other another CPU may decide otherwise, and then its "
                 "ranks, MACs and accuracy differ",
}


def lookup(record: dict[str, Any], path: str) -> Any:
    """The value at a dotted ``path`` of a record, or None where any part is missing."""
    value: Any = record
    for part in path.split("."):
        if not isinstance(value, dict) or part not in value:
            return None
        value = value[part]
    return value


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, float) and isinstance(b, float):
        return a == b or (math.isnan(a) and math.isnan(b))
    return a == b


@dataclass
class CellCheck:
    """One cell's comparison: which figures differ, and whether that is expected."""

    cell_id: str
    label: str
    method: str
    status: str  # "same" | "differs" | "differs (expected)" | "no committed record" | ...
    differences: list[tuple[str, Any, Any]] = field(default_factory=list)

    @property
    def failed(self) -> bool:
        return self.status == "differs" or self.status.startswith("recompute ")


def compare_records(committed: dict[str, Any], fresh: dict[str, Any]) -> list[tuple[str, Any,
                                                                                     Any]]:
    """``(figure, committed value, recomputed value)`` for each compared figure that differs."""
    out = []
    for name, path in COMPARED:
        a, b = lookup(committed, path), lookup(fresh, path)
        if not _same(a, b):
            out.append((name, a, b))
    return out


def check_cells(suite: Suite, committed: ResultStore, fresh: ResultStore) -> list[CellCheck]:
    """Compare every cell of ``suite`` between the committed and the recomputed store."""
    checks = []
    for cell in expand(suite):
        label = (f"{cell.model.display}/{cell.dataset.display} seed={cell.seed} "
                 f"{cell.method_label} {cell.target_label}")
        old, new = committed.load(cell.id), fresh.load(cell.id)
        if old is None:
            checks.append(CellCheck(cell.id, label, cell.method, "no committed record"))
            continue
        if new is None or new.get("status") != "ok" and old.get("status") == "ok":
            state = "no record" if new is None else new.get("status")
            checks.append(CellCheck(cell.id, label, cell.method, f"recompute {state}"))
            continue
        diffs = compare_records(old, new)
        if not diffs:
            status = "same"
        elif cell.method in TIMING_DECIDED:
            status = "differs (expected)"
        else:
            status = "differs"
        checks.append(CellCheck(cell.id, label, cell.method, status, diffs))
    return checks


def verify_suite(suite: Suite, results_dir: Path, *, data_root: str | None = None,
                 workdir: Path | None = None,
                 run: Callable[..., Any] | None = None) -> list[CellCheck]:
    """Recompute ``suite`` (usually a slice) in an empty directory and compare with
    ``results_dir``. ``workdir`` keeps the recomputed records (default: a temp dir)."""
    if run is None:
        from bench.run.driver import run_suite as run
    committed = ResultStore(results_dir)
    if workdir is not None:
        run(suite, workdir, data_root=data_root, say=lambda line: None)
        return check_cells(suite, committed, ResultStore(workdir))
    with tempfile.TemporaryDirectory(prefix="lowrank-verify-") as tmp:
        run(suite, Path(tmp), data_root=data_root, say=lambda line: None)
        return check_cells(suite, committed, ResultStore(tmp))


def format_checks(checks: list[CellCheck]) -> str:
    """A plain-text table of the comparison, with the reason for expected differences."""
    lines = []
    for c in checks:
        lines.append(f"  {c.status:<20} {c.label}  [{c.cell_id}]")
        for name, a, b in c.differences:
            lines.append(f"      {name}: committed {_short(a)} | recomputed {_short(b)}")
    same = sum(c.status == "same" for c in checks)
    failed = sum(c.failed for c in checks)
    lines.append(f"{same} same, {failed} differ or failed, "
                 f"{len(checks) - same - failed} other, of {len(checks)} cells")
    for method in sorted({c.method for c in checks if c.status == "differs (expected)"}):
        lines.append(f"note: {method} {TIMING_DECIDED[method]}")
    return "\n".join(lines)


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 120 else text[:117] + "..."
