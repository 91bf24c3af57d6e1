"""The environment is checked before any cell runs and is never cached as a method's failure."""

from __future__ import annotations

import errno
import json
import subprocess
import sys
from pathlib import Path

import pytest
from torch import nn

from bench import Method, MethodContext, Target
from bench.cli import main
from bench.data import DatasetMissingError
from bench.preflight import PreflightError, is_environment_error, preflight
from bench.suite import Suite
from tests.test_data import cifar10_files, write_tar


@pytest.fixture
def cifar_suite(tiny_suite):
    tiny_suite["datasets"] = [{"name": "cifar10", "options": {"augment": "none"}}]
    tiny_suite["train"]["epochs"] = 1
    return tiny_suite


def test_missing_data_stops_in_preflight_then_the_same_command_runs(
        cifar_suite, write_suite, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("LOWRANK_BENCH_OFFLINE", "1")
    path, root, results = write_suite(cifar_suite), tmp_path / "data", tmp_path / "results"
    argv = ["run", str(path), "--results", str(results), "--data-root", str(root)]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "preflight failed (1 problem(s)); nothing was run and no record was written" in err
    assert "dataset 'cifar10' not found" in err and str(root / "cifar-10-batches-py") in err
    assert not list(results.glob("cells/*.json")) and not (results / "checkpoints").exists()
    write_tar(root / "cifar-10-python.tar.gz", "cifar-10-batches-py", cifar10_files())
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "preflight ok: 1 dataset(s) loaded, 1 model(s) built" in out
    records = [json.loads(p.read_text()) for p in results.glob("cells/*.json")]
    assert len(records) == 2 and {r["status"] for r in records} == {"ok"}


def test_unwritable_results_and_full_disk_are_reported_together(tiny_suite, tmp_path):
    suite = Suite(**tiny_suite)
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(PreflightError) as exc:
        preflight(suite, blocker / "results", str(tmp_path / "data"))
    assert "results directory" in str(exc.value) and "is not writable" in str(exc.value)
    with pytest.raises(PreflightError, match="not enough disk space .* 2 pending model"):
        preflight(suite, tmp_path / "results", str(tmp_path / "data"), free_bytes=lambda p: 10)
    report = preflight(suite, tmp_path / "results", str(tmp_path / "data"))
    assert report.trainings == 1  # one dense baseline; svd starts from it
    assert report.disk_needed > report.model_bytes["mlp"] * 3
    assert not list((tmp_path / "results").iterdir())  # the probe file is gone


def test_a_model_that_cannot_be_built_for_the_data_is_a_preflight_error(tiny_suite, tmp_path):
    tiny_suite["models"] = [{"name": "vit_tiny_patch16_224", "stem": "cifar"}]
    with pytest.raises(PreflightError, match="model 'vit_tiny_patch16_224'.*cannot be built"):
        preflight(Suite(**tiny_suite), tmp_path / "r", str(tmp_path / "d"))


def test_environment_errors_are_told_apart_from_a_method_error():
    assert is_environment_error(DatasetMissingError("no data"))
    assert is_environment_error(OSError(errno.ENOSPC, "No space left on device"))
    assert is_environment_error(KeyboardInterrupt())
    try:
        try:
            raise OSError(errno.ENOSPC, "No space left on device")
        except OSError as inner:
            raise RuntimeError("saving the checkpoint failed") from inner
    except RuntimeError as outer:
        assert is_environment_error(outer)
    assert not is_environment_error(ValueError("rank must be positive"))
    assert not is_environment_error(OSError(errno.ENOENT, "a file the method wanted"))


def test_methods_into_a_closed_pipe_prints_no_traceback():
    proc = subprocess.run(f"{sys.executable} -m bench.cli methods | head -1", shell=True,
                          capture_output=True, text=True, timeout=120)
    assert proc.stdout.count("\n") == 1 and proc.stderr == "", proc.stderr


class FullDisk(Method):
    """Keeps the model as it is, or fails the way a full disk does while the flag file exists."""

    name = "test-full-disk"
    flag: Path | None = None

    def compress(self, model: nn.Module, target: Target | None, ctx: MethodContext) -> nn.Module:
        if FullDisk.flag is not None and FullDisk.flag.exists():
            try:
                raise OSError(errno.ENOSPC, "No space left on device")
            except OSError as exc:
                raise RuntimeError("could not write the factors") from exc
        return model


def test_a_full_disk_in_a_cell_writes_no_record_and_the_rerun_computes_it(
        tiny_suite, write_suite, tmp_path, capsys):
    FullDisk.flag = tmp_path / "disk-full"
    FullDisk.flag.touch()
    tiny_suite["methods"] = [{"name": "dense"},
                             {"name": "tests.test_preflight:FullDisk", "label": "full-disk"}]
    path, results = write_suite(tiny_suite), tmp_path / "results"
    argv = ["run", str(path), "--results", str(results)]
    try:
        assert main(argv) == 1
        out = capsys.readouterr().out
        assert "stopped by the environment, not recorded" in out and "RuntimeError" in out
        records = [json.loads(p.read_text()) for p in results.glob("cells/*.json")]
        assert [r["method"] for r in records] == ["dense"]  # no failed record for the method
        FullDisk.flag.unlink()
        assert main(argv) == 0
        records = [json.loads(p.read_text()) for p in results.glob("cells/*.json")]
        assert sorted(r["method"] for r in records) == ["dense", "full-disk"]
        assert {r["status"] for r in records} == {"ok"}
    finally:
        FullDisk.flag = None


def test_missing_data_inside_a_worker_is_not_recorded(cifar_suite, tmp_path, monkeypatch):
    from bench.runner import run_suite

    monkeypatch.setenv("LOWRANK_BENCH_OFFLINE", "1")
    results = tmp_path / "results"
    summary = run_suite(Suite(**cifar_suite), results, data_root=str(tmp_path / "data"),
                        say=lambda s: None)
    assert len(summary.environment) == 1 and "dataset 'cifar10' not found" in summary.environment[0]
    assert summary.failed == [] and not list(results.glob("cells/*.json"))
