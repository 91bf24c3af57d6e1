"""Dataset registry: name -> loader(spec, data_root) -> DataBundle."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.data.base import DataBundle
from bench.registry import Registry

Loader = Callable[[dict[str, Any], Path], DataBundle]
DATASETS: Registry[Loader] = Registry("dataset")
register_dataset = DATASETS.decorator


class DatasetMissingError(FileNotFoundError):
    """Data not on disk and not downloadable: says which, where we looked, how to fix."""


def data_root(explicit: str | os.PathLike | None = None) -> Path:
    """The data root: an explicit path, else $LOWRANK_BENCH_DATA, else ~/.cache/lowrank-bench."""
    if explicit:
        return Path(explicit).expanduser()
    env = os.environ.get("LOWRANK_BENCH_DATA")
    if env:
        return Path(env).expanduser()
    return Path.home() / ".cache" / "lowrank-bench" / "data"


def load_dataset(name: str, options: dict[str, Any] | None = None,
                 root: str | os.PathLike | None = None) -> DataBundle:
    return DATASETS.get(name)(dict(options or {}), data_root(root))
