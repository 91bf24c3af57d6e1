"""Every registered method gives the same figures twice from empty results directories,
and ``lowrank-bench verify`` recomputes committed cells and catches a changed figure."""

from __future__ import annotations

import json

import pytest

from bench.cli import main
from bench.plugins import method_names
from bench.store import ResultStore
from bench.suite import load_suite
from bench.verify import TIMING_DECIDED, check_cells

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def every_method_suite(tmp_path_factory):
    import yaml

    from tests.conftest import TINY_SUITE

    suite = json.loads(json.dumps(TINY_SUITE))
    suite["name"] = "every-method"
    suite["models"] = [{"name": "mlp", "kwargs": {"hidden": [48, 48]}}]
    suite["train"]["epochs"] = 4
    suite["methods"] = [{"name": name} for name in method_names()]
    suite["latency"].update(paired_rounds=4, paired_min_rounds=2, paired_calls=1)
    path = tmp_path_factory.mktemp("suite") / "every-method.yaml"
    path.write_text(yaml.safe_dump(suite, sort_keys=False))
    return path


@pytest.fixture(scope="module")
def two_runs(every_method_suite, tmp_path_factory):
    dirs = [tmp_path_factory.mktemp(f"run{i}") for i in range(2)]
    for d in dirs:
        assert main(["run", str(every_method_suite), "--results", str(d)]) == 0
    return dirs


def test_every_method_gives_the_same_figures_twice(every_method_suite, two_runs):
    suite, _ = load_suite(every_method_suite)
    checks = check_cells(suite, ResultStore(two_runs[0]), ResultStore(two_runs[1]))
    assert {c.method for c in checks} == set(method_names())  # every method is covered
    for c in checks:
        if c.method in TIMING_DECIDED:
            assert c.status in ("same", "differs (expected)"), c
        else:
            assert c.status == "same", (c.label, c.differences)
    # the figures compared exist: a check of missing values would prove nothing
    rec = ResultStore(two_runs[0]).load(next(c.cell_id for c in checks if c.method == "svd"))
    assert rec["metrics"]["top1"] > 0.3 and rec["method_info"]["ranks"]


def test_verify_recomputes_committed_cells_and_names_a_changed_figure(
        every_method_suite, two_runs, capsys, tmp_path):
    committed = two_runs[0]
    only = ["--only", "method=svd|prune-l1", "--results", str(committed)]
    assert main(["verify", str(every_method_suite), *only, "--keep", str(tmp_path / "a")]) == 0
    out = capsys.readouterr().out
    assert "2 same, 0 differ or failed" in out
    store = ResultStore(committed)
    svd = next(r for r in store.records() if r["method"] == "svd")
    svd["metrics"]["top1"] += 0.01
    store.record_path(svd["cell_id"]).write_text(json.dumps(svd))
    assert main(["verify", str(every_method_suite), *only, "--keep", str(tmp_path / "b")]) == 1
    out = capsys.readouterr().out
    assert "differs (same CPU model and torch build" in out and "1 same, 1 differ" in out
    assert "svd macs<=0.5 top1: " in out and " committed, " in out


def test_verify_needs_a_slice(every_method_suite, capsys):
    with pytest.raises(SystemExit):
        main(["verify", str(every_method_suite)])
    assert "--only" in capsys.readouterr().err
