"""Progress for long suites: a suite bar, per-training epoch bars, a log per cell.

Bars are drawn with tqdm on stderr only when it is a terminal, so logs and CI
output stay clean; the per-cell log file (``cells/<id>.log``, beside the
record) always gets everything: harness messages, epoch rows, the method's own
log lines and the traceback of a failure.
"""

from __future__ import annotations

import datetime as dt
import logging
import sys
from collections.abc import Callable
from pathlib import Path
from types import TracebackType

from tqdm import tqdm

LOGGER = "lowrank_bench"


def interactive() -> bool:
    """Draw bars only for a person watching a terminal."""
    return sys.stderr.isatty()


class SuiteProgress:
    """Cells done / total with ETA; ``write`` prints above the bar."""

    def __init__(self, total: int, desc: str, enabled: bool | None = None):
        self.enabled = interactive() if enabled is None else enabled
        self.bar = tqdm(total=total, desc=desc, unit="cell", disable=not self.enabled,
                        dynamic_ncols=True, file=sys.stderr)

    def advance(self, n: int = 1) -> None:
        self.bar.update(n)

    def write(self, line: str) -> None:
        if self.enabled:
            tqdm.write(line, file=sys.stdout)
        else:
            print(line, flush=True)

    def close(self) -> None:
        self.bar.close()

    def __enter__(self) -> SuiteProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class EpochBar:
    """A bar over one training's epochs, showing loss and training accuracy.

    Callable as the ``progress`` hook of :func:`bench.train.train`; every row
    also goes to ``sink`` (the cell log).
    """

    def __init__(self, desc: str, total: int, sink: Callable[[str], None] | None = None,
                 enabled: bool | None = None):
        self.sink = sink
        enabled = interactive() if enabled is None else enabled
        self.bar = tqdm(total=total, desc=desc, unit="ep", leave=False, position=1,
                        disable=not enabled, dynamic_ncols=True, file=sys.stderr)

    def __call__(self, row: dict) -> None:
        self.bar.update(1)
        self.bar.set_postfix(loss=f"{row['loss']:.4f}", acc=f"{row['train_acc']:.3f}")
        line = (f"    epoch {row['epoch']} loss {row['loss']:.4f} "
                f"train_acc {row['train_acc']:.4f}")
        logging.getLogger(LOGGER).debug(line)
        if self.sink is not None:
            self.sink(line)

    def close(self) -> None:
        self.bar.close()

    def __enter__(self) -> EpochBar:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class CellLog:
    """Appends one attempt of a cell to ``path``; captures the harness logger meanwhile."""

    def __init__(self, path: Path, title: str):
        self.path, self.title = path, title
        self._fh = None
        self._handler: logging.Handler | None = None

    def write(self, line: str) -> None:
        if self._fh is not None:
            self._fh.write(line.rstrip("\n") + "\n")
            self._fh.flush()

    def __enter__(self) -> CellLog:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fh = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 (closed in __exit__)
        now = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
        self.write(f"== attempt {now}: {self.title}")
        self._handler = logging.StreamHandler(self._fh)
        self._handler.setLevel(logging.INFO)
        self._handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
        logging.getLogger(LOGGER).addHandler(self._handler)
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if self._handler is not None:
            logging.getLogger(LOGGER).removeHandler(self._handler)
        if exc is not None:
            self.write(f"== aborted: {type(exc).__name__}: {exc}")
        if self._fh is not None:
            self._fh.close()
            self._fh = None
