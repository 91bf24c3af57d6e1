"""A layer-timing cache on disk, so a second compression of the same shapes times nothing.

svd-accel times each layer against its factorized forms on the machine that
runs it. Those timings depend only on the layer's shape and input, the
candidate rank, the batch sizes, the thread count, the timer settings and the
machine (CPU model, torch version), so they are kept in a JSON file keyed by
exactly those and reused by every later call, in this process or another.
The file lives in ``$LOWRANK_BENCH_CACHE`` (default ``~/.cache/lowrank-bench``);
delete it to time afresh. Writes are atomic (bench.atomic); a file that
cannot be read is ignored, never fatal.
"""

from __future__ import annotations

import json
import os
import platform
from pathlib import Path
from typing import Any

from bench.atomic import atomic_write_bytes

CACHE_ENV = "LOWRANK_BENCH_CACHE"
FILE_NAME = "layer-timings.json"


def cache_dir() -> Path:
    """Where cached timings live: ``$LOWRANK_BENCH_CACHE`` or ``~/.cache/lowrank-bench``."""
    root = os.environ.get(CACHE_ENV)
    return Path(root) if root else Path.home() / ".cache" / "lowrank-bench"


def machine_key() -> str:
    """The machine part of a key: CPU model, torch version and platform."""
    import torch

    from bench.measure.environment import cpu_model

    return f"{cpu_model()} | torch {torch.__version__} | {platform.machine()}"


class TimingCache:
    """``key -> JSON value`` backed by one file; loaded lazily, saved after each put."""

    def __init__(self, path: Path | None = None):
        self._path = path
        self._data: dict[str, Any] | None = None

    @property
    def path(self) -> Path:
        return self._path or cache_dir() / FILE_NAME

    def _load(self) -> dict[str, Any]:
        if self._data is None:
            try:
                self._data = json.loads(self.path.read_text())
                if not isinstance(self._data, dict):
                    self._data = {}
            except (OSError, ValueError):
                self._data = {}
        return self._data

    def get(self, key: str) -> Any:
        return self._load().get(key)

    def put_many(self, items: dict[str, Any]) -> None:
        """Add entries and write the file (merged with what another process wrote since)."""
        data = self._load()
        data.update(items)
        self._data = None
        fresh = self._load()  # another process may have added entries meanwhile
        fresh.update(data)
        try:
            atomic_write_bytes(self.path, json.dumps(fresh).encode())
        except OSError:
            pass  # a read-only home: the timings stay in memory for this process
        self._data = fresh
