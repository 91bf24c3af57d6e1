"""Preflight: check the environment a run needs before any cell runs.

A run that starts without its data, on a read-only disk or without room for
its checkpoints would otherwise fail cell by cell, and each failure would be
stored as if the method had failed; a rerun after the fix would then find every
cell "done". The preflight loads every dataset the cells to run need, builds
every model once (on the meta device: no memory, no compute), checks that the
results and data roots are writable and that the disk has room for the
checkpoints and pending models the run will write. Any problem stops the run
with one message listing them all, before any record is written.

:func:`is_environment_error` says which errors during a cell belong to the
environment (missing data, a full disk, an interrupt) rather than to the
method: those are never stored as a failed record.
"""

from __future__ import annotations

import errno
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from bench.data import DataBundle, DatasetMissingError, data_root, load_dataset
from bench.suite import build_on_meta

# errors of the machine, never of a method: a full disk, a quota, a read-only mount
ENVIRONMENT_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES})
DISK_MARGIN = 1.25  # checkpoints hold optimizer-free state_dicts; pickles add a little
DISK_SLACK_BYTES = 64 * 2**20


class PreflightError(RuntimeError):
    """The environment cannot run this suite; the message lists every problem."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        lines = "\n".join(f"  - {p}" for p in problems)
        super().__init__(f"preflight failed ({len(problems)} problem(s)); nothing was run and "
                         f"no record was written:\n{lines}")


class EnvironmentFailure(RuntimeError):
    """A cell stopped for a reason of the environment; the cell keeps no record."""


def is_environment_error(exc: BaseException) -> bool:
    """Missing data, a full or read-only disk, an interrupt: not the method's fault."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, (DatasetMissingError, KeyboardInterrupt, EnvironmentFailure)):
            return True
        if isinstance(exc, OSError) and exc.errno in ENVIRONMENT_ERRNOS:
            return True
        exc = exc.__cause__ or exc.__context__  # type: ignore[assignment]
    return False


@dataclass
class PreflightReport:
    """What the preflight found: the loaded datasets and the disk estimate."""

    datasets: dict[str, DataBundle] = field(default_factory=dict)  # dataset spec json -> data
    model_bytes: dict[str, int] = field(default_factory=dict)  # model label -> state bytes
    disk_needed: int = 0
    disk_free: int = 0
    trainings: int = 0


def writable(folder: Path) -> str | None:
    """None when a file can be created in ``folder`` (made if missing), else why not."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=".preflight.", suffix=".tmp")
        os.close(fd)
        os.unlink(tmp)
    except OSError as exc:
        return f"{type(exc).__name__}: {exc.strerror or exc}"
    return None


def state_bytes(model: torch.nn.Module) -> int:
    """Bytes of a model's parameters and buffers (works on the meta device)."""
    tensors = list(model.parameters()) + list(model.buffers())
    return sum(t.numel() * t.element_size() for t in tensors)


def _trainings(cells: Iterable[Any], store: Any) -> dict[str, str]:
    """Training key -> model label of every training the cells need without a checkpoint."""
    from bench.plugins import get_method

    out: dict[str, str] = {}
    for c in cells:
        key = c.training_key() if get_method(c.method).kind == "train" else c.baseline_key()
        if key not in out and not store.has_checkpoint(key):
            out[key] = c.model.display
    return out


def preflight(suite: Any, results_dir: str | os.PathLike, data_root_dir: str | None = None, *,
              cells: list[Any] | None = None, retry_failed: bool = False,
              say: Callable[[str], None] | None = None,
              load: Callable[..., DataBundle] = load_dataset,
              free_bytes: Callable[[Path], int] | None = None) -> PreflightReport:
    """Check everything the cells to run need; raise :class:`PreflightError` if anything fails.

    ``cells`` defaults to the suite's cells without a record (with ``retry_failed``
    also the failed ones). Nothing is written except a probe file, removed at once.
    """
    from bench.cells import expand
    from bench.store import ResultStore

    store = ResultStore(results_dir)
    if cells is None:
        cells = [c for c in expand(suite) if not store.is_done(c.id, retry_failed)]
    report = PreflightReport()
    problems: list[str] = []
    results = Path(results_dir)
    why = writable(results)
    if why:
        problems.append(f"results directory {results} is not writable ({why})")
    root = data_root(data_root_dir)
    why = writable(root)
    if why:
        problems.append(f"data root {root} is not writable ({why}); set --data-root or "
                        "$LOWRANK_BENCH_DATA to a writable folder")
    if not cells:
        if problems:
            raise PreflightError(problems)
        return report
    problems += missing_lr_donors(cells, store)
    specs = {c.dataset.model_dump_json(): c.dataset for c in cells}
    for key, spec in specs.items():
        try:
            report.datasets[key] = load(spec.name, spec.options, data_root_dir)
        except DatasetMissingError as exc:
            problems.append(str(exc))
        except Exception as exc:  # bad options, unreadable files
            problems.append(f"dataset '{spec.display}' could not be loaded: "
                            f"{type(exc).__name__}: {exc}")
    built: set[tuple[str, str]] = set()
    for c in cells:
        dkey, mkey = c.dataset.model_dump_json(), c.model.model_dump_json()
        data = report.datasets.get(dkey)
        if data is None or (mkey, dkey) in built:
            continue
        built.add((mkey, dkey))
        try:
            model = build_on_meta(c.model, data.num_classes, data.in_chans, data.img_size)
        except Exception as exc:
            problems.append(f"model '{c.model.display}' ({c.model.name}, kwargs {c.model.kwargs})"
                            f" cannot be built for dataset '{c.dataset.display}': "
                            f"{type(exc).__name__}: {exc}")
            continue
        size = state_bytes(model)
        report.model_bytes[c.model.display] = max(size, report.model_bytes.get(c.model.display, 0))
    if not problems:
        trainings = _trainings(cells, store)
        report.trainings = len(trainings)
        need = sum(report.model_bytes.get(label, 0) for label in trainings.values())
        need += sum(report.model_bytes.get(c.model.display, 0) for c in cells)  # pending models
        report.disk_needed = int(need * DISK_MARGIN) + DISK_SLACK_BYTES
        report.disk_free = (free_bytes or (lambda p: shutil.disk_usage(p).free))(results)
        if report.disk_free < report.disk_needed:
            problems.append(
                f"not enough disk space under {results}: about {_mb(report.disk_needed)} needed "
                f"for {report.trainings} checkpoint(s) and {len(cells)} pending model(s), "
                f"{_mb(report.disk_free)} free")
    if problems:
        raise PreflightError(problems)
    if say is not None:
        say(f"preflight ok: {len(report.datasets)} dataset(s) loaded, {len(built)} model(s) "
            f"built, about {_mb(report.disk_needed)} of disk needed ({_mb(report.disk_free)} "
            "free)")
    return report


def missing_lr_donors(cells: list[Any], store: Any) -> list[str]:
    """Rows that reuse their first seed's lr choice (``lr_chosen_on: first-seed``) while
    that seed neither has a record of the row here nor runs in this run (e.g. --only
    left it out): one line per row."""
    from bench.cells import lr_donors
    from bench.ledger import recorded_lr_choice

    running = {c.id for c in cells}
    problems: dict[str, str] = {}
    for c in cells:
        donors = lr_donors(c)
        if not donors or c.family_key() in problems:
            continue
        if any(d.id in running or recorded_lr_choice(store.load(d.id)) is not None for d in donors):
            continue
        seed = donors[0].seed
        problems[c.family_key()] = (
            f"{c.describe()}: recovery.lr_chosen_on is first-seed, so this row reuses the lr "
            f"chosen on seed {seed}, which has no record of it in {store.root} and is not in "
            f"this run; run seed {seed} of the row first, or add seed={seed} to --only")
    return list(problems.values())


def _mb(n: int) -> str:
    return f"{n / 2**20:,.0f} MiB" if n < 2**30 else f"{n / 2**30:,.1f} GiB"
