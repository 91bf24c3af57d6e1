"""Which version of the measuring code made a record.

A report warned whenever its records named different git commits, but reference
suites are computed a slice at a time and their records committed between slices,
so every slice runs under a new commit even when not one line of code changed, and
a README edit marked a run "-dirty". A warning that always fires teaches readers to
skip it. What matters is whether the code that computes figures changed: the Python
files under ``bench/`` and ``methods/``, report rendering aside (it reads records,
it does not make them).

The digest is built from git blob ids (the SHA-1 of ``blob <size>\\0<content>``),
so it is the same whether computed from the files on disk when a record is made or
from ``git ls-tree`` of a commit that an older record names: records made before
the digest existed are matched to new ones through their commit.
"""

from __future__ import annotations

import hashlib
import subprocess
from collections.abc import Iterable
from functools import lru_cache
from pathlib import Path

MEASURING_DIRS = ("bench", "methods")
NOT_MEASURING = ("bench/report/",)
PROJECT_ROOT = Path(__file__).resolve().parents[2]


def is_measuring(path: str) -> bool:
    """True for a Python file (path relative to the project root, "/"-separated) whose
    changes can change a figure."""
    return (path.endswith(".py") and path.split("/", 1)[0] in MEASURING_DIRS
            and not path.startswith(NOT_MEASURING))


def blob_id(data: bytes) -> str:
    """git's object id of a file with these bytes."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def digest(entries: Iterable[tuple[str, str]]) -> str:
    """16 hex digits over (path, blob id) pairs of the measuring files, order-free."""
    lines = sorted(f"{path} {blob}" for path, blob in entries if is_measuring(path))
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()[:16]


@lru_cache(maxsize=8)
def working_tree_digest(root: Path = PROJECT_ROOT) -> str | None:
    """The digest of the measuring files on disk (uncommitted edits included), read once
    per process: every record of a process is made by the code it loaded, so the files
    are not read again for each record. None when the tree is not there (an installed
    package without them)."""
    files = [p for d in MEASURING_DIRS for p in sorted((root / d).rglob("*.py"))]
    if not files:
        return None
    return digest((p.relative_to(root).as_posix(), blob_id(p.read_bytes())) for p in files)


@lru_cache(maxsize=256)
def commit_files(commit: str, root: Path = PROJECT_ROOT) -> tuple[tuple[str, str], ...] | None:
    """(path, blob id) of the measuring files at a commit of the repository at root; None
    when git or the commit is not available (a shallow clone, an installed package)."""
    try:
        out = subprocess.run(["git", "ls-tree", "-r", "--full-tree", commit, "--",
                              *MEASURING_DIRS], capture_output=True, text=True, timeout=20,
                             cwd=root)
    except (OSError, subprocess.SubprocessError):
        return None
    if out.returncode != 0:
        return None
    entries = []
    for line in out.stdout.splitlines():  # "<mode> blob <id>\t<path>"
        meta, _, path = line.partition("\t")
        parts = meta.split()
        if len(parts) == 3 and parts[1] == "blob" and is_measuring(path):
            entries.append((path, parts[2]))
    return tuple(sorted(entries)) or None


def commit_digest(commit: str, root: Path = PROJECT_ROOT) -> str | None:
    """The digest of the measuring files at a commit (see :func:`commit_files`)."""
    files = commit_files(commit, root)
    return digest(files) if files else None


def changed_files(before: Iterable[tuple[str, str]], after: Iterable[tuple[str, str]]
                  ) -> list[str]:
    """The measuring files that differ between two versions: edited, added or removed."""
    a, b = dict(before), dict(after)
    return sorted(p for p in a.keys() | b.keys() if a.get(p) != b.get(p))
