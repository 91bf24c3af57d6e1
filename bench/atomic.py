"""Atomic file writes and exclusive file locks between processes.

A write goes to a temporary file in the same folder, fsynced, renamed into place: a
reader (or a run killed mid-write) sees the old file or the new one, never half of one.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path


@contextlib.contextmanager
def exclusive_lock(target: Path, on_wait: Callable[[], None] | None = None) -> Iterator[None]:
    """Hold an exclusive lock on ``<target>.lock`` (``flock``) for the block, so that one
    process makes ``target`` and the others wait for it instead of making it again.

    Without a lock file (a read-only folder, no ``fcntl``) the block runs unlocked;
    writers still never see half a file (``atomic_write_bytes``). The lock is released
    when the file closes, a killed holder's too. ``on_wait`` is called once when
    another process holds the lock, before waiting for it.
    """
    try:
        import fcntl

        target.parent.mkdir(parents=True, exist_ok=True)
        fh = open(target.with_name(target.name + ".lock"), "a")  # noqa: SIM115
    except (ImportError, OSError):
        yield
        return
    with fh:
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if on_wait is not None:
                on_wait()
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        yield


def atomic_write_bytes(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
