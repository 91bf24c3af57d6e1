"""Where a report's numbers come from: machine, versions, commits and suite hashes.

Each field is summarised over the records, with counts where they disagree;
a report that mixes several versions of the measuring code (not merely several
commits: records are committed between slices), suite hashes or machines says
so in a warning at the top, since its rows were not measured under one setup.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

from bench.measure.code_version import (
    PROJECT_ROOT,
    changed_files,
    commit_digest,
    commit_files,
    digest,
)
from bench.record import Record, machine_label

LABELS = {"git_commit": "git commit", "cpu": "CPU model", "gpu": "GPU", "cpu_count": "CPU cores",
          "cpu_cores_available": "CPU cores available", "torch_threads": "torch threads",
          "torch_interop_threads": "torch inter-op threads", "lowrank_bench": "lowrank-bench"}
FIRST = ("cpu", "gpu", "cpu_count", "cpu_cores_available", "torch_threads", "python", "torch",
         "timm", "git_commit")
WATCH = {"torch": "torch versions"}
SHOWN_APART = "code_digest"  # in the "measuring code" row, with the commits of each version


def _text(v: Any) -> str:
    if isinstance(v, dict):
        v = ", ".join(f"{k} {x}" for k, x in v.items() if x is not None)
    return "n/a" if v is None or v == "" else str(v)


def summary(values: list[Any]) -> str:
    c = Counter(_text(v) for v in values)
    if len(c) == 1:
        return next(iter(c))
    return "; ".join(f"{v} ({n} cells)" for v, n in c.most_common())


def provenance(records: list[Record], suite: str, suite_hash: str, counts: dict
               ) -> tuple[list[tuple[str, str]], list[str]]:
    """(rows of the provenance table, warnings) for the records of one report."""
    rows = [("suite", suite), ("suite hash (manifest)", suite_hash),
            ("record suite hashes", summary([r.suite_hash for r in records])),
            ("cells", ", ".join(f"{n} {k}" for k, n in counts.items() if k != "expected")
             + f" (of {counts['expected']} expected)")]
    created = sorted(r.created for r in records if r.created)
    if created:
        rows.append(("records created", f"{created[0]} to {created[-1]}"))
    envs = [r.env for r in records]
    keys = [k for k in FIRST if any(k in e for e in envs)]
    keys += [k for k in dict.fromkeys(k for e in envs for k in e) if k not in keys + [SHOWN_APART]]
    for k in keys:
        rows.append((LABELS.get(k, k.replace("_", " ")), summary([e.get(k) for e in envs])))
    warnings = []
    hashes = {r.suite_hash for r in records if r.suite_hash}
    if len(hashes) > 1 or (hashes and suite_hash not in hashes):
        warnings.append(f"records come from {len(hashes)} suite hash(es) "
                        f"({', '.join(sorted(hashes))}); the suite now hashes to {suite_hash}")
    machines = [machine_label(e) for e in envs if e]
    if len(set(machines)) > 1:
        warnings.append(
            f"records were measured on several machines: {summary(machines)}. Latencies in ms and "
            "costs in seconds compare only within one machine (a table marks † where a row's "
            "machine is not its reference's). Paired speedups, each timed against the dense "
            "model on the same machine, compare across machines, and accuracies do within "
            "the seed spread")
    versions = code_versions(envs)
    if versions:
        rows.append(("measuring code", summary_counts(versions)))
    if len(versions) > 1:
        warnings.append(
            f"records were measured under {len(versions)} versions of the measuring code "
            "(the Python files of bench/ and methods/, report rendering aside): "
            f"{summary_counts(versions)}. Figures of different versions compare only where "
            "the change between them did not touch what they measure. What changed, in the "
            "order the versions were first used: " + "; ".join(version_steps(records)))
    for key, what in WATCH.items():
        vals = {_text(e.get(key)) for e in envs if e.get(key) is not None}
        if len(vals) > 1:
            warnings.append(f"records were measured under {len(vals)} {what}: "
                            f"{', '.join(sorted(vals))}")
    warnings += baseline_warnings(records)
    return rows, warnings


def code_version(env: dict, root: Path = PROJECT_ROOT) -> str | None:
    """A record's measuring-code version: its ``code_digest``, else the digest of the
    measuring files at the commit it names (git history at root), else the commit."""
    if env.get("code_digest"):
        return f"code {env['code_digest']}"
    commit = env.get("git_commit")
    if not commit:
        return None
    base = str(commit).removesuffix("-dirty")
    found = commit_digest(base, root)
    if found is None:
        return f"commit {commit}"
    if base != commit:  # edited when measured; what was edited was not recorded
        return f"code {found} + unrecorded uncommitted edits"
    return f"code {found}"


def code_versions(envs: list[dict], root: Path = PROJECT_ROOT) -> dict[str, Counter]:
    """{version: Counter of the short commits its records name} over the records."""
    out: dict[str, Counter] = {}
    for e in envs:
        version = code_version(e, root) if e else None
        if version is not None:
            commit = str(e.get("git_commit") or "no commit")
            short = commit[:8] + ("-dirty" if commit.endswith("-dirty") else "")
            out.setdefault(version, Counter())[short] += 1
    return out


EDITS = " + unrecorded uncommitted edits"
MOST_FILES = 8  # files named per step; the rest are counted


def version_steps(records: list[Record], root: Path = PROJECT_ROOT) -> list[str]:
    """"code A → code B: the measuring files that changed" for each pair of versions next
    to each other in the order the records first used them, read from git history (the
    files of a commit each version's records name), so a reader can tell whether a change
    touched what a row measures."""
    first: dict[str, tuple | None] = {}  # version -> its files, in order of first use
    for r in sorted(records, key=lambda r: r.created or ""):
        version = code_version(r.env or {}, root)
        if version is None or first.get(version) is not None:
            continue
        commit = str((r.env or {}).get("git_commit") or "").removesuffix("-dirty")
        files = commit_files(commit, root) if commit and version.startswith("code ") else None
        # the commit's files are this version's when their digest is the version's own
        first[version] = files if files and digest(files) == version.split()[1] else None
    versions = list(first)
    steps = []
    for a, b in zip(versions, versions[1:]):
        step = f"{_short(a)} → {_short(b)}: "
        fa, fb = first[a], first[b]
        if fa is None or fb is None:
            steps.append(step + "not known (edits measured before they were committed, or "
                                "a commit not in this repository's history)")
            continue
        changed = changed_files(fa, fb)
        text = ", ".join(changed[:MOST_FILES]) + (
            f" and {len(changed) - MOST_FILES} more" if len(changed) > MOST_FILES else "")
        if a.endswith(EDITS) or b.endswith(EDITS):
            text = (text + "; " if text else "") + "uncommitted edits, not recorded"
        steps.append(step + (text or "nothing"))
    return steps


def _short(version: str) -> str:
    return version.removesuffix(EDITS) + (" + edits" if version.endswith(EDITS) else "")


def summary_counts(versions: dict[str, Counter]) -> str:
    """"version (commits a, b; n cells)" per version, most cells first."""
    parts = sorted(versions.items(), key=lambda kv: -sum(kv[1].values()))
    out = []
    for version, commits in parts:
        n = sum(commits.values())
        out.append(f"{version} (commit{'s' if len(commits) > 1 else ''} "
                   f"{', '.join(sorted(commits))}; {n} cell{'s' if n > 1 else ''})")
    return "; ".join(out)


def baseline_warnings(records: list[Record]) -> list[str]:
    """One warning per model x dataset x seed whose rows started from more than one
    trained dense model (the ``weights`` digest of their ledger's pretrain phase).

    Rows of a seed are compared paired on the dense model they share; a baseline
    trained again (a lost checkpoint, another CPU) gives other weights, and rows
    compressed from it are no longer paired with the dense row of that seed.
    """
    seen: dict[tuple[str, str, int], Counter] = {}
    for r in records:
        if r.status != "ok" or r.ledger is None:
            continue
        digests = [p.model_extra.get("weights") for p in r.ledger.phases
                   if p.phase == "pretrain" and p.model_extra]
        if digests and digests[0]:
            seen.setdefault((r.model, r.dataset, r.seed), Counter())[digests[0]] += 1
    out = []
    for (model, dataset, seed), c in sorted(seen.items()):
        if len(c) > 1:
            parts = ", ".join(f"{d} ({n} cells)" for d, n in c.most_common())
            out.append(f"seed {seed} of {model} on {dataset}: its rows start from {len(c)} "
                       f"different trained dense models (weights {parts}), so they are not "
                       "paired on one dense model; recompute one set's cells from the other's "
                       "dense checkpoint (delete their records and run again)")
    return out
