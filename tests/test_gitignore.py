"""The reference suites' records are committable; everything else under results/ is not."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

COMMITTED = ["results/quick/cells/0123abcd.json", "results/fmnist/cells/0123abcd.json",
             "results/cifar-cpu/cells/0123abcd.json"]
IGNORED = ["results/quick/cells/0123abcd.log", "results/fmnist/cells/.0123abcd.json.x1.tmp",
           "results/cifar-cpu/checkpoints/key.pt", "results/quick/locks/group.lock",
           "results/fmnist/pending/0123abcd.pt", "results/quick/manifest.json",
           "results/cifar/cells/0123abcd.json", "results/my-suite/cells/0123abcd.json",
           "results/cifar-cpu/cells/nested/0123abcd.json", "results/maestro_bench/x.json"]


def ignored(path: str) -> bool:
    """``git check-ignore`` on the patterns alone (exit 0: ignored, 1: not ignored)."""
    proc = subprocess.run(["git", "check-ignore", "--no-index", "-q", path], cwd=ROOT,
                          capture_output=True, text=True)
    if proc.returncode not in (0, 1):
        pytest.skip(f"git check-ignore failed: {proc.stderr.strip()}")
    return proc.returncode == 0


@pytest.mark.skipif(shutil.which("git") is None or not (ROOT / ".git").exists(),
                    reason="needs git and a git checkout")
def test_only_reference_suite_records_are_committable():
    assert [p for p in COMMITTED if ignored(p)] == []
    assert [p for p in IGNORED if not ignored(p)] == []
