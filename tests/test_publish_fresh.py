"""Publishing re-renders a report whose records changed since it was rendered, and only then.

The suite is the synthetic one of test_report (records shaped like a run's,
no training), laid out as a repository holds it: results/<suite>/ with its
manifest and cells/, reports/<suite>/ rendered from them.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

import bench.report.site as site
from bench.cli import main
from bench.report import build_report
from bench.report.freshness import FIELD, check_report
from bench.report.readme import markers
from tests.test_report import write_synthetic


@pytest.fixture
def repo(tmp_path: Path) -> dict[str, Path]:
    """results/synth (one svd record held back), reports/synth rendered from it, a README."""
    (tmp_path / "gen").mkdir()
    _, results = write_synthetic(tmp_path / "gen", seeds=[0], fail_one=False)
    (tmp_path / "results").mkdir()
    results = results.rename(tmp_path / "results" / "synth")
    manifest = json.loads((results / "manifest.json").read_text())
    held = next(c["cell_id"] for c in manifest["cells"] if c["method"] == "svd")
    record = results / "cells" / f"{held}.json"
    held_back = tmp_path / "held-back.json"
    record.rename(held_back)
    build_report(results, tmp_path / "reports" / "synth")
    start, end = markers("synth")
    (tmp_path / "README.md").write_text(f"# Project\n\n{start}\n{end}\n")
    return {"root": tmp_path, "results": results, "report": tmp_path / "reports" / "synth",
            "record": record, "held_back": held_back}


def publish(repo: dict[str, Path]) -> int:
    root = repo["root"]
    return main(["publish", "--reports", str(root / "reports"), "--results",
                 str(root / "results"), "--readme", str(root / "README.md")])


def published(repo: dict[str, Path]) -> tuple[str, str, str]:
    """(the site's copy of the report page, the site index, the README block)."""
    site_dir = repo["root"] / "reports" / "site"
    return ((site_dir / "synth" / "README.md").read_text(),
            (site_dir / "index.html").read_text(), (repo["root"] / "README.md").read_text())


def test_publishing_rerenders_a_report_whose_records_changed(repo, capsys):
    assert publish(repo) == 0
    assert "re-rendering" not in capsys.readouterr().out  # rendered from these records
    page, index, readme = published(repo)
    assert "Cells: 9 ok, 1 not run, of 10 expected" in page
    assert "9 ok, 1 not run of 10" in index
    assert "suite: 9 ok, 1 not run, of 10 expected cells" in readme

    rec = json.loads(repo["held_back"].read_text())  # the missing cell is computed later
    repo["record"].write_text(json.dumps({**rec, "created": "2026-02-03T04:05:06+00:00"}))
    assert publish(repo) == 0
    out = capsys.readouterr().out
    assert (f"{repo['report']}: records changed since it was rendered (10 records now); "
            "re-rendering") in out
    page, index, readme = published(repo)
    assert "Cells: 10 ok, of 10 expected" in page and "1 not run" not in page
    assert "10 ok of 10" in index
    assert "suite: 10 ok, of 10 expected cells" in readme and "1 not run" not in readme
    state = check_report(repo["results"], repo["report"])
    assert not state.stale and state.records == 10


def test_a_rerun_cell_with_the_same_count_is_seen(repo, capsys):
    """Same number of records, one of them rewritten (a retried cell): still re-rendered."""
    rec = json.loads(repo["held_back"].read_text())
    repo["record"].write_text(json.dumps(rec))
    build_report(repo["results"], repo["report"])
    assert publish(repo) == 0 and "re-rendering" not in capsys.readouterr().out
    failed = {**rec, "status": "failed", "metrics": {}, "created": "2026-03-01T00:00:00+00:00",
              "error": {"type": "RuntimeError", "message": "out of memory", "traceback": ""}}
    repo["record"].write_text(json.dumps(failed))
    assert publish(repo) == 0
    assert "records changed since it was rendered (10 records now)" in capsys.readouterr().out
    assert "9 ok, 1 failed, of 10 expected" in published(repo)[2]


def test_an_unchanged_report_is_not_rerendered(repo, capsys, monkeypatch):
    calls = []
    real = site.build_report
    monkeypatch.setattr(site, "build_report",
                        lambda *a, **k: calls.append(a) or real(*a, **k))
    files = ("scores.json", "index.html", "summary.md", "README.md")
    before = {f: (repo["report"] / f).stat().st_mtime_ns for f in files}
    assert publish(repo) == 0
    assert publish(repo) == 0
    assert calls == [] and "re-rendering" not in capsys.readouterr().out
    assert {f: (repo["report"] / f).stat().st_mtime_ns for f in files} == before


def test_a_report_rendered_without_a_fingerprint_is_rerendered(repo, capsys):
    scores_path = repo["report"] / "scores.json"
    scores = json.loads(scores_path.read_text())
    assert scores[FIELD].startswith("sha256:")
    scores_path.write_text(json.dumps({k: v for k, v in scores.items() if k != FIELD}))
    assert publish(repo) == 0
    assert (f"{repo['report']}: rendered without a records fingerprint (9 records now); "
            "re-rendering") in capsys.readouterr().out
    assert json.loads(scores_path.read_text())[FIELD] == scores[FIELD]


def test_a_report_without_results_is_published_as_it_is(repo, capsys):
    """A report rendered from elsewhere (no results/<suite>/ here) is not checked."""
    other = repo["root"] / "reports" / "other"
    build_report(repo["results"], other)
    assert publish(repo) == 0
    assert (repo["root"] / "reports" / "site" / "other" / "index.html").exists()
    assert "reports/other" not in capsys.readouterr().out


@pytest.mark.parametrize("break_it, what", [
    (lambda r: (r["results"] / "manifest.json").unlink(), "manifest.json does not exist"),
    (lambda r: r["record"].write_text(json.dumps(
        {**json.loads(r["held_back"].read_text()), "schema_version": 99})),
     "schema_version 99 is not supported"),
])
def test_a_report_that_cannot_be_checked_stops_publishing(repo, capsys, break_it, what):
    break_it(repo)
    assert publish(repo) == 2
    err = capsys.readouterr().err
    assert f"error: {repo['report']}: cannot check it against its records" in err
    assert what in err and "not publishing" in err
    assert not (repo["root"] / "reports" / "site").exists()
    assert "Leaderboard of" not in (repo["root"] / "README.md").read_text()


def test_a_missing_manifest_is_written_from_the_suite_file(repo, capsys, monkeypatch):
    """A fresh clone holds records without their manifest: it comes from suites/<suite>.yaml,
    as `report` writes it, unless that file no longer expands to any recorded cell."""
    suites = repo["root"] / "suites"
    suites.mkdir()
    (suites / "synth.yaml").write_text((repo["root"] / "gen" / "synth.yaml").read_text())
    monkeypatch.setattr("bench.suite.SUITES_DIR", suites)
    manifest = repo["results"] / "manifest.json"
    manifest.unlink()
    assert publish(repo) == 0
    assert manifest.exists() and "re-rendering" not in capsys.readouterr().out

    manifest.unlink()
    index = repo["root"] / "reports" / "site" / "index.html"
    built = index.stat().st_mtime_ns
    changed = yaml.safe_load((suites / "synth.yaml").read_text())
    changed["seeds"] = [7]  # every cell id changes
    (suites / "synth.yaml").write_text(yaml.safe_dump(changed, sort_keys=False))
    assert publish(repo) == 2
    err = capsys.readouterr().err
    assert f"error: {repo['report']}: " in err and "9 records and no manifest.json" in err
    assert "suites/synth.yaml has changed since they were made" in err
    assert not manifest.exists() and index.stat().st_mtime_ns == built  # nothing published
