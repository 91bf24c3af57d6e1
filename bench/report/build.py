"""Build one suite's report from its records and manifest: pages, plots, exports.

Inputs are `results/<suite>/manifest.json` (what the suite promised: every
expected cell, the reference method, method kinds and descriptions) and the
records under `results/<suite>/cells/`. Nothing here expands a suite or
imports a method. Every expected cell is shown with its state: ok, over
budget, failed (with its error), not applicable (with the reason) or not run.

The analysis produces plain dicts of formatted strings; the templates only
lay them out. HTML goes through jinja2's autoescaping, Markdown through
`md_escape`, so labels and error messages can never inject markup.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections import Counter
from pathlib import Path

import jinja2
import pandas as pd
from matplotlib.colors import to_hex

from bench.manifest import Manifest, read_manifest
from bench.record import Record, load_records, measured_batches
from bench.report import present
from bench.report.analysis import analyse_group, missing, tier_title
from bench.report.findings import render_findings, undertrained
from bench.report.freshness import FIELD as FINGERPRINT_FIELD
from bench.report.freshness import records_fingerprint
from bench.report.plots import group_plots, method_style, slug
from bench.report.present import md_escape
from bench.report.provenance import provenance
from bench.report.recovery_view import chosen_lrs, recovery_findings, recovery_section
from bench.report.runtime_view import runtime_section
from bench.report.scores import cross_ranking
from bench.report.tables import long_table, record_view, tidy_table

TEMPLATES = Path(__file__).parent / "templates"
STATES = ("ok", "over budget", "failed", "not applicable", "not run")


def write_text(path: Path, text: str | bytes) -> None:
    """Atomic write (temporary file + rename), so a report is never half written."""
    data = text.encode() if isinstance(text, str) else text
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def environments() -> tuple[jinja2.Environment, jinja2.Environment]:
    md_env = jinja2.Environment(loader=jinja2.FileSystemLoader(TEMPLATES),
                                undefined=jinja2.StrictUndefined, autoescape=False,
                                keep_trailing_newline=True)
    md_env.filters["md"] = md_escape
    html_env = jinja2.Environment(loader=jinja2.FileSystemLoader(TEMPLATES),
                                  undefined=jinja2.StrictUndefined, autoescape=True)
    return md_env, html_env


def expected_view(manifest: Manifest, records: list[Record]) -> pd.DataFrame:
    """Every expected cell of the manifest: its record's view row, or a 'not run' row."""
    kinds = {name: info.kind for name, info in manifest.methods.items()}
    batches = measured_batches(records)
    view = record_view(records, kinds, batches)
    have = set(view.cell_id)
    missing_rows = [{
        "cell_id": c.cell_id, "state": "not run", "status": "not run", "suite": manifest.suite,
        "model": c.model, "dataset": c.dataset, "seed": c.seed, "method": c.method,
        "method_name": c.method_name, "kind": kinds.get(c.method_name, ""),
        "target": c.target_label,
        "target_metric": next(iter(c.target)) if c.target else None,
        "target_ratio": next(iter(c.target.values())) if c.target else float("nan"),
        "recovery_epochs": (float("nan") if c.recovery_epochs is None
                            else float(c.recovery_epochs))}
        for c in manifest.cells if c.cell_id not in have]
    if missing_rows:
        view = pd.concat([view, pd.DataFrame(missing_rows)], ignore_index=True)
    view["state"] = view.state.replace({"not_applicable": "not applicable"})
    view["budget"] = [tier_title(None if missing(m) else m, r)
                      for m, r in zip(view.target_metric, view.target_ratio)]
    order = {c.cell_id: i for i, c in enumerate(manifest.cells)}
    view["_order"] = view.cell_id.map(order)
    return view.sort_values("_order", kind="stable").drop(columns="_order").reset_index(drop=True)


def _points(a: dict) -> pd.DataFrame:
    keep = ["macs_ratio", "params_ratio"]
    keep += [f"cpu_{b}_{s}" for b in a["cpu_b"] for s in ("ms", "p25_ms", "p75_ms")]
    keep += [f"speedup_{b}{s}" for b in a["cpu_b"] for s in ("", "_lo", "_hi")]
    keep += [f"cuda_{b}_ms" for b in a["cuda_b"]]
    keep += [f"speedup_{rt}_{b}{s}" for rt, keys in a.get("runtime_b", {}).items()
             for b in keys for s in ("", "_lo", "_hi")]
    rows = []
    for e in a["entries"]:
        if e["est"] is None:
            continue
        row = {"method": e["method"], "ref": e["ref"], "over_budget": e["over_budget"],
               "top1": e["est"].mean, "top1_std": e["est"].std, "entry": e}
        row.update({k: e.get(k) for k in keep})
        rows.append(row)
    df = pd.DataFrame(rows, columns=["method", "ref", "over_budget", "top1", "top1_std", *keep,
                                     "entry"])
    return df.astype({c: float for c in df.columns if c not in ("method", "ref",
                                                                 "over_budget", "entry")})


def cell_rows(view: pd.DataFrame, records: dict[str, Record]) -> list[dict]:
    """The all-cells table: one row per expected cell with its state and key figures."""
    cpu = measured_batches(list(records.values())).get("cpu", [])
    b0 = cpu[0] if cpu else None
    out = []
    for r in view.itertuples():
        rec = records.get(r.cell_id)
        detail = ""
        if r.state == "failed":
            detail = f"{r.error_type}: {present.one_line(r.error, 200)}"
        elif r.state == "not applicable":
            detail = present.one_line(r.reason, 200)
        top1 = getattr(r, "top1", None)
        out.append({
            "cell_id": r.cell_id, "model": r.model, "dataset": r.dataset, "method": r.method,
            "kind": r.kind or "", "budget": r.budget, "seed": str(r.seed), "state": r.state,
            "top1": present.fmt(None if missing(top1) else 100 * top1, ".2f"),
            "macs_ratio": present.fmt(getattr(r, "macs_ratio", None), ".3f"),
            "params_ratio": present.fmt(getattr(r, "params_ratio", None), ".3f"),
            "cpu_ms": present.fmt(getattr(r, f"cpu_{b0}_ms", None), ".3f") if b0 else "n/a",
            "steps": present.fmt(getattr(r, "total_steps", None), ",.0f"),
            "detail": detail, "href": present.record_href(r.cell_id) if rec else "",
            "breakdown": breakdown_bars(rec),
        })
    return out


def breakdown_bars(rec: Record | None) -> list[dict]:
    """Stacked-bar segments of the CPU time breakdown, model and reference on one scale."""
    bd = (rec.metrics.get("latency_breakdown") if rec else None) or {}
    if not isinstance(bd.get("model"), dict) or not isinstance(bd.get("reference"), dict):
        return []
    parts = ("matmul_conv", "norm", "activation", "reshape", "other")
    scale = max(bd["model"].get("total_ms") or 0, bd["reference"].get("total_ms") or 0) or 1
    return [{"who": who, "total": f"{bd[who].get('total_ms') or 0:.3f}",
             "parts": [{"part": p, "ms": f"{bd[who].get(p) or 0:.3f}",
                        "pct": f"{100 * (bd[who].get(p) or 0) / scale:.1f}"} for p in parts]}
            for who in ("model", "reference")]


def analyse(manifest: Manifest, records: list[Record], out_dir: Path) -> dict:
    """Everything the templates show, with plots written into out_dir."""
    view = expected_view(manifest, records)
    batches = measured_batches(records)
    reference = manifest.reference_names()
    groups, score_rows, used = [], [], set()
    colors = {m: method_style(m)[0] for m in dict.fromkeys(view.method)}
    budgets = sorted({int(e) for e in view.recovery_epochs.dropna()})
    main_budget = budgets[-1] if budgets else None
    by_pair: dict[tuple[str, str], dict[int, dict]] = {}
    for (model, dataset, epochs), cells in view.groupby(
            ["model", "dataset", view.recovery_epochs.fillna(-1)], sort=False):
        epochs = None if epochs < 0 else int(epochs)
        a = analyse_group(cells, batches, reference, manifest.targets)
        suffix = "" if epochs is None else f"recovery {epochs} epoch{'s' if epochs != 1 else ''}"
        stem = slug(f"{model}-{dataset}" + ("" if epochs is None else f"-recovery-{epochs}"))
        while stem in used:
            stem += "-x"
        used.add(stem)
        title = f"{model} on {dataset}" + (f", {suffix}" if suffix else "")
        plots = group_plots(_points(a), a["cpu_b"], title, colors,
                            out_dir, stem, cuda_batches=a["cuda_b"],
                            runtime_batches=a.get("runtime_b"))
        seeds = int(cells.seed.nunique())
        g = {"model": model, "dataset": dataset, "anchor": stem, "seeds": seeds,
             "recovery": epochs, "suffix": suffix, "main": epochs in (None, main_budget),
             "columns": present.columns(a), "noise": present.noise_note(a, seeds),
             "ref": present.row(a["ref"], a, dense=True) if a["ref"] else None,
             "tiers": [{"title": t["title"], "label": t["label"],
                        "rows": [present.row(e, a) for e in t["entries"]]} for t in a["tiers"]],
             "scores": present.score_rows(a), "macs_range": present.range_text(a["macs_range"]),
             "latency_range": present.range_text(a["latency_range"]),
             "latency_batch": a["cpu_b"][0][1:] if a["cpu_b"] else "n/a",
             "plots": [p.__dict__ for p in plots], "pivot": present.pivot(a),
             "recovery_view": None,
             "raw_scores": {"model": model, "dataset": dataset, "dense_top1": a["dense_acc"],
                            "recovery_epochs": epochs,
                            "macs_range": a["macs_range"], "latency_range": a["latency_range"],
                            "scores": a["scores"]}}
        present.drop_empty_columns(g)
        ids = set(cells.cell_id)
        g["runtimes"] = runtime_section(a, [r for r in records if r.cell_id in ids], title,
                                        colors, out_dir, stem)
        groups.append(g)
        if epochs is not None:
            by_pair.setdefault((model, dataset), {})[epochs] = a
        if epochs in (None, main_budget):  # the cross ranking: one budget per pair
            score_rows += [{"group": f"{model} / {dataset}", **s} for s in a["scores"]]
    recovery_sections = []
    lrs = chosen_lrs(view)
    for (model, dataset), analyses in by_pair.items():
        pair_lrs = {k[2:]: v for k, v in lrs.items() if k[:2] == (model, dataset)}
        sec = recovery_section(analyses, pair_lrs, f"{model} on {dataset}", colors, out_dir,
                               slug(f"{model}-{dataset}"))
        if sec is None:
            continue
        recovery_sections.append((f"{model} on {dataset}", sec))
        first = next(g for g in groups if (g["model"], g["dataset"]) == (model, dataset))
        first["recovery_view"] = sec  # shown once per pair, before its budgets' tables
    counts = {s: int((view.state == s).sum()) for s in STATES}
    counts["expected"] = len(manifest.cells)
    by_id = {r.cell_id: r for r in records}
    prov, warnings = provenance(records, manifest.suite, manifest.suite_hash, counts)
    ref = next((r.method for r in records if r.method_name in reference), "")
    warnings = list(warnings) + undertrained([r.to_json() for r in records], ref)
    return {"suite": {"name": manifest.suite, "description": manifest.description,
                      "data_note": manifest.data_note, "example": manifest.example},
            "groups": groups, "counts": counts, "gaps": gap_sentence(manifest, view),
            "cells": cell_rows(view, by_id),
            "filters": {k: sorted(set(view[c].astype(str))) for k, c in
                        (("model", "model"), ("dataset", "dataset"), ("kind", "kind"),
                         ("budget", "budget"))},
            "failures": cell_rows(view[view.state == "failed"], by_id),
            "not_applicable": cell_rows(view[view.state == "not applicable"], by_id),
            "methods": methods_table(manifest, view),
            "ranking": [present.rank_row(r) for r in cross_ranking(score_rows)],
            "ranking_groups": len(groups), "provenance": prov, "warnings": warnings,
            "findings": findings_markdown(manifest, records, recovery_sections),
            "recovery": recovery_header(manifest, records, main_budget),
            "timing": timing_header(records),
            "colors": {m: to_hex(method_style(m)[0]) for m in dict.fromkeys(view.method)}}


def findings_markdown(manifest: Manifest, records: list[Record],
                      recovery_sections: list[tuple[str, dict]] | None = None) -> str:
    """The generated "Findings" section (leaders per budget, the papers' claims checked),
    with user-written labels Markdown-escaped before they reach its text. With recovery
    budgets: where the order of methods changes between budgets, then the findings of each
    budget on its own records (budgets are separate comparisons, never pooled)."""
    reference = manifest.reference_names()
    ref = next((r.method for r in records if r.method_name in reference), "")
    safe = [{**r.to_json(), "method": md_escape(r.method), "model": md_escape(r.model),
             "dataset": md_escape(r.dataset)} for r in records]
    budgets = sorted({int(r["recovery"]["epochs"]) for r in safe if r.get("recovery")})
    if not budgets:
        return render_findings(safe, reference=md_escape(ref))
    lines = recovery_findings([(md_escape(w), sec) for w, sec in recovery_sections or []])
    out = ["## Findings", "", "Recovery budgets are separate comparisons: the findings of each "
           "follow. Where the order of two methods changes between budgets beyond their 95% "
           "intervals (paired by seed):", ""]
    out += [f"- {line}" for line in lines] or ["- no pair of methods could be compared at two "
                                               "budgets yet"]
    for b in budgets:
        part = render_findings([r for r in safe if (r.get("recovery") or {}).get("epochs") == b],
                               reference=md_escape(ref))
        out += ["", part.replace("## Findings", f"### At {b} recovery epoch"
                                 f"{'s' if b != 1 else ''}", 1).rstrip()]
    return "\n".join(out) + "\n"


def site_thumbnail(groups: list[dict]) -> str | None:
    """The site card's picture: accuracy vs MACs of the first table at the suite's main
    (largest) recovery budget that has a result; None while nothing has one."""
    for g in groups:
        if g["main"]:
            svg = next((p["svg"] for p in g["plots"] if p["kind"] == "macs"), None)
            if svg:
                return svg
    return None


def recovery_header(manifest: Manifest, records: list[Record], main_budget: int | None
                    ) -> dict | None:
    """The suite header's recovery line: the budgets, the lr grid and what tuning it cost
    (optimizer steps per row and seed, from the records' ledgers)."""
    if main_budget is None:
        return None
    # rows that reused their first seed's choice (lr_chosen_on: first-seed) spent no steps
    steps = sorted({int(r.get("ledger.tuning.steps")) for r in records
                    if r.get("ledger.tuning.steps") is not None
                    and r.get("ledger.tuning.from_seed") is None})
    donors = sorted({int(r.recovery["lr_from_seed"]) for r in records
                     if (getattr(r, "recovery", None) or {}).get("lr_from_seed") is not None})
    per = (f"on seed {donors[0]} and reused for the other seeds" if len(donors) == 1
           else "per seed")
    per_epoch = sorted({int(p.steps) // max(1, int(r.recovery["epochs"]))
                        for r in records if r.ledger and getattr(r, "recovery", None)
                        for p in r.ledger.phases if p.phase == "finetune" and p.steps
                        and r.method_name in manifest.reference_names()})
    grid = ", ".join(f"{lr:g}" for lr in manifest.lr_grid)
    cost = (f"{steps[0]:,} optimizer steps per row" + ("" if donors else " and seed")
            + (f" ({steps[0] / per_epoch[0]:.0f} recovery epochs)" if per_epoch else "")
            if len(steps) == 1 else
            "tuning steps differ between rows: " + ", ".join(f"{s:,}" for s in steps)
            if steps else "no records yet")
    budgets = ", ".join(str(b) for b in manifest.recovery_epochs)
    return {"budgets": budgets, "main": main_budget, "grid": grid, "cost": cost,
            "text": f"Recovery budgets: {budgets} fine-tune epochs, each its own comparison "
                    f"(the summary shows {main_budget}, the largest). Every row's recovery lr "
                    f"is chosen from [{grid}] on the validation split, {per}, at "
                    f"{main_budget} epochs, and reused for the smaller budgets; the choice "
                    f"costs {cost}, the same for every row."}


def timing_header(records: list[Record]) -> str | None:
    """How many cells carry latency figures timed on another cell of the same row and
    architecture (``metrics.timing.shared_from``); None when none does."""
    ok = [r for r in records if r.status == "ok"]
    shared = sum(r.get("metrics.timing.shared_from") is not None for r in ok)
    if not shared:
        return None
    return (f"Latency: {len(ok) - shared} of {len(ok)} ok cells were timed; the other "
            f"{shared} deploy the same architecture as a timed cell of their row (another "
            "seed or recovery budget, same machine) and carry its figures "
            "(metrics.timing.shared_from in their records). Weights do not change which "
            "kernels run; counts and accuracy are every cell's own.")


def gap_sentence(manifest: Manifest, view: pd.DataFrame) -> str:
    """In words, what the suite promised and does not hold (empty when complete)."""
    missing_ = view[view.state.isin(["not run", "failed", "not applicable"])]
    if missing_.empty:
        return ""
    parts = []
    for col, what in (("model", "model"), ("method", "method"), ("seed", "seed")):
        promised = list(dict.fromkeys(view[col].astype(str)))
        held = set(view[view.state.isin(["ok", "over budget"])][col].astype(str))
        absent = [v for v in promised if v not in held]
        if absent:
            parts.append(f"no result for {what}{'s' if len(absent) > 1 else ''} "
                         f"{', '.join(absent)}")
    c = Counter(missing_.state)
    counts = ", ".join(f"{c[s]} {s}" for s in ("not run", "failed", "not applicable") if c[s])
    head = (f"This suite promises {len(view)} cells and holds results for "
            f"{len(view) - len(missing_)} ({counts})")
    return head + (": " + "; ".join(parts) if parts else "") + "."


def methods_table(manifest: Manifest, view: pd.DataFrame) -> list[dict]:
    out = []
    params = {}
    for c in manifest.cells:  # every parameter with the value the cells ran with
        params.setdefault(c.method, ", ".join(f"{k}={v}" for k, v in sorted(c.params.items())))
    for label, name in dict.fromkeys(zip(view.method, view.method_name)):
        info = manifest.methods.get(str(name))
        states = Counter(view[view.method == label].state)
        out.append({"label": str(label), "name": str(name), "kind": info.kind if info else "",
                    "reference": bool(info and info.reference),
                    "description": info.description if info else "(not in the manifest)",
                    "params": params.get(str(label), "") or "none",
                    "cells": ", ".join(f"{n} {s}" for s, n in states.most_common())})
    return out


def build_report(results_dir: str | Path, out_dir: str | Path) -> list[Path]:
    """Render a report folder from results_dir (manifest.json + cells/*.json).

    Writes README.md, index.html, summary.md, plots (PNG and SVG),
    results.csv (tidy), results-long.csv, results.json, scores.json (with the
    fingerprint of the records rendered, which publishing compares) and a
    copy of every record under records/, which the pages link per row.
    """
    results_dir, out_dir = Path(results_dir), Path(out_dir)
    manifest = read_manifest(results_dir)
    wanted = {c.cell_id for c in manifest.cells}
    records = [r for r in load_records(results_dir) if r.cell_id in wanted]
    out_dir.mkdir(parents=True, exist_ok=True)
    for old in list(out_dir.glob("*.png")) + list(out_dir.glob("*.svg")):
        old.unlink()  # plots of models or datasets no longer in the suite
    if (out_dir / "records").exists():
        shutil.rmtree(out_dir / "records")
    ctx = analyse(manifest, records, out_dir)
    md_env, html_env = environments()
    batches = measured_batches(records)
    view = record_view(records, {n: i.kind for n, i in manifest.methods.items()}, batches)
    tidy = tidy_table(view, batches).sort_values("cell_id")
    files = {
        "README.md": md_env.get_template("report.md.j2").render(**ctx),
        "index.html": html_env.get_template("report.html.j2").render(**ctx),
        "summary.md": md_env.get_template("summary.md.j2").render(**ctx),
        "results.csv": tidy.to_csv(index=False),
        "results-long.csv": long_table(records, batches).to_csv(index=False),
        "results.json": json.dumps([{k: v for k, v in row.items() if not missing(v)}
                                    for row in tidy.to_dict(orient="records")],
                                   indent=1, default=str),
        "scores.json": json.dumps({
            "suite": manifest.suite, "suite_hash": manifest.suite_hash,
            "example": manifest.example, "counts": ctx["counts"],
            "description": manifest.description,
            "commits": sorted({str(r.env.get("git_commit")) for r in records
                               if r.env.get("git_commit")}),
            "groups": [g["raw_scores"] for g in ctx["groups"]],
            "thumb": site_thumbnail(ctx["groups"]),
            FINGERPRINT_FIELD: records_fingerprint(manifest, records)}, indent=1, default=str),
    }
    written = []
    for name, text in files.items():
        write_text(out_dir / name, text)
        written.append(out_dir / name)
    for r in records:
        path = out_dir / present.record_href(r.cell_id)
        write_text(path, json.dumps(r.to_json(), indent=1, sort_keys=True))
    written += sorted(out_dir.glob("*.png")) + sorted(out_dir.glob("*.svg"))
    return written


__all__ = ["build_report", "md_escape", "tier_title"]
