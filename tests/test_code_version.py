"""Which measuring code made a record: the digest, the dirty flag and the report's warning."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from types import SimpleNamespace

from bench.measure import code_version as measuring_code
from bench.measure.code_version import blob_id, commit_digest, is_measuring
from bench.measure.environment import git_commit
from bench.report.build import build_report
from bench.report.provenance import code_version, code_versions, version_steps
from tests.test_report import write_synthetic


def git(root: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=root, check=True, capture_output=True,
                          text=True).stdout.strip()


def repo(tmp_path: Path) -> Path:
    """A project with measuring code, report code and a README, one commit."""
    root = tmp_path / "project"
    for rel, text in {"bench/run.py": "x = 1\n", "bench/report/render.py": "y = 1\n",
                      "methods/svd.py": "z = 1\n", "README.md": "# p\n"}.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    git(root.parent, "init", "-q", str(root))
    git(root, "add", ".")
    git(root, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", "one")
    return root


def commit(root: Path, message: str) -> str:
    git(root, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-am", message)
    return git(root, "rev-parse", "HEAD")


def working_tree_digest(root: Path) -> str | None:
    """The on-disk digest read afresh (the module reads it once per process)."""
    measuring_code.working_tree_digest.cache_clear()
    return measuring_code.working_tree_digest(root)


def test_blob_id_is_gits(tmp_path):
    root = repo(tmp_path)
    assert blob_id(b"x = 1\n") == git(root, "hash-object", "bench/run.py")


def test_measuring_files_are_the_python_of_bench_and_methods_without_reports():
    assert is_measuring("bench/run/runner.py") and is_measuring("methods/svd.py")
    assert not is_measuring("bench/report/build.py")
    assert not is_measuring("README.md") and not is_measuring("suites/quick.yaml")
    assert not is_measuring("tests/test_svd.py")


def test_digest_on_disk_equals_the_commits_and_ignores_docs_and_reports(tmp_path):
    root = repo(tmp_path)
    first = git(root, "rev-parse", "HEAD")
    on_disk = working_tree_digest(root)
    assert on_disk is not None and on_disk == commit_digest(first, root)
    assert git_commit(root) == first  # clean

    (root / "README.md").write_text("# p, edited beside a run\n")
    (root / "bench/report/render.py").write_text("y = 2\n")
    assert working_tree_digest(root) == on_disk
    assert git_commit(root) == first  # docs and report code do not make a record dirty
    second = commit(root, "docs and report rendering")
    assert commit_digest(second, root) == on_disk

    (root / "methods/svd.py").write_text("z = 2\n")
    assert git_commit(root) == second + "-dirty"
    edited = working_tree_digest(root)
    assert edited != on_disk
    third = commit(root, "a method changed")
    assert commit_digest(third, root) == edited
    assert commit_digest("0" * 40, root) is None  # not in this history


def test_versions_group_commits_by_code(tmp_path):
    root = repo(tmp_path)
    first = git(root, "rev-parse", "HEAD")
    (root / "README.md").write_text("# records committed\n")
    second = commit(root, "records")
    (root / "bench/run.py").write_text("x = 2\n")
    third = commit(root, "runner changed")
    envs = [{"git_commit": first}, {"git_commit": second},  # older records: no digest
            {"git_commit": third, "code_digest": working_tree_digest(root)},
            {"git_commit": third + "-dirty"}, {"git_commit": "f" * 40}]
    versions = code_versions(envs, root)
    same = code_version({"git_commit": first}, root)
    assert same == code_version({"git_commit": second}, root)
    assert sorted(versions[same]) == sorted([first[:8], second[:8]])
    assert versions[code_version(envs[2], root)] == {third[:8]: 1}
    assert code_version(envs[3], root).endswith("+ unrecorded uncommitted edits")
    assert code_version(envs[4], root) == "commit " + "f" * 40  # unknown here: kept apart
    assert len(versions) == 4


def test_report_warns_on_code_versions_not_on_commits(tmp_path):
    """Records committed between slices name many commits; only a change of the measuring
    code is worth a warning."""
    suite_path, results = write_synthetic(tmp_path, seeds=[0, 1], fail_one=False)
    paths = sorted((results / "cells").glob("*.json"))
    for i, path in enumerate(paths):
        rec = json.loads(path.read_text())
        rec["env"]["git_commit"] = f"{i % 3}" * 40
        rec["env"]["code_digest"] = "a" * 16
        path.write_text(json.dumps(rec))
    build_report(results, tmp_path / "one")
    md = (tmp_path / "one" / "README.md").read_text().replace("\\", "")
    assert "versions of the measuring code" not in md and "measured under" not in md
    assert f"code {'a' * 16} (commits 00000000, 11111111, 22222222; {len(paths)} cells)" in md
    assert "| code digest |" not in md  # shown once, in the "measuring code" row

    rec = json.loads(paths[0].read_text())
    rec["env"]["code_digest"] = "b" * 16
    paths[0].write_text(json.dumps(rec))
    build_report(results, tmp_path / "two")
    md = (tmp_path / "two" / "README.md").read_text().replace("\\", "")
    assert ("records were measured under 2 versions of the measuring code (the Python files "
            "of bench/ and methods/, report rendering aside): code " + "a" * 16) in md
    assert f"code {'b' * 16} (commit 00000000; 1 cell)" in md


def test_the_warning_names_the_files_that_changed_between_versions(tmp_path):
    """Told only "3 versions", a reader cannot tell whether a change touched a row; the
    steps name the measuring files each change edited, in the order they were used."""
    root = repo(tmp_path)
    first = git(root, "rev-parse", "HEAD")
    (root / "methods/svd.py").write_text("z = 2\n")
    (root / "bench/report/render.py").write_text("y = 2\n")  # not measuring: not named
    second = commit(root, "svd changed")
    (root / "bench/run.py").write_text("x = 2\n")
    third = commit(root, "runner changed")

    def record(i: int, commit_id: str) -> SimpleNamespace:  # what the steps read of a record
        return SimpleNamespace(created=f"2026-01-0{i}T00:00:00+00:00",
                               env={"git_commit": commit_id})

    records = [record(3, third), record(1, first), record(2, second),
               record(4, third + "-dirty"), record(5, "f" * 40)]
    steps = version_steps(records, root)
    one, two, three = (code_version({"git_commit": c}, root) for c in (first, second, third))
    assert steps[:3] == [f"{one} → {two}: methods/svd.py", f"{two} → {three}: bench/run.py",
                         f"{three} → {three} + edits: uncommitted edits, not recorded"]
    assert steps[3].endswith(": not known (edits measured before they were committed, or a "
                             "commit not in this repository's history)")
    assert len(steps) == 4
