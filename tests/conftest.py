"""Shared fixtures: tiny suites written to a temp dir."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest
import yaml

# layer timings cached by svd-accel go to a folder of this test run, not the user's cache
os.environ["LOWRANK_BENCH_CACHE"] = tempfile.mkdtemp(prefix="lowrank-bench-test-cache-")

TINY_SUITE = {
    "name": "tiny",
    "datasets": [{"name": "digits"}],
    "models": [{"name": "mlp", "kwargs": {"hidden": [32]}}],
    "train": {"epochs": 2, "batch_size": 128, "optimizer": "adamw", "lr": 3e-3,
              "augment": False},
    "finetune": {"epochs": 1, "batch_size": 128, "optimizer": "adamw", "lr": 1e-3,
                 "augment": False},
    "methods": [{"name": "dense"}, {"name": "svd"}],
    "targets": [{"macs": 0.5}],
    "seeds": [0],
    "latency": {"batch_sizes": [1], "min_runs": 3, "min_seconds": 0.0, "warmup": 1},
}


@pytest.fixture
def tiny_suite() -> dict:
    import copy

    return copy.deepcopy(TINY_SUITE)


@pytest.fixture
def write_suite(tmp_path: Path):
    def write(data: dict, name: str = "tiny.yaml") -> Path:
        path = tmp_path / name
        path.write_text(yaml.safe_dump(data, sort_keys=False))
        return path

    return write
