"""The results store: one JSON record per cell, written atomically.

A record is written to a temporary file in the same directory, flushed and
fsynced, then renamed over the final name, so a crash leaves either the old
state or the complete new record, never half of one. A file that does not
parse (e.g. from a disk-full crash) is treated as missing and recomputed.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch

RECORD_SCHEMA = 1


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


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_bytes(path, json.dumps(obj, indent=1, sort_keys=True, default=str).encode())


def atomic_torch_save(path: Path, obj: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        torch.save(obj, tmp)
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


class ResultStore:
    """results/<suite>/: cells/<id>.json records, checkpoints/<key>.pt, logs/<id>.log."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)
        self.cells_dir = self.root / "cells"
        self.ckpt_dir = self.root / "checkpoints"
        self.logs_dir = self.root / "logs"

    def record_path(self, cell_id: str) -> Path:
        return self.cells_dir / f"{cell_id}.json"

    def load(self, cell_id: str) -> dict | None:
        path = self.record_path(cell_id)
        try:
            record = json.loads(path.read_text())
        except FileNotFoundError:
            return None
        except (json.JSONDecodeError, UnicodeDecodeError, OSError):
            return None  # corrupt or partial: recompute
        if not isinstance(record, dict) or record.get("cell_id") != cell_id:
            return None
        return record

    def is_done(self, cell_id: str, retry_failed: bool = False) -> bool:
        record = self.load(cell_id)
        if record is None:
            return False
        return not (retry_failed and record.get("status") != "ok")

    def save(self, record: dict) -> None:
        record = {"schema": RECORD_SCHEMA, **record}
        atomic_write_json(self.record_path(record["cell_id"]), record)

    def records(self) -> list[dict]:
        out = []
        for path in sorted(self.cells_dir.glob("*.json")):
            rec = self.load(path.stem)
            if rec is not None:
                out.append(rec)
        return out

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
