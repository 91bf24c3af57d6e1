"""Leaderboards from records: Markdown and HTML (jinja2, autoescaped) plus plots."""

from __future__ import annotations

from pathlib import Path

import jinja2
import pandas as pd

from bench.cells import expand
from bench.report.plots import accuracy_vs_macs
from bench.report.tables import flatten
from bench.store import ResultStore, atomic_write_bytes
from bench.suite import Suite

TEMPLATES = Path(__file__).parent / "templates"


def _fmt(v, spec: str) -> str:
    if v is None or (isinstance(v, float) and pd.isna(v)):
        return "n/a"
    return format(v, spec)


def md_escape(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ").replace("<", "&lt;")


def build_report(suite: Suite, results_dir: Path, out_dir: Path) -> list[Path]:
    """Render reports/<suite>/README.md, index.html and plots from the suite's records."""
    store = ResultStore(results_dir)
    wanted = {c.id for c in expand(suite)}
    records = [r for r in store.records() if r["cell_id"] in wanted]
    if not records:
        raise FileNotFoundError(
            f"no records for suite '{suite.name}' in {results_dir}/cells; run it first "
            f"(lowrank-bench run {suite.name})")
    out_dir.mkdir(parents=True, exist_ok=True)
    df = flatten(records)
    ok = df[df.status == "ok"]
    blocks = []
    written: list[Path] = []
    for (model, dataset), g in ok.groupby(["model", "dataset"], sort=False):
        dense = g[g.target == "dense"]
        dense_top1 = dense.top1.mean() if len(dense) else None
        dense_b64 = dense["cpu_b64_ms"].mean() if "cpu_b64_ms" in g and len(dense) else None
        agg = g.groupby(["method", "target"], as_index=False, sort=False).mean(numeric_only=True)
        agg["order"] = agg.target.map(lambda t: (0 if t == "dense" else 1, t))
        agg = agg.sort_values(["order", "top1"], ascending=[True, False])
        agg = agg.sort_values("order", key=lambda s: s.map(lambda t: (t[0], -_ratio(t[1]))),
                              kind="stable")
        rows = []
        for r in agg.itertuples():
            b64 = getattr(r, "cpu_b64_ms", None)
            rows.append({
                "method": r.method, "target": r.target, "top1": _fmt(100 * r.top1, ".2f"),
                "delta": _fmt(None if dense_top1 is None else 100 * (r.top1 - dense_top1),
                              "+.2f"),
                "params_ratio": _fmt(r.params_ratio, ".3f"), "macs_ratio": _fmt(r.macs_ratio,
                                                                                 ".3f"),
                "b1": _fmt(getattr(r, "cpu_b1_ms", None), ".3f"), "b64": _fmt(b64, ".3f"),
                "speedup": _fmt(None if not dense_b64 or not b64 else dense_b64 / b64, ".2f"),
            })
        plot = accuracy_vs_macs(df, model, dataset, out_dir)
        written.append(plot)
        blocks.append({"model": model, "dataset": dataset, "rows": rows, "plot": plot.name})
    failures = [{"model": r.model, "dataset": r.dataset, "method": r.method,
                 "target": r.target, "error": f"{r.error_type}: {r.error}"}
                for r in df[df.status != "ok"].itertuples()]
    env = records[0].get("env", {})
    env = {k: v for k, v in env.items() if v is not None}
    context = {"suite": suite, "suite_hash": suite.hash(), "blocks": blocks,
               "failures": failures, "env": env,
               "counts": {"ok": int((df.status == "ok").sum()),
                          "failed": int((df.status != "ok").sum())}}
    md_env = jinja2.Environment(loader=jinja2.FileSystemLoader(TEMPLATES),
                                undefined=jinja2.StrictUndefined, autoescape=False)
    md_env.filters["e"] = md_escape
    html_env = jinja2.Environment(loader=jinja2.FileSystemLoader(TEMPLATES),
                                  undefined=jinja2.StrictUndefined,
                                  autoescape=jinja2.select_autoescape(["html", "j2"]))
    md_context = {**context, "blocks": [{**b, "rows": [{k: md_escape(v) for k, v in r.items()}
                                                       for r in b["rows"]]} for b in blocks],
                  "failures": [{k: md_escape(v) for k, v in f.items()} for f in failures]}
    md = md_env.get_template("report.md.j2").render(**md_context)
    html = html_env.get_template("report.html.j2").render(**context)
    for name, text in (("README.md", md), ("index.html", html)):
        atomic_write_bytes(out_dir / name, text.encode())
        written.append(out_dir / name)
    return written


def _ratio(label: str) -> float:
    try:
        return float(label.split("<=")[1])
    except (IndexError, ValueError):
        return 1.0
