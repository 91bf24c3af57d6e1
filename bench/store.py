"""The results store: one JSON record per cell, written atomically, plus locks.

Layout of a results directory::

    cells/<cell-id>.json     the record (ok or failed)
    cells/<cell-id>.log      the cell's log, beside its record (appended per attempt)
    checkpoints/<key>.pt     trained dense baselines and "train"-method models
    pending/<cell-id>.pt     a cell trained and evaluated but not yet timed
    locks/<group>.lock       which live process is working on a group

Every file is written to a temporary name in the same directory, flushed and
fsynced, then renamed over the final name, so a crash (even SIGKILL) leaves the
old state or the complete new file, never half of one. A file that does not
parse, or parses into something that is not a complete record, is treated as
missing and its work is redone: it is never read as a result.
"""

from __future__ import annotations

import io
import json
import os
import socket
import time
from pathlib import Path
from typing import Any

import torch

from bench.atomic import atomic_write_bytes
from bench.record import SCHEMA_VERSION, Record

STATUSES = ("ok", "failed")
_TMP_MAX_AGE_S = 3600.0


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_bytes(path, json.dumps(obj, indent=1, sort_keys=True, default=str).encode())


def atomic_torch_save(path: Path, obj: Any) -> None:
    buf = io.BytesIO()
    torch.save(obj, buf)
    atomic_write_bytes(path, buf.getvalue())


def valid_record(record: Any, cell_id: str) -> bool:
    """A complete record of ``cell_id``: what a crash or a stray file can never pass."""
    if not isinstance(record, dict) or record.get("cell_id") != cell_id:
        return False
    status = record.get("status")
    if status == "ok":
        return isinstance(record.get("metrics"), dict) and isinstance(record.get("cost"), dict)
    if status == "failed":
        return isinstance(record.get("error"), dict)
    if status == "not_applicable":
        return isinstance(record.get("reason"), str)
    return False


# -- locks ------------------------------------------------------------------

def _process_start(pid: int) -> str | None:
    """The kernel's start time of ``pid`` (guards against pid reuse), where /proc has it."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]


def pid_alive(pid: int) -> bool:
    """Whether ``pid`` is a running process (a zombie, exited but not reaped, is not)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return True
    return state not in ("Z", "X")


def lock_owner_alive(owner: dict) -> bool:
    """False only when the owner is provably gone (same host, pid dead or reused)."""
    if owner.get("host") != socket.gethostname():
        return True  # cannot see another host's processes
    pid = int(owner.get("pid", -1))
    if pid <= 0 or not pid_alive(pid):
        return False
    started = owner.get("started")
    return started is None or _process_start(pid) in (None, started)


class Locked(Exception):
    """A group is being worked on by another live process."""

    def __init__(self, path: Path, owner: dict):
        self.path, self.owner = path, owner
        super().__init__(f"{path.name} held by pid {owner.get('pid')} on {owner.get('host')}")


class ResultStore:
    """One results directory: records, logs, checkpoints, pending cells and locks."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)
        self.cells_dir = self.root / "cells"
        self.ckpt_dir = self.root / "checkpoints"
        self.pending_dir = self.root / "pending"
        self.locks_dir = self.root / "locks"

    # -- records -----------------------------------------------------------
    def record_path(self, cell_id: str) -> Path:
        return self.cells_dir / f"{cell_id}.json"

    def log_path(self, cell_id: str) -> Path:
        return self.cells_dir / f"{cell_id}.log"

    def load(self, cell_id: str) -> dict | None:
        path = self.record_path(cell_id)
        try:
            record = json.loads(path.read_text())
        except FileNotFoundError:
            return None
        except (json.JSONDecodeError, UnicodeDecodeError, OSError):
            return None  # corrupt or partial: recompute
        return record if valid_record(record, cell_id) else None

    def is_done(self, cell_id: str, retry_failed: bool = False) -> bool:
        record = self.load(cell_id)
        if record is None:
            return False
        # a not-applicable cell is a result (the method cannot reach the target), not a failure
        return not (retry_failed and record.get("status") == "failed")

    def save(self, record: dict) -> None:
        """Write a record as the typed schema (``bench.record.Record``), validated first."""
        record = Record.model_validate(
            {"schema_version": SCHEMA_VERSION,
             **{k: v for k, v in record.items() if k != "schema"}}
        ).model_dump(mode="json", exclude_unset=True)
        atomic_write_json(self.record_path(record["cell_id"]), record)
        self.drop_pending(record["cell_id"])

    def records(self) -> list[dict]:
        out = []
        for path in sorted(self.cells_dir.glob("*.json")):
            rec = self.load(path.stem)
            if rec is not None:
                out.append(rec)
        return out

    # -- checkpoints ---------------------------------------------------------
    def checkpoint_path(self, key: str) -> Path:
        return self.ckpt_dir / f"{key}.pt"

    def load_checkpoint(self, key: str) -> dict | None:
        path = self.checkpoint_path(key)
        if not path.exists():
            return None
        try:
            return torch.load(path, map_location="cpu", weights_only=True)
        except Exception:
            return None  # partial or corrupt: retrain

    def save_checkpoint(self, key: str, payload: dict) -> None:
        atomic_torch_save(self.checkpoint_path(key), payload)

    def has_checkpoint(self, key: str) -> bool:
        return self.checkpoint_path(key).exists()

    # A dense baseline that failed to train, for the other units of the same run that
    # wait for it: they fail at once with its error instead of training it again. A new
    # run clears them (``clear_baseline_failures``) and tries again.
    def baseline_failure_path(self, key: str) -> Path:
        return self.ckpt_dir / f"{key}.failed.txt"

    def record_baseline_failure(self, key: str, error: str) -> None:
        atomic_write_bytes(self.baseline_failure_path(key), error.encode())

    def baseline_failure(self, key: str) -> str | None:
        try:
            return self.baseline_failure_path(key).read_text()
        except (FileNotFoundError, UnicodeDecodeError):
            return None

    def clear_baseline_failures(self) -> None:
        for path in self.ckpt_dir.glob("*.failed.txt") if self.ckpt_dir.exists() else ():
            path.unlink(missing_ok=True)

    # -- pending cells (trained, evaluated, waiting for the timing phase) --------
    def pending_path(self, cell_id: str) -> Path:
        return self.pending_dir / f"{cell_id}.pt"

    @staticmethod
    def pending_bytes(payload: dict) -> bytes:
        """Serialize a pending cell; raises if the compressed model cannot be pickled."""
        buf = io.BytesIO()
        torch.save(payload, buf)
        return buf.getvalue()

    def save_pending_bytes(self, cell_id: str, data: bytes) -> None:
        atomic_write_bytes(self.pending_path(cell_id), data)

    def load_pending(self, cell_id: str) -> dict | None:
        """A pending cell written by this harness (full pickle: it holds the model)."""
        path = self.pending_path(cell_id)
        if not path.exists():
            return None
        try:
            payload = torch.load(path, map_location="cpu", weights_only=False)
        except Exception:
            return None  # partial or corrupt: recompute the cell
        if not isinstance(payload, dict) or payload.get("cell_id") != cell_id:
            return None
        return payload

    def has_pending(self, cell_id: str) -> bool:
        return self.pending_path(cell_id).exists()

    def drop_pending(self, cell_id: str) -> None:
        try:
            self.pending_path(cell_id).unlink()
        except FileNotFoundError:
            pass

    # -- housekeeping ----------------------------------------------------------
    def clean_stale_temp_files(self, max_age_s: float = _TMP_MAX_AGE_S) -> int:
        """Remove temp files a killed writer left behind (old enough to be nobody's)."""
        now, n = time.time(), 0
        for d in (self.cells_dir, self.ckpt_dir, self.pending_dir):
            for p in d.glob(".*.tmp") if d.exists() else ():
                try:
                    if now - p.stat().st_mtime > max_age_s:
                        p.unlink()
                        n += 1
                except FileNotFoundError:
                    pass
        return n

    def clean_stale_locks(self) -> int:
        """Remove lock files whose owner is provably dead (same host, pid gone or reused).

        A run killed with SIGKILL leaves its group locks behind; a later run breaks
        them only for the groups it needs, so the others would stay forever. Locks of
        live processes and of other hosts are kept; so is a lock being written now.
        """
        n = 0
        if not self.locks_dir.exists():
            return 0
        for path in sorted(self.locks_dir.iterdir()):
            if ".lock.stale." in path.name:  # left by a breaker that died mid-break
                pid = path.name.rsplit(".", 1)[-1]
                if pid.isdigit() and not pid_alive(int(pid)):
                    path.unlink(missing_ok=True)
                    n += 1
                continue
            if path.suffix != ".lock":
                continue
            owner = self.read_lock(path)
            if not owner or lock_owner_alive(owner):  # gone, being written, or alive
                continue
            self._break(path)
            n += not path.exists()
        return n

    # -- locks -------------------------------------------------------------------
    def lock_path(self, name: str) -> Path:
        return self.locks_dir / f"{name}.lock"

    def read_lock(self, path: Path) -> dict | None:
        try:
            owner = json.loads(path.read_text())
        except FileNotFoundError:
            return None
        except (json.JSONDecodeError, UnicodeDecodeError, OSError):
            return {}  # being written right now, or garbage from a crash
        return owner if isinstance(owner, dict) else {}

    def acquire(self, name: str) -> Path:
        """Take the lock ``name`` (O_EXCL create) or raise :class:`Locked`.

        A lock whose owner is provably dead (same host, pid gone or reused) is
        broken: renamed away atomically, so of two processes breaking it at once
        only one succeeds, then created afresh.
        """
        path = self.lock_path(name)
        path.parent.mkdir(parents=True, exist_ok=True)
        me = {"pid": os.getpid(), "host": socket.gethostname(),
              "started": _process_start(os.getpid()), "since": time.time()}
        for _ in range(5):
            try:
                fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                owner = self.read_lock(path)
                if owner is None:
                    continue  # released meanwhile
                if owner == {}:
                    # unreadable: a writer mid-write, or a crash right after create
                    try:
                        age = time.time() - path.stat().st_mtime
                    except FileNotFoundError:
                        continue
                    if age < 10.0:
                        raise Locked(path, {"pid": "?", "host": "?"}) from None
                elif lock_owner_alive(owner):
                    raise Locked(path, owner) from None
                self._break(path)
                continue
            with os.fdopen(fd, "w") as fh:
                json.dump(me, fh)
                fh.flush()
                os.fsync(fh.fileno())
            return path
        raise Locked(path, self.read_lock(path) or {})

    def _break(self, path: Path) -> None:
        aside = path.with_name(f"{path.name}.stale.{os.getpid()}")
        try:
            os.replace(path, aside)
        except FileNotFoundError:
            return
        owner = self.read_lock(aside)
        if owner and lock_owner_alive(owner):
            # we took a fresh lock that replaced the stale one: give it back
            try:
                os.link(aside, path)
            except FileExistsError:
                pass
        aside.unlink(missing_ok=True)

    def release(self, path: Path) -> None:
        owner = self.read_lock(path)
        if owner and owner.get("pid") == os.getpid() and owner.get("host") == socket.gethostname():
            path.unlink(missing_ok=True)
