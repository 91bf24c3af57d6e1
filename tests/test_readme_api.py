"""The README's library example runs as written, and the API's refusals are clear."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from torch import nn

import bench

README = Path(__file__).resolve().parents[1] / "README.md"


def _api_block() -> str:
    text = README.read_text()
    section = text.split("## Using a method as a library", 1)[1].split("\n## ", 1)[0]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_readme_library_example_runs():
    exec(compile(_api_block(), "README.md", "exec"), {})


def _mlp() -> nn.Module:
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 128),
                         nn.ReLU(), nn.Linear(128, 10))


def test_compress_meets_budget_and_leaves_input_alone():
    model = _mlp()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    out = bench.compress(model, "svd", params=0.5, example_input=torch.randn(1, 1, 8, 8),
                         method_params={"skip_classifier": False})
    assert out.params_ratio <= 0.5
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert out.info["ranks"]


def test_compress_refuses_train_methods_and_bad_budgets():
    with pytest.raises(ValueError, match="needs the harness"):
        bench.compress(_mlp(), "lorita", macs=0.5, example_input=torch.randn(1, 1, 8, 8))
    with pytest.raises(ValueError, match="exactly one budget"):
        bench.compress(_mlp(), "svd", example_input=torch.randn(1, 1, 8, 8))
    with pytest.raises(ValueError, match=r"in \(0, 1\]"):
        bench.compress(_mlp(), "svd", macs=2.0, example_input=torch.randn(1, 1, 8, 8))


def test_compress_without_data_says_what_is_missing():
    with pytest.raises(ValueError, match="pass data="):
        bench.compress(_mlp(), "funnel", macs=0.5, example_input=torch.randn(1, 1, 8, 8))


def test_readme_plugin_example_runs():
    text = README.read_text()
    section = text.split("## Adding a method plugin", 1)[1].split("\n## ", 1)[0]
    block = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    from bench.plugins import METHODS

    try:
        exec(compile(block, "README.md", "exec"), {"__name__": "readme_plugin"})
        assert "uniform-svd" in METHODS
    finally:
        METHODS._items.pop("uniform-svd", None)
        METHODS._origin.pop("uniform-svd", None)
