"""--only selects exactly the named cells; bad keys and values are clear errors."""

from __future__ import annotations

import json

import pytest

from bench.cells import expand
from bench.cli import main
from bench.slice import SliceError, slice_suite
from bench.suite import load_suite


@pytest.fixture
def cifar():
    return load_suite("cifar")[0]


@pytest.mark.parametrize("text", [
    "model=resnet18-cifar,seed=0,method=svd",
    "method=svd|prune-l1,seed=1|2",
    "target=macs<=0.25|dense,model=vit_tiny_patch16_224",
    "method=dense",
    "dataset=cifar10,target=macs=0.125",
])
def test_slice_selects_exactly_the_named_cells(cifar, text):
    full = expand(cifar)
    filters = dict(part.split("=", 1) for part in text.split(","))

    def wanted(c) -> bool:
        names = {"model": {c.model.display, c.model.name}, "seed": {str(c.seed)},
                 "method": {c.method_label, c.method}, "dataset": {c.dataset.display},
                 "target": {c.target_label} | ({f"macs={c.target['macs']:g}"} if c.target
                                               else set())}
        return all(names[k] & set(v.split("|")) for k, v in filters.items())

    sub = slice_suite(cifar, text)
    assert sorted(c.id for c in expand(sub)) == sorted(c.id for c in full if wanted(c))
    assert sub.slice and sub.hash() == cifar.hash() and sub.name == cifar.name
    assert 0 < len(expand(sub)) < len(full)


def test_one_entry_of_a_grid(tiny_suite, write_suite):
    tiny_suite["methods"][1]["grid"] = {"rank_selection": ["global", "local"]}
    suite, _ = load_suite(write_suite(tiny_suite))
    sub = slice_suite(suite, "method=svd[rank_selection=local]")
    cells = expand(sub)
    assert [c.method_label for c in cells] == ["svd[rank_selection=local]"]
    assert cells[0].id in {c.id for c in expand(suite)}


@pytest.mark.parametrize("text, message", [
    ("modle=resnet18-cifar", "Unknown key 'modle'. Did you mean: model"),
    ("method=svdd", "Unknown method in this suite 'svdd'. Did you mean: svd"),
    ("seed=7", "Unknown seed in this suite '7'"),
    ("seed", "is not key=value"),
    ("seed=0,seed=1", "given twice"),
])
def test_bad_filters_are_clear_errors(cifar, text, message):
    with pytest.raises(SliceError, match=message.replace("?", r"\?").replace("[", r"\[")):
        slice_suite(cifar, text)


def test_run_only_names_the_slice_and_runs_only_it(tiny_suite, write_suite, tmp_path, capsys):
    path, results = write_suite(tiny_suite), tmp_path / "results"
    assert main(["run", str(path), "--results", str(results), "--only", "method=dense"]) == 0
    out = capsys.readouterr().out
    assert "slice of suite 'tiny': method=dense" in out
    records = [json.loads(p.read_text()) for p in results.glob("cells/*.json")]
    assert len(records) == 1 and records[0]["slice"] == "method=dense"
    assert records[0]["suite_hash"] == load_suite(path)[0].hash()  # the whole suite's
    assert main(["run", str(path), "--results", str(results), "--only", "method=nope"]) == 2
    assert "Unknown method in this suite 'nope'" in capsys.readouterr().err


def test_a_sliced_run_writes_the_whole_suites_manifest(tiny_suite, write_suite, tmp_path):
    """The report of a suite run a slice at a time promises every cell, not the last slice's."""
    tiny_suite["targets"] = [{"macs": 0.5}, {"params": 0.4}]
    path = write_suite(tiny_suite)
    results = tmp_path / "results"
    assert main(["run", str(path), "--results", str(results), "--only", "method=dense"]) == 0
    manifest = json.loads((results / "manifest.json").read_text())
    assert len(manifest["cells"]) == 3  # dense, svd at two targets
    assert len(list((results / "cells").glob("*.json"))) == 1
