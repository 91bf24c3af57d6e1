"""Gather every suite's report into one static site with an index page.

reports/<suite>/ folders (anything holding an index.html) are copied to
reports/site/<suite>/, and reports/site/index.html links them and ranks
methods across all suites by the curve scores each report saved in
scores.json. The result is plain files, ready for any static host.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import jinja2

from bench.report.build import fmt
from bench.report.scores import cross_ranking
from bench.store import atomic_write_bytes

TEMPLATES = Path(__file__).parent / "templates"
SITE_DIR = "site"


def suite_reports(reports_root: Path, exclude: str = SITE_DIR) -> list[Path]:
    return sorted(d for d in Path(reports_root).iterdir()
                  if d.is_dir() and d.name != exclude and (d / "index.html").exists())


def _load_scores(d: Path) -> dict:
    try:
        return json.loads((d / "scores.json").read_text())
    except (OSError, json.JSONDecodeError):
        return {}


def publish_site(reports_root: Path, out: Path | None = None) -> Path:
    """Copy each reports/<suite>/ into `out` (default reports/site/) and write its index."""
    reports_root = Path(reports_root)
    out = Path(out) if out else reports_root / SITE_DIR
    suites = [d for d in suite_reports(reports_root) if d.resolve() != out.resolve()]
    if not suites:
        raise FileNotFoundError(f"no suite reports under {reports_root}/ (each needs an "
                                "index.html); render one first (lowrank-bench report quick)")
    out.mkdir(parents=True, exist_ok=True)
    entries, rows = [], []
    for d in suites:
        target = out / d.name
        if target.exists():
            shutil.rmtree(target)
        shutil.copytree(d, target)
        scores = _load_scores(d)
        groups = scores.get("groups", [])
        for g in groups:
            for s in g.get("scores", []):
                rows.append({**s, "group": (d.name, g.get("model"), g.get("dataset"))})
        thumb = next(iter(sorted(d.glob("acc-vs-macs-*.svg"))), None)
        entries.append({
            "name": d.name, "description": scores.get("description", ""),
            "counts": scores.get("counts", {}),
            "pairs": [f"{g.get('model')} on {g.get('dataset')}" for g in groups],
            "thumb": f"{d.name}/{thumb.name}" if thumb else None})
    ranking = [{"method": r["method"], "groups": str(r["groups"]), "wins": str(r["wins"]),
                **{k: fmt(r[f"{k}_rank"], ".2f") for k in
                   ("auc_macs", "auc_latency", "iso_macs", "iso_latency")}}
               for r in cross_ranking(rows)]
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(TEMPLATES),
                             undefined=jinja2.StrictUndefined, autoescape=True)
    html = env.get_template("site.html.j2").render(
        suites=entries, ranking=ranking, n_groups=len({r["group"] for r in rows}))
    atomic_write_bytes(out / "index.html", html.encode())
    atomic_write_bytes(out / ".nojekyll", b"")
    return out / "index.html"
