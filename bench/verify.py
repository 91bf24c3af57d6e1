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

Where the recompute runs on the same CPU model and torch build as the
committed record (:data:`SAME_MACHINE_ENV` of the records' ``env``), every
figure must be equal. On another CPU or torch build other kernels run (chosen
per instruction set, with another reduction order), so the accuracies may move
in the last bits and then by a test sample or two: each accuracy is then
judged against the committed seed spread, the max - min of that figure over
the committed ok records of the same row (the same cell but for its seed):
"equal", "within the committed seed spread" or "outside" it. MACs, params and
ranks are structural: where every committed seed of the row chose the same
(a rule that fixes the structure) they must be equal on any CPU; where the
seeds chose differently (the trained weights decide: svd's global or energy
ranks, pruning's global scores, funnel's gates) MACs and params are judged
against their seed spread like accuracies, and ranks as "within" with them.
The status must be equal everywhere. Only "outside" (and any
difference on the same CPU and torch build) fails. The judging is in pure
functions on record dicts: :func:`same_machine`, :func:`seed_spreads`,
:func:`judge_figure`, :func:`check_record`.

Before any compute the recompute runs the same preflight as ``run``
(:func:`bench.preflight.preflight`): missing data stops it with the same error.
"""

from __future__ import annotations

import json
import math
import tempfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.cells import expand, lr_donors
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

# the env fields that make two records' floating point comparable bit for bit
SAME_MACHINE_ENV: tuple[str, ...] = ("cpu", "torch")
# figures that move with floating-point detail: judged against the seed spread on another CPU
ACCURACY: tuple[str, ...] = ("top1", "val_top1")
# structure a method may choose from the trained weights (svd's global or energy ranks,
# pruning's global channel scores, funnel's gates): another CPU trains other weights, so
# on another CPU these are judged against how far the row's committed seeds moved them
# (zero when every seed chose the same structure: then they must be equal)
STRUCTURE: tuple[str, ...] = ("macs", "params", "ranks")

# outcomes of one figure; only OUTSIDE and DIFFERS fail
EQUAL, WITHIN, OUTSIDE, DIFFERS, EXPECTED = "equal", "within", "outside", "differs", "expected"
OUTCOME_NAMES = {
    EQUAL: "equal",
    WITHIN: "within the committed seed spread",
    OUTSIDE: "outside it",
    DIFFERS: "differ on the same CPU and torch build",
    EXPECTED: "differ as expected (method decides from timings)",
}
_TOLERANCE = 1e-9  # float noise in a max - min of accuracies


class RecomputeStopped(RuntimeError):
    """The recompute could not run its cells (the environment, not the cells); nothing compared."""


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


def _number(value: Any) -> bool:
    return (isinstance(value, (int, float)) and not isinstance(value, bool)
            and not math.isnan(value))


def same_machine(committed_env: dict[str, Any] | None,
                 recomputed_env: dict[str, Any] | None) -> bool:
    """Whether two records' ``env`` name the same CPU model and torch build (unknown: no)."""
    a, b = committed_env or {}, recomputed_env or {}
    if not all(a.get(k) is not None and a.get(k) == b.get(k) for k in SAME_MACHINE_ENV):
        return False
    # the kernels' instruction set, where both records know it (older records do not)
    known = a.get("cpu_capability") is not None and b.get("cpu_capability") is not None
    return not known or a["cpu_capability"] == b["cpu_capability"]


def row_key(record: dict[str, Any]) -> str:
    """The record's row: its suite and cell content without the seed (nor the model's seed
    list, which says which seeds run, not what one cell is)."""
    cell = record.get("cell")
    if isinstance(cell, dict):
        content = {k: v for k, v in cell.items() if k != "seed"}
        if isinstance(content.get("model"), dict):
            content["model"] = {k: v for k, v in content["model"].items() if k != "seeds"}
    else:  # a record without its cell config: the fields that name the row
        content = {k: record.get(k) for k in ("model", "dataset", "method", "method_name",
                                                "params", "target")}
    return json.dumps([record.get("suite"), content], sort_keys=True, default=str)


@dataclass(frozen=True)
class Spread:
    """A figure's spread over the committed seeds of one row: max - min for a number; for
    a non-number (ranks) 1 when the seeds chose different values, else 0."""

    width: float | None  # None with fewer than two seeds
    seeds: int


def seed_spreads(records: Iterable[dict[str, Any]]) -> dict[str, dict[str, Spread]]:
    """Row key (:func:`row_key`) -> accuracy figure -> its spread over the ok records' seeds."""
    values: dict[str, dict[str, dict[Any, Any]]] = {}
    for r in records:
        if r.get("status") != "ok":
            continue
        seed = r.get("seed", lookup(r, "cell.seed"))
        row = values.setdefault(row_key(r), {})
        for name in ACCURACY + STRUCTURE:
            v = lookup(r, dict(COMPARED)[name])
            if _number(v):
                row.setdefault(name, {})[seed] = float(v)
            elif v is not None and not isinstance(v, (int, float)):
                row.setdefault(name, {})[seed] = json.dumps(v, sort_keys=True, default=str)
    out: dict[str, dict[str, Spread]] = {}
    for key, figures in values.items():
        out[key] = {name: Spread(_width(list(v.values())) if len(v) > 1 else None, len(v))
                    for name, v in figures.items()}
    return out


def _width(values: list[Any]) -> float:
    if all(isinstance(v, float) for v in values):
        return max(values) - min(values)
    return 0.0 if len(set(values)) == 1 else 1.0


@dataclass
class FigureCheck:
    """One figure of one cell: committed and recomputed value, and the outcome."""

    figure: str
    committed: Any
    recomputed: Any
    outcome: str  # EQUAL | WITHIN | OUTSIDE | DIFFERS | EXPECTED
    detail: str = ""

    @property
    def failed(self) -> bool:
        return self.outcome in (OUTSIDE, DIFFERS)

    @property
    def text(self) -> str:
        """The outcome as printed: "equal", "within the committed seed spread (...)", ..."""
        if self.outcome == EQUAL:
            return "equal"
        if self.outcome == WITHIN:
            return f"within the committed seed spread ({self.detail})"
        if self.outcome == OUTSIDE:
            return f"outside {self.detail}"
        if self.outcome == EXPECTED:
            return f"differs (expected: {self.detail})"
        return f"differs ({self.detail})"


def _pp(fraction: float) -> str:
    return f"{100 * fraction:.2f}".rstrip("0").rstrip(".")


def judge_figure(figure: str, committed: Any, recomputed: Any, *, same_machine: bool,
                 spread: Spread | None = None, timing_decided: bool = False) -> FigureCheck:
    """The outcome of one figure.

    Equal values are "equal" everywhere. Otherwise: a method of :data:`TIMING_DECIDED`
    differs as expected; on the same CPU model and torch build any difference fails;
    on another, an accuracy, MACs or params count is "within" or "outside" the committed
    seed spread (``spread``; with one committed seed there is none, so "outside"). A
    structural figure (MACs, params, ranks) whose committed seeds all agree is fixed by
    the method's rule and must be equal; ranks whose seeds differ are "within". The
    status must be equal on any CPU.
    """
    def check(outcome: str, detail: str = "") -> FigureCheck:
        return FigureCheck(figure, committed, recomputed, outcome, detail)

    if _same(committed, recomputed):
        return check(EQUAL)
    if timing_decided:
        return check(EXPECTED, "the method decides from timings on the machine that runs it")
    if same_machine:
        return check(DIFFERS, "same CPU model and torch build as the committed record: "
                              "must be equal")
    if figure not in ACCURACY + STRUCTURE:
        return check(OUTSIDE, "(must be equal on any CPU)")
    if spread is None or spread.width is None:
        return check(OUTSIDE, "(no seed spread: one committed seed)")
    if figure in STRUCTURE and spread.width <= _TOLERANCE:
        return check(OUTSIDE, f"(structural: all {spread.seeds} committed seeds chose the "
                              "same, so the method's rule fixes it: must be equal on any CPU)")
    if figure == "ranks":
        return check(WITHIN, f"the committed seeds chose different ranks too: the trained "
                             f"weights decide them; {spread.seeds} seeds")
    if not (_number(committed) and _number(recomputed)):
        return check(OUTSIDE, "(no value to compare on one side)")
    unit = _pp if figure in ACCURACY else (lambda w: f"{w:,.0f}")
    what = "pp" if figure in ACCURACY else figure
    over = f"{unit(spread.width)} {what} over {spread.seeds} seeds"
    if abs(recomputed - committed) <= spread.width + _TOLERANCE:
        return check(WITHIN, over)
    return check(OUTSIDE, f"the committed seed spread ({unit(abs(recomputed - committed))} "
                          f"{what} apart; spread {over})")


@dataclass
class CellCheck:
    """One cell's comparison: each figure's outcome, and the cell's status from them."""

    cell_id: str
    label: str
    method: str
    # "same" | "within spread" | "differs" | "outside" | "differs (expected)"
    # | "no committed record" | "recompute <state>"
    status: str
    figures: list[FigureCheck] = field(default_factory=list)
    same_machine: bool | None = None  # None: nothing recomputed to tell
    machines: tuple[str, str] | None = None  # (committed, recomputed) CPU model and torch

    @property
    def failed(self) -> bool:
        return self.status in ("differs", "outside") or self.status.startswith("recompute ")

    @property
    def differences(self) -> list[tuple[str, Any, Any]]:
        """``(figure, committed value, recomputed value)`` for each figure that differs."""
        return [(f.figure, f.committed, f.recomputed) for f in self.figures
                if f.outcome != EQUAL]


def _machine(env: dict[str, Any] | None) -> str:
    """CPU model with the instruction set its kernels ran (two "AMD EPYC" can differ), torch."""
    env = env or {}
    isa = f" ({env['cpu_capability']})" if env.get("cpu_capability") else ""
    return f"{env.get('cpu') or 'unknown CPU'}{isa}, torch {env.get('torch') or 'unknown'}"


def check_record(committed: dict[str, Any] | None, recomputed: dict[str, Any] | None, *,
                 cell_id: str = "", label: str = "", method: str = "",
                 spreads: dict[str, dict[str, Spread]] | None = None) -> CellCheck:
    """Compare one committed record with its recompute. ``spreads`` is
    :func:`seed_spreads` of the committed records (none: no spread anywhere)."""
    if committed is None:
        return CellCheck(cell_id, label, method, "no committed record")
    method = method or committed.get("method", "")
    if recomputed is None or recomputed.get("status") != "ok" and committed.get("status") == "ok":
        state = "no record" if recomputed is None else recomputed.get("status")
        return CellCheck(cell_id, label, method, f"recompute {state}")
    here = same_machine(committed.get("env"), recomputed.get("env"))
    row = (spreads or {}).get(row_key(committed), {})
    figures = [judge_figure(name, lookup(committed, path), lookup(recomputed, path),
                            same_machine=here, spread=row.get(name),
                            timing_decided=method in TIMING_DECIDED)
               for name, path in COMPARED]
    outcomes = {f.outcome for f in figures}
    if outcomes & {OUTSIDE, DIFFERS}:
        status = "differs" if here else "outside"
    elif EXPECTED in outcomes:
        status = "differs (expected)"
    elif WITHIN in outcomes:
        status = "within spread"
    else:
        status = "same"
    return CellCheck(cell_id, label, method, status, figures, here,
                     (_machine(committed.get("env")), _machine(recomputed.get("env"))))


def check_cells(suite: Suite, committed: ResultStore, fresh: ResultStore) -> list[CellCheck]:
    """Compare every cell of ``suite`` between the committed and the recomputed store."""
    spreads = seed_spreads(committed.records())
    checks = []
    for cell in expand(suite):
        label = cell.describe()  # names the recovery budget where the suite has several
        checks.append(check_record(committed.load(cell.id), fresh.load(cell.id),
                                   cell_id=cell.id, label=label, method=cell.method,
                                   spreads=spreads))
    return checks


def lend_lr_choices(suite: Suite, committed: ResultStore, fresh: ResultStore) -> None:
    """Under ``lr_chosen_on: first-seed`` a slice's other seeds reuse the first seed's lr
    choice: copy the committed records that hold it (of rows the slice does not
    recompute) into the fresh store, as inputs; they are not compared."""
    ids = {c.id for c in expand(suite)}
    for cell in expand(suite):
        for donor in lr_donors(cell):
            rec = committed.load(donor.id)
            if donor.id not in ids and rec is not None and fresh.load(donor.id) is None:
                fresh.save(rec)


def verify_suite(suite: Suite, results_dir: Path, *, data_root: str | None = None,
                 workdir: Path | None = None, run: Callable[..., Any] | None = None,
                 check: Callable[..., Any] | None = None) -> list[CellCheck]:
    """Recompute ``suite`` (usually a slice) in an empty directory and compare with
    ``results_dir``. ``workdir`` keeps the recomputed records (default: a temp dir).

    The recompute starts with ``run``'s preflight (``check``, default
    :func:`bench.preflight.preflight`): missing data, an unwritable directory or a full
    disk raise its :class:`~bench.preflight.PreflightError` before any compute. Cells
    the environment stopped during the run raise :class:`RecomputeStopped`.
    """
    if run is None:
        from bench.run.driver import run_suite as run
    if check is None:
        from bench.preflight import preflight as check
    committed = ResultStore(results_dir)

    def recompute(where: Path) -> list[CellCheck]:
        lend_lr_choices(suite, committed, ResultStore(where))
        check(suite, where, data_root)
        summary = run(suite, where, data_root=data_root, say=lambda line: None)
        stopped = list(getattr(summary, "environment", None) or [])
        if stopped:
            lines = "\n".join(f"  {line}" for line in stopped)
            raise RecomputeStopped(f"{len(stopped)} cell(s) could not be recomputed, stopped "
                                   f"by the environment; nothing was compared:\n{lines}")
        return check_cells(suite, committed, ResultStore(where))

    if workdir is not None:
        return recompute(Path(workdir))
    with tempfile.TemporaryDirectory(prefix="lowrank-verify-") as tmp:
        return recompute(Path(tmp))


def _show(figure: str, value: Any) -> str:
    if value is None:
        return "none"
    if figure in ACCURACY and _number(value):
        return f"{100 * value:.2f}"
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    if isinstance(value, dict):
        return _short(value) if len(repr(value)) <= 60 else f"{len(value)} layers"
    return _short(value)


def figure_line(label: str, f: FigureCheck) -> str:
    """``<cell> <figure>: <committed> committed, <recomputed> now: <outcome>``."""
    a, b = _show(f.figure, f.committed), _show(f.figure, f.recomputed)
    if a == b and f.outcome != EQUAL:  # too close to show apart
        a, b = _short(f.committed), _short(f.recomputed)
    line = f"  {label} {f.figure}: {a} committed, {b} now: {f.text}"
    if f.outcome != EQUAL and isinstance(f.committed, dict) and isinstance(f.recomputed, dict):
        keys = sorted(set(f.committed) | set(f.recomputed), key=str)
        moved = {k: (f.committed.get(k), f.recomputed.get(k)) for k in keys
                 if not _same(f.committed.get(k), f.recomputed.get(k))}
        line += f"\n      {len(moved)} differ (committed, now): {_short(moved)}"
    return line


def format_checks(checks: list[CellCheck]) -> str:
    """A result line per figure, the machines compared, and a summary of the outcomes."""
    lines = []
    machines: dict[tuple[tuple[str, str], bool], int] = {}
    for c in checks:
        if c.machines is not None and c.same_machine is not None:
            machines[(c.machines, c.same_machine)] = machines.get((c.machines, c.same_machine),
                                                                  0) + 1
    for ((old, new), here), n in machines.items():
        if here:
            lines.append(f"{n} cell(s) committed on {old}, recomputed on the same CPU model and "
                         "torch build: every figure must be equal")
        else:
            lines.append(f"{n} cell(s) committed on {old}, recomputed on {new}: another CPU or "
                         "torch build, so top-1 is judged against the committed seed spread, "
                         "and so are MACs, params and ranks where the committed seeds chose "
                         "different structures (else they must be equal)")
    for c in checks:
        if not c.figures:
            lines.append(f"  {c.label}: {c.status}  [{c.cell_id}]")
            continue
        for f in c.figures:
            if f.figure == "status" and f.outcome == EQUAL:
                continue
            lines.append(figure_line(c.label, f))
    figures = [f for c in checks for f in c.figures if f.figure != "status"
               or f.outcome != EQUAL]
    counts = {k: sum(f.outcome == k for f in figures) for k in OUTCOME_NAMES}
    shown = [f"{counts[k]} {OUTCOME_NAMES[k]}" for k in OUTCOME_NAMES
             if k in (EQUAL, WITHIN, OUTSIDE) or counts[k]]
    same = sum(c.status == "same" for c in checks)
    within = sum(c.status == "within spread" for c in checks)
    failed = sum(c.failed for c in checks)
    lines.append(f"figures: {', '.join(shown)}, of {len(figures)}; cells: {same} same, "
                 f"{failed} differ or failed, {within} within the seed spread, "
                 f"{len(checks) - same - within - failed} other, of {len(checks)} cells")
    for method in sorted({c.method for c in checks if c.status == "differs (expected)"}):
        lines.append(f"note: {method} {TIMING_DECIDED[method]}")
    return "\n".join(lines)


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 120 else text[:117] + "..."
