"""The dry run's probe estimate is close to the wall time of the run it estimates."""

from __future__ import annotations

import pytest
import torch

from bench.cli import main
from bench.estimate import estimate_suite, format_estimate
from bench.runner import run_suite
from bench.suite import Suite

EST_SUITE = {
    "name": "est",
    "datasets": [{"name": "digits"}],
    "models": [{"name": "mlp", "kwargs": {"hidden": [512, 512]}}],
    "train": {"epochs": 6, "batch_size": 32, "optimizer": "adamw", "lr": 3e-3,
              "augment": False},
    "finetune": {"epochs": 2, "batch_size": 32, "optimizer": "adamw", "lr": 1e-3,
                 "augment": False},
    "methods": [{"name": "dense"}, {"name": "svd"}],
    "targets": [{"macs": 0.5}, {"macs": 0.25}],
    "seeds": [0],
    "latency": {"batch_sizes": [1, 64], "min_runs": 20, "min_seconds": 0.05, "warmup": 3},
}


@pytest.fixture
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_probe_estimate_is_within_a_factor_of_2_of_the_wall_time(tmp_path, one_thread):
    # The probe (a few steps) and the run (seconds) are timed at different moments, so
    # load arriving on the other core between them moves the ratio: over 20 runs on a
    # shared 2-core machine (load average 1.8 to 2.8) it ranged from 0.53 to 1.02, one
    # run outside 1/1.5. Hence a factor of 2, and a second try before failing: it
    # catches an estimate off by more than 2x (a unit slip, a stage priced per step
    # instead of per epoch), not a smaller bias.
    suite = Suite(**EST_SUITE)

    def attempt(results) -> tuple:
        est = estimate_suite(suite, results, device=torch.device("cpu"))
        assert est.cells == 3 and est.trainings == 1 and not est.missing
        assert set(est.per_method) == {"dense", "svd", "(dense baselines)"}
        summary = run_suite(suite, results, device=torch.device("cpu"), say=lambda s: None)
        assert summary.ok == 3
        return est.total_s, summary.seconds

    est_s, wall_s = attempt(tmp_path / "results")
    if not 1 / 2 <= est_s / wall_s <= 2:
        est_s, wall_s = attempt(tmp_path / "again")
    assert 1 / 2 <= est_s / wall_s <= 2, (est_s, wall_s)
    done = estimate_suite(suite, tmp_path / "results", device=torch.device("cpu"))
    assert done.cells == 0 and done.total_s == 0  # nothing left to do


def test_dry_run_prints_hours_per_model_and_method(tiny_suite, write_suite, tmp_path, capsys):
    path = write_suite(tiny_suite)
    assert main(["run", str(path), "--results", str(tmp_path / "r"), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "estimate from a probe on this machine's cpu" in out and "CPU-hours" in out
    assert "per model:" in out and "per method:" in out and "(dense baselines)" in out
    assert not (tmp_path / "r").exists()


def test_missing_data_is_named_instead_of_estimated(tmp_path, monkeypatch):
    monkeypatch.setenv("LOWRANK_BENCH_OFFLINE", "1")
    suite = Suite(**{**EST_SUITE, "datasets": [{"name": "cifar10"}]})
    est = estimate_suite(suite, tmp_path / "r", str(tmp_path / "data"))
    assert est.cells == 0 and "dataset 'cifar10'" in est.missing[0]
    assert "no estimate for cells of dataset 'cifar10'" in format_estimate(est)


def test_timing_is_priced_once_per_row_and_seed_when_shared(tiny_suite, tmp_path, monkeypatch):
    """Two recovery budgets deploy one architecture per row and seed: timed once."""
    import bench.estimate as estimate

    monkeypatch.setattr(estimate, "probe", lambda cell, data, device: estimate.ModelProbe(
        step_s={128: 0.01}, eval_s_per_image=1e-5, measure_s=10.0, measure_cuda_s=0.0,
        train_size=len(data.train), eval_size=100))
    tiny_suite["finetune"] = {"batch_size": 128, "optimizer": "adamw", "augment": False}
    tiny_suite["recovery"] = {"epochs": [1, 2], "lr_grid": [1.0e-3]}
    tiny_suite["seeds"] = [0, 1]
    suite = Suite(**tiny_suite)  # dense + svd at one target: 2 rows x 2 seeds x 2 budgets
    shared = estimate_suite(suite, tmp_path / "a", device=torch.device("cpu"))
    each = estimate_suite(suite, tmp_path / "b", device=torch.device("cpu"), share_timing=False)
    assert shared.cells == each.cells == 8
    assert each.cpu_s == pytest.approx(8 * 10.0) and shared.cpu_s == pytest.approx(4 * 10.0)
    assert each.device_s == pytest.approx(shared.device_s)


def test_the_jobs_estimate_runs_the_units_in_the_runners_order(tiny_suite):
    """Two workers on one seed: the dense row's unit trains the baseline (100 s), a train
    method takes the other worker (100 s), the other post methods follow; against the old
    grouping, where one worker ran every post method after the baseline."""
    from bench.cells import expand
    from bench.estimate import Estimate, scheduled_wall_s

    tiny_suite["methods"] = [{"name": "dense"}, {"name": "svd"}, {"name": "prune-l1"},
                             {"name": "funnel"}, {"name": "monarch-scratch"}]
    cells = expand(Suite(**tiny_suite))
    est = Estimate(device="cpu")
    seconds = {"dense": 100.0, "svd": 30.0, "prune-l1": 30.0, "funnel": 30.0,
               "monarch-scratch": 100.0}
    for c in cells:
        est.add("mlp", c.method_label, seconds[c.method], 2.0, cell=c.id)
    cold = est.checkpointed.__contains__  # no baseline trained yet
    timing = 2.0 * len(cells)
    # split: A dense 0-100, B monarch-scratch 0-100, then svd, prune-l1, funnel: 100-160
    assert scheduled_wall_s(est, cells, 2, split=True, baseline_cached=cold) == 160 + timing
    # together: A dense + the post methods 0-190, B monarch-scratch 0-100
    assert scheduled_wall_s(est, cells, 2, split=False, baseline_cached=cold) == 190 + timing
    assert scheduled_wall_s(est, cells, 1, split=False, baseline_cached=cold) == 290 + timing
    # a unit waits for the baseline another unit is training: three workers, the third
    # takes svd at once but starts it only when dense's unit ends (100-130), then A and B
    # take prune-l1 and funnel (100-130); without the wait it would all end at 100
    assert scheduled_wall_s(est, cells, 3, split=True, baseline_cached=cold) == 130 + timing
    text = format_estimate(est, 2)
    assert "with 2 jobs (local): about" in text and "if the work divided evenly" in text
