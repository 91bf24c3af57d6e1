"""Gather every suite's report into one static site with an index page.

reports/<suite>/ folders (anything holding an index.html) are copied to
reports/site/<suite>/, and reports/site/index.html links them and compares
methods across suites from the scores each report saved in scores.json:
mean ranks over equal coverage and head-to-head win rates. Example suites
(a manifest with `example: true`, or only toy datasets such as digits) are
listed but kept out of that ranking unless `include_examples` is set.
Given the results root, a report whose records changed since it was
rendered is re-rendered before it is copied.
"""

from __future__ import annotations

import datetime as dt
import json
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import jinja2

from bench.manifest import ManifestError
from bench.record import RecordError
from bench.report.build import build_report, write_text
from bench.report.freshness import check_report, has_results
from bench.report.present import rank_row
from bench.report.scores import cross_ranking

TEMPLATES = Path(__file__).parent / "templates"
SITE_DIR = "site"
EXAMPLE_DATASETS = ("digits",)  # toy data: a suite on these alone is an example


def suite_reports(reports_root: Path, exclude: str = SITE_DIR) -> list[Path]:
    return sorted(d for d in Path(reports_root).iterdir()
                  if d.is_dir() and d.name != exclude and (d / "index.html").exists())


def _load_scores(d: Path) -> dict:
    try:
        return json.loads((d / "scores.json").read_text())
    except (OSError, json.JSONDecodeError):
        return {}


def is_example(scores: dict, example_datasets: tuple[str, ...] = EXAMPLE_DATASETS) -> bool:
    if scores.get("example"):
        return True
    datasets = {g.get("dataset") for g in scores.get("groups", [])}
    return bool(datasets) and datasets <= set(example_datasets)


def git_commit(cwd: Path) -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                             text=True, timeout=10, cwd=cwd)
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


class StaleReportError(RuntimeError):
    """A report that may not show its suite's current records and cannot be re-rendered."""


def refresh_reports(reports: list[Path], results_root: Path,
                    say: Callable[[str], None] = print) -> list[Path]:
    """Re-render each report whose records under results_root/<suite>/ changed since it was
    rendered (or that has no fingerprint); returns the re-rendered folders.

    A report without such a results directory is left as it is. Raises
    StaleReportError when a report's records cannot be checked or it cannot
    be re-rendered (no manifest, an unreadable manifest or record).
    """
    done = []
    for d in reports:
        results = Path(results_root) / d.name
        if not has_results(results):
            continue
        try:
            state = check_report(results, d)
        except (FileNotFoundError, ManifestError, RecordError) as exc:
            raise StaleReportError(
                f"{d}: cannot check it against its records in {results} ({exc}); not "
                f"publishing numbers that may be stale: render it first (lowrank-bench "
                f"report {d.name})") from None
        if not state.stale:
            continue
        say(f"{d}: {state.reason}; re-rendering")
        try:
            build_report(results, d)
        except (OSError, ManifestError, RecordError) as exc:
            raise StaleReportError(f"{d}: {state.reason}, and re-rendering it from {results} "
                                   f"failed ({exc}); not publishing stale numbers") from None
        done.append(d)
    return done


def publish_site(reports_root: Path, out: Path | None = None, include_examples: bool = False,
                 example_datasets: tuple[str, ...] = EXAMPLE_DATASETS,
                 results_root: Path | None = None,
                 say: Callable[[str], None] = print) -> Path:
    """Copy each reports/<suite>/ into `out` (default reports/site/) and write its index.

    With `results_root`, a report whose suite has a results directory there
    (results_root/<suite>/) is first re-rendered when its records changed
    since it was rendered (`refresh_reports`), so the site and the README
    blocks never show older numbers than the records.
    """
    reports_root = Path(reports_root)
    out = Path(out) if out else reports_root / SITE_DIR
    suites = [d for d in suite_reports(reports_root) if d.resolve() != out.resolve()]
    if not suites:
        raise FileNotFoundError(f"no suite reports under {reports_root}/ (each needs an "
                                "index.html); render one first (lowrank-bench report quick)")
    if results_root is not None:
        refresh_reports(suites, Path(results_root), say)
    out.mkdir(parents=True, exist_ok=True)
    entries, rows, commits, hashes = [], [], set(), {}
    for d in suites:
        target = out / d.name
        if target.exists():
            shutil.rmtree(target)
        shutil.copytree(d, target)
        scores = _load_scores(d)
        groups = scores.get("groups", [])
        example = is_example(scores, example_datasets)
        ranked = include_examples or not example
        if ranked:
            for g in groups:
                for s in g.get("scores", []):
                    rows.append({**s, "group": (d.name, g.get("model"), g.get("dataset"))})
        commits.update(scores.get("commits", []))
        hashes[d.name] = scores.get("suite_hash", "n/a")
        thumb = scores.get("thumb") if "thumb" in scores else next(  # older reports: any
            (p.name for p in sorted(d.glob("acc-vs-macs-*.svg"))), None)
        counts = scores.get("counts", {})
        entries.append({
            "name": d.name, "description": scores.get("description", ""), "example": example,
            "ranked": ranked,
            "counts": ", ".join(f"{counts[k]} {k}" for k in
                                ("ok", "over budget", "failed", "not applicable", "not run")
                                if counts.get(k)) + f" of {counts.get('expected', '?')}",
            # one per model x dataset, however many recovery budgets it has
            "pairs": list(dict.fromkeys(f"{g.get('model')} on {g.get('dataset')}"
                                        for g in groups)),
            "thumb": f"{d.name}/{thumb}" if thumb else None})
    ranking = [rank_row(r) for r in cross_ranking(rows)]
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(TEMPLATES),
                             undefined=jinja2.StrictUndefined, autoescape=True)
    html = env.get_template("site.html.j2").render(
        suites=entries, ranking=ranking, n_groups=len({r["group"] for r in rows}),
        built=dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        commit=git_commit(reports_root.resolve()), record_commits=sorted(commits),
        include_examples=include_examples,
        excluded=[e["name"] for e in entries if not e["ranked"]])
    write_text(out / "index.html", html)
    write_text(out / ".nojekyll", b"")
    return out / "index.html"
