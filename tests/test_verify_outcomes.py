"""``lowrank-bench verify`` on another CPU: equal, within the committed seed spread, or
outside it; equality on the same CPU and torch build; and the early stop, with
``run``'s error, when the recompute cannot run. Constructed records only: nothing trains."""

from __future__ import annotations

import copy

import pytest

import bench.runner  # noqa: F401  (bound to the real run_suite before any test patches it)
from bench.cells import expand
from bench.cli import main
from bench.store import ResultStore, atomic_write_json
from bench.suite import load_suite
from bench.verify import (
    EQUAL,
    OUTSIDE,
    WITHIN,
    RecomputeStopped,
    check_record,
    format_checks,
    judge_figure,
    row_key,
    same_machine,
    seed_spreads,
    verify_suite,
)

HERE = {"cpu": "AMD EPYC", "torch": "2.14.1+cu130", "torch_threads": 2}
OTHER_CPU = {"cpu": "Intel(R) Xeon(R) Platinum 8480+", "torch": "2.14.1+cu130"}
OTHER_TORCH = {"cpu": "AMD EPYC", "torch": "2.15.0+cpu"}


def record(seed: int, top1: float, *, env: dict = HERE, macs: int = 1000, ranks=None,
           method: str = "svd", lr: float = 1e-3, suite: str = "s") -> dict:
    cell = {"model": {"label": "m", "seeds": None}, "dataset": {"name": "d"},
            "method": method, "method_label": method, "params": {}, "target": {"macs": 0.5},
            "finetune": {"epochs": 1, "lr": lr}, "seed": seed}
    return {"suite": suite, "cell_id": f"c{seed}", "seed": seed, "status": "ok",
            "method": method, "env": dict(env), "cell": cell, "cost": {},
            "metrics": {"top1": top1, "val_top1": 0.5, "macs": macs, "params": 100},
            "method_info": {"ranks": ranks if ranks is not None else {"fc": 8}}}


COMMITTED = [record(0, 0.3364), record(1, 0.36), record(2, 0.329)]  # spread 3.1 pp


def outcomes(check) -> dict[str, str]:
    return {f.figure: f.outcome for f in check.figures}


# -- pure functions ------------------------------------------------------------

def test_same_machine_means_same_cpu_model_and_torch_build():
    assert same_machine(HERE, {**HERE, "torch_threads": 16})
    assert not same_machine(HERE, OTHER_CPU)
    assert not same_machine(HERE, OTHER_TORCH)
    assert not same_machine({}, {})  # unknown is not proof of the same machine


def test_seed_spread_groups_a_row_across_seeds_only():
    others = [record(0, 0.9, lr=1e-2), record(0, 0.1, suite="t"), record(1, 0.95, method="x"),
              {**record(3, 0.0), "status": "failed"}]
    spreads = seed_spreads(COMMITTED + others)
    row = spreads[row_key(COMMITTED[0])]
    assert row["top1"].seeds == 3
    assert row["top1"].width == pytest.approx(0.36 - 0.329)
    assert row["val_top1"].width == 0.0
    # another fine-tune setting, suite or method is another row; failed records don't count
    assert spreads[row_key(others[0])]["top1"].seeds == 1
    assert spreads[row_key(others[0])]["top1"].width is None
    assert row_key(others[1]) != row_key(COMMITTED[0])
    assert row_key(others[2]) != row_key(COMMITTED[0])


def test_same_cpu_demands_equality():
    spreads = seed_spreads(COMMITTED)
    same = check_record(COMMITTED[0], record(0, 0.3364), spreads=spreads)
    assert same.status == "same" and not same.failed and same.same_machine
    moved = check_record(COMMITTED[0], record(0, 0.3365), spreads=spreads)  # inside the spread
    assert moved.status == "differs" and moved.failed
    assert outcomes(moved)["top1"] == "differs"
    assert [d[0] for d in moved.differences] == ["top1"]


def test_other_cpu_equal_within_or_outside_the_seed_spread():
    spreads = seed_spreads(COMMITTED)
    for env in (OTHER_CPU, OTHER_TORCH):
        equal = check_record(COMMITTED[0], record(0, 0.3364, env=env), spreads=spreads)
        assert equal.status == "same" and not equal.failed and equal.same_machine is False
        within = check_record(COMMITTED[0], record(0, 0.3422, env=env), spreads=spreads)
        assert outcomes(within)["top1"] == WITHIN and not within.failed
        assert within.status == "within spread"
        outside = check_record(COMMITTED[0], record(0, 0.40, env=env), spreads=spreads)
        assert outcomes(outside)["top1"] == OUTSIDE and outside.failed
        assert outside.status == "outside"
    text = format_checks([check_record(COMMITTED[0], record(0, 0.3422, env=OTHER_CPU),
                                       label="m/d seed=0 svd macs<=0.5", spreads=spreads)])
    assert ("m/d seed=0 svd macs<=0.5 top1: 33.64 committed, 34.22 now: "
            "within the committed seed spread (3.1 pp over 3 seeds)") in text
    assert "recomputed on Intel(R) Xeon(R) Platinum 8480+" in text
    assert ("figures: 4 equal, 1 within the committed seed spread, 0 outside it, of 5"
            in text)


def test_other_cpu_structural_figures_must_be_equal():
    spreads = seed_spreads(COMMITTED)
    fewer = check_record(COMMITTED[0], record(0, 0.3364, env=OTHER_CPU, macs=999),
                         spreads=spreads)
    assert outcomes(fewer)["macs"] == OUTSIDE and fewer.failed
    ranks = check_record(COMMITTED[0], record(0, 0.3364, env=OTHER_CPU, ranks={"fc": 7}),
                         spreads=spreads)
    assert outcomes(ranks)["ranks"] == OUTSIDE
    text = format_checks([ranks])
    assert "ranks: {'fc': 8} committed, {'fc': 7} now: outside (structural" in text
    assert "1 differ (committed, now): {'fc': (8, 7)}" in text
    # structure the trained weights decide moves with the seed: judged against that spread
    chosen = [record(0, 0.3364, macs=1000, ranks={"fc": 8}),
              record(1, 0.36, macs=1100, ranks={"fc": 9}), record(2, 0.329, macs=1040,
                                                               ranks={"fc": 8})]
    moved = check_record(chosen[0], record(0, 0.34, env=OTHER_CPU, macs=1060,
                                           ranks={"fc": 9}), spreads=seed_spreads(chosen))
    assert outcomes(moved)["macs"] == WITHIN and outcomes(moved)["ranks"] == WITHIN
    assert not moved.failed and moved.status == "within spread"
    assert "macs: 1,000 committed, 1,060 now: within the committed seed spread (100 macs " \
        "over 3 seeds)" in format_checks([moved])
    far = check_record(chosen[0], record(0, 0.34, env=OTHER_CPU, macs=1200, ranks={"fc": 9}),
                       spreads=seed_spreads(chosen))
    assert outcomes(far)["macs"] == OUTSIDE and far.failed
    # on the same CPU and torch build the same change is a failure
    here = check_record(chosen[0], record(0, 0.3364, macs=1060, ranks={"fc": 9}),
                        spreads=seed_spreads(chosen))
    assert here.failed and here.status == "differs"
    # a method that decides from timings may differ anywhere, as expected
    accel = [record(s, 0.3, method="svd-accel") for s in range(2)]
    expected = check_record(accel[0], record(0, 0.2, env=OTHER_CPU, macs=900,
                                             method="svd-accel"), spreads=seed_spreads(accel))
    assert expected.status == "differs (expected)" and not expected.failed
    assert "note: svd-accel" in format_checks([expected])


def test_one_committed_seed_has_no_spread():
    one = [COMMITTED[0]]
    spreads = seed_spreads(one)
    moved = check_record(one[0], record(0, 0.3365, env=OTHER_CPU), spreads=spreads)
    assert outcomes(moved)["top1"] == OUTSIDE and moved.failed
    text = format_checks([moved])
    assert "outside (no seed spread: one committed seed)" in text
    equal = check_record(one[0], record(0, 0.3364, env=OTHER_CPU), spreads=spreads)
    assert not equal.failed and outcomes(equal)["top1"] == EQUAL


def test_judge_figure_edges():
    from bench.verify import Spread

    spread = Spread(0.02, 3)
    assert judge_figure("top1", 0.5, 0.52, same_machine=False, spread=spread).outcome == WITHIN
    assert judge_figure("top1", 0.5, 0.53, same_machine=False, spread=spread).outcome == OUTSIDE
    assert judge_figure("top1", 0.5, None, same_machine=False, spread=spread).outcome == OUTSIDE
    zero = judge_figure("top1", 0.5, 0.51, same_machine=False, spread=Spread(0.0, 3))
    assert zero.outcome == OUTSIDE and "spread 0 pp over 3 seeds" in zero.text
    assert judge_figure("params", 10, 10, same_machine=False).outcome == EQUAL


# -- the command, with the recompute replaced by constructed records ------------------------

@pytest.fixture
def three_seeds(tiny_suite, write_suite, tmp_path):
    tiny_suite["seeds"] = [0, 1, 2]
    path = write_suite(tiny_suite)
    suite, _ = load_suite(path)
    committed = tmp_path / "committed"
    by_seed = {}
    for cell in expand(suite):
        if cell.method != "svd":
            continue
        rec = record(cell.seed, COMMITTED[cell.seed]["metrics"]["top1"], suite=suite.name)
        rec["cell_id"] = cell.id
        atomic_write_json(ResultStore(committed).record_path(cell.id), rec)
        by_seed[cell.seed] = rec
    return path, committed, by_seed


def fake_recompute(monkeypatch, committed_by_seed: dict, **changes):
    """verify's recompute writes a copy of each committed svd record with ``changes``."""
    def run(suite, where, **kwargs):
        for cell in expand(suite):
            rec = copy.deepcopy(committed_by_seed[cell.seed])
            rec["env"] = changes.get("env", rec["env"])
            rec["metrics"]["top1"] = changes.get("top1", rec["metrics"]["top1"])
            atomic_write_json(ResultStore(where).record_path(cell.id), rec)

    monkeypatch.setattr("bench.run.driver.run_suite", run)
    monkeypatch.setattr("bench.preflight.preflight", lambda *a, **k: None)


@pytest.mark.parametrize(("env", "top1", "code", "said"), [
    (HERE, 0.3364, 0, "figures: 5 equal"),
    (HERE, 0.3422, 1, "must be equal"),
    (OTHER_CPU, 0.3364, 0, "figures: 5 equal"),
    (OTHER_CPU, 0.3422, 0, "within the committed seed spread (3.1 pp over 3 seeds)"),
    (OTHER_CPU, 0.40, 1, "outside the committed seed spread"),
])
def test_verify_exits_1_only_outside_the_spread_on_another_cpu(three_seeds, monkeypatch, capsys,
                                                               env, top1, code, said):
    path, committed, by_seed = three_seeds
    fake_recompute(monkeypatch, by_seed, env=env, top1=top1)
    assert main(["verify", str(path), "--only", "seed=0,method=svd",
                 "--results", str(committed)]) == code
    out = capsys.readouterr().out
    assert said in out
    assert "figures: " in out and "cells: " in out


def test_verify_with_one_committed_seed(three_seeds, monkeypatch, capsys):
    path, committed, by_seed = three_seeds
    for seed in (1, 2):
        ResultStore(committed).record_path(by_seed[seed]["cell_id"]).unlink()
    fake_recompute(monkeypatch, by_seed, env=OTHER_CPU, top1=0.3422)
    assert main(["verify", str(path), "--only", "seed=0,method=svd",
                 "--results", str(committed)]) == 1
    assert "outside (no seed spread: one committed seed)" in capsys.readouterr().out


# -- a recompute that cannot run stops first, with run's error -------------------------------

def test_verify_stops_on_missing_data_with_runs_error(tiny_suite, write_suite, tmp_path,
                                                       monkeypatch, capsys):
    monkeypatch.setenv("LOWRANK_BENCH_DATA", str(tmp_path / "data"))
    tiny_suite["datasets"] = [{"name": "imagefolder", "options": {"path": "no-such-folder"}}]
    path = write_suite(tiny_suite)
    committed = tmp_path / "committed"
    trained = []
    monkeypatch.setattr("bench.run.driver.run_suite", lambda *a, **k: trained.append(a))

    assert main(["run", str(path), "--results", str(tmp_path / "r")]) == 2
    run_err = capsys.readouterr().err
    assert main(["verify", str(path), "--only", "seed=0,method=dense",
                 "--results", str(committed)]) == 2
    captured = capsys.readouterr()
    assert "preflight failed" in captured.err and "dataset 'imagefolder' not found" in captured.err
    assert "no-such-folder" in captured.err
    assert captured.err.splitlines()[-1] == run_err.splitlines()[-1]  # the same problem
    assert "differ or failed" not in captured.out and "recompute" not in captured.out.replace(
        "recomputing", "")
    assert not trained  # nothing ran


def test_verify_fmnist_stops_when_its_files_are_missing(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("LOWRANK_BENCH_DATA", str(tmp_path))
    monkeypatch.setattr("bench.data.fashion_mnist.SYSTEM_DIR", tmp_path / "no-system-copy")
    monkeypatch.setattr("bench.run.driver.run_suite", lambda *a, **k: pytest.fail("ran"))
    assert main(["verify", "fmnist", "--only", "model=resnet10t-w16,seed=0,method=dense"]) == 2
    captured = capsys.readouterr()
    assert "dataset 'fashion-mnist' not found" in captured.err
    assert "differ or failed" not in captured.out


def test_cells_stopped_by_the_environment_stop_verify(tiny_suite, write_suite, tmp_path):
    from bench.run.driver import RunSummary

    suite, _ = load_suite(write_suite(tiny_suite))

    def run(suite, where, **kwargs):
        return RunSummary(environment=["mlp/digits seed=0 dense: OSError: disk full"])

    with pytest.raises(RecomputeStopped, match="disk full"):
        verify_suite(suite, tmp_path / "committed", run=run, check=lambda *a: None)


def test_same_cpu_name_with_other_kernels_is_another_machine():
    """A VM may name two CPUs alike; the kernels' instruction set tells them apart."""
    from bench.verify import same_machine

    base = {"cpu": "AMD EPYC", "torch": "2.14.1"}
    assert same_machine({**base, "cpu_capability": "AVX2"}, {**base, "cpu_capability": "AVX2"})
    assert not same_machine({**base, "cpu_capability": "AVX2"},
                            {**base, "cpu_capability": "AVX512"})
    assert same_machine(base, {**base, "cpu_capability": "AVX512"})  # older record: unknown


def test_the_machines_line_names_the_instruction_sets():
    """Both CPUs are "AMD EPYC": the line must say what differs, and that MACs may move."""
    spreads = seed_spreads(COMMITTED)
    old = {**COMMITTED[0], "env": {**COMMITTED[0]["env"], "cpu": "AMD EPYC",
                                   "cpu_capability": "AVX2"}}
    new_env = {**COMMITTED[0]["env"], "cpu": "AMD EPYC", "cpu_capability": "AVX512"}
    text = format_checks([check_record(old, record(0, 0.3422, env=new_env), spreads=spreads,
                                       label="m/d seed=0 svd macs<=0.5")])
    assert ("committed on AMD EPYC (AVX2), torch 2.14.1+cu130, recomputed on AMD EPYC "
            "(AVX512), torch 2.14.1+cu130: another CPU") in text
    assert "where the committed seeds chose different structures" in text
