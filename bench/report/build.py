"""Build one suite's report: leaderboards, scores, plots, exports and provenance.

The analysis (this module) produces plain dicts of formatted strings; the
templates only lay them out. HTML goes through jinja2's autoescaping, the
Markdown through `md_escape`, so labels and error messages written by users
can never inject markup into either.
"""

from __future__ import annotations

import json
import math
import re
from collections import Counter
from pathlib import Path
from typing import Any

import jinja2
import pandas as pd

from bench.cells import expand
from bench.report.plots import group_plots, method_colors, slug
from bench.report.scores import area_scores, cross_ranking, iso_accuracy
from bench.report.stats import Estimate, estimate, infer_test_size, tie_ranks
from bench.report.tables import flatten, flatten_all, latency_batches
from bench.store import ResultStore, atomic_write_bytes
from bench.suite import Suite

TEMPLATES = Path(__file__).parent / "templates"
METRIC_NAMES = {"macs": "MACs", "params": "params"}
ERROR_CHARS = 400
NA = "n/a"


# -- formatting ---------------------------------------------------------------
def _missing(v: Any) -> bool:
    return v is None or (isinstance(v, float) and math.isnan(v))


def fmt(v: Any, spec: str, suffix: str = "") -> str:
    return NA if _missing(v) else format(v, spec) + suffix


def fmt_ms(v: Any) -> str:
    if _missing(v):
        return NA
    return format(v, ".3f" if v < 1 else ".2f" if v < 100 else ".0f")


def md_escape(text: Any) -> str:
    """Text safe inside a GitHub Markdown table cell: no HTML, no markup, no cell breaks."""
    s = str(text).replace("\\", "\\\\")
    s = s.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    s = re.sub(r"([|`*_\[\]#~])", r"\\\1", s)
    return " ".join(s.split())


def tier_title(metric: str | None, ratio: float) -> str:
    """'MACs ≤ 0.5× dense' for a {macs: 0.5} target: readable, and no '<' to escape."""
    if metric is None or _missing(metric):
        return "no budget"
    return f"{METRIC_NAMES.get(metric, metric)} ≤ {ratio:g}× dense"


def _one_line(text: Any, limit: int = ERROR_CHARS) -> str:
    s = " ".join(str(text or "").split())
    return s if len(s) <= limit else s[: limit - 1] + "…"


# -- analysis -----------------------------------------------------------------
def _dense_mask(g: pd.DataFrame) -> pd.Series:
    mask = g.method_name == "dense"
    if not mask.any():
        mask = (g.method == "dense") & (g.target == "dense")
    return mask


def _entries(g: pd.DataFrame, cpu_b: list[str], cuda_b: list[str], test_n: int | None
             ) -> list[dict]:
    """One entry per (method, target) over seeds: estimates and aggregated costs."""
    dense = _dense_mask(g)
    out = []
    for (method, target), e in g.groupby(["method", "target"], sort=False):
        row: dict[str, Any] = {
            "method": method, "target": target, "dense": bool(dense[e.index].all()),
            "metric": None if _missing(e.target_metric.iloc[0]) else e.target_metric.iloc[0],
            "ratio": e.target_ratio.iloc[0],
            "est": estimate(e.top1.tolist(), test_n), "seeds": sorted(e.seed.tolist()),
            "params_ratio": e.params_ratio.mean(), "macs_ratio": e.macs_ratio.mean(),
            "cost_s": e.cost_s.mean(),
            "over_budget": bool((e.budget_met == False).any()),  # noqa: E712
            "over_by": e.budget_over_by.max(),
        }
        for b in cpu_b:
            for col in (f"cpu_{b}_ms", f"cpu_{b}_p90_ms", f"cpu_{b}_iqr_ms"):
                row[col] = e[col].median() if col in e else math.nan
        for b in cuda_b:
            row[f"cuda_{b}_ms"] = e[f"cuda_{b}_ms"].median()
        out.append(row)
    return out


def _tier_key(entry: dict) -> tuple:
    metric = entry["metric"]
    if metric is None:
        return (1, "", 0.0)
    return (0, str(metric), -float(entry["ratio"]))


def analyse_group(g: pd.DataFrame, suite_order: list[str]) -> dict:
    """Leaderboard tiers, curve scores and plot points of one model x dataset."""
    cpu_b, cuda_b = latency_batches(g, "cpu"), latency_batches(g, "cuda")
    explicit = g.test_n.dropna()
    test_n = int(explicit.iloc[0]) if len(explicit) else infer_test_size(g.top1.tolist())
    entries = _entries(g, cpu_b, cuda_b, test_n)
    dense = [e for e in entries if e["dense"]]
    d = dense[0] if dense else None
    dense_acc = d["est"].mean if d else None
    for e in entries:
        e["delta"] = None if dense_acc is None else e["est"].mean - dense_acc
        for b in cpu_b:
            base = d.get(f"cpu_{b}_ms") if d else None
            own = e.get(f"cpu_{b}_ms")
            e[f"speedup_{b}"] = (base / own if not _missing(base) and not _missing(own)
                                 and own > 0 else math.nan)
        b0 = cpu_b[0] if cpu_b else None
        e["latency_ratio"] = (1 / e[f"speedup_{b0}"] if b0 and not _missing(e[f"speedup_{b0}"])
                              else math.nan)

    tiers: dict[str, list[dict]] = {}
    for e in sorted((e for e in entries if not e["dense"]), key=_tier_key):
        tiers.setdefault(e["target"], []).append(e)
    order = {label: i for i, label in enumerate(suite_order)}
    tier_list = sorted(tiers.items(), key=lambda kv: (_tier_key(kv[1][0])[0],
                                                        order.get(kv[0], len(order)),
                                                        _tier_key(kv[1][0])))
    ranked_tiers = []
    for label, members in tier_list:
        # A model over its budget is shown but never ranked: it did not compete at this tier.
        within = [m for m in members if not m["over_budget"]]
        over = [m for m in members if m["over_budget"]]
        for m, (rank, tied) in zip(within, tie_ranks([m["est"] for m in within])):
            m["rank"], m["tied"] = rank, tied
        for m in over:
            m["rank"], m["tied"] = None, False
        within.sort(key=lambda m: (m["rank"], -m["est"].mean, m["method"]))
        over.sort(key=lambda m: (-m["est"].mean, m["method"]))
        members = within + over
        ranked_tiers.append({"label": label,
                             "title": tier_title(members[0]["metric"], members[0]["ratio"]),
                             "entries": members})

    compressed = [e for e in entries if not e["dense"] and e["metric"] is not None]
    methods = list(dict.fromkeys(e["method"] for e in compressed))
    macs_curves = {m: [(e["macs_ratio"], e["est"].mean) for e in compressed if e["method"] == m]
                   for m in methods}
    lat_curves = {m: [(e["latency_ratio"], e["est"].mean) for e in compressed
                      if e["method"] == m and not _missing(e["latency_ratio"])] for m in methods}
    auc_macs, macs_range = area_scores(macs_curves)
    auc_lat, lat_range = area_scores(lat_curves)
    scores = [{"method": m, "points": len(macs_curves[m]),
               "auc_macs": auc_macs[m], "auc_latency": auc_lat[m],
               "iso_macs": iso_accuracy(macs_curves[m], dense_acc),
               "iso_latency": iso_accuracy(lat_curves[m], dense_acc)} for m in methods]
    scores.sort(key=lambda s: (s["auc_macs"] is None, -(s["auc_macs"] or 0.0), s["method"]))
    return {"cpu_b": cpu_b, "cuda_b": cuda_b, "test_n": test_n, "dense": d,
            "seeds": int(g.seed.nunique()),
            "entries": entries, "tiers": ranked_tiers, "scores": scores,
            "macs_range": macs_range, "latency_range": lat_range, "dense_acc": dense_acc}


def _points(a: dict) -> pd.DataFrame:
    rows = []
    for e in a["entries"]:
        row = {k: e.get(k) for k in ("method", "dense", "macs_ratio", "params_ratio")}
        row["top1"], row["top1_std"] = e["est"].mean, e["est"].std
        for b in a["cpu_b"]:
            row[f"cpu_{b}_ms"] = e.get(f"cpu_{b}_ms")
            row[f"speedup_{b}"] = e.get(f"speedup_{b}")
        for b in a["cuda_b"]:
            row[f"cuda_{b}_ms"] = e.get(f"cuda_{b}_ms")
        rows.append(row)
    df = pd.DataFrame(rows)
    return df.astype({c: float for c in df.columns if c not in ("method", "dense")})


# -- presentation -------------------------------------------------------------
def _acc_cells(est: Estimate) -> tuple[str, str]:
    main = f"{100 * est.mean:.2f}"
    if est.std is not None:
        main += f" ± {100 * est.std:.2f}"
    ci = NA if est.method == "point" else f"{100 * est.lo:.1f}–{100 * est.hi:.1f}"
    return main, ci


def _ci_tip(est: Estimate) -> str:
    return {"bootstrap": "percentile bootstrap of the mean over seeds",
            "wilson": "Wilson interval over the test set (one seed)",
            "point": "no interval: one seed, test size unknown"}[est.method]


def _columns(a: dict) -> list[dict]:
    cols = [
        {"label": "rank", "tip": "rank by mean top-1 among models within the budget; "
                  "'=' marks a tie within noise"},
        {"label": "method", "tip": "method label from the suite"},
        {"label": "top-1 % ↑", "tip": "test top-1, mean ± std over seeds"},
        {"label": "95% CI %", "tip": "bootstrap over seeds, or Wilson over the test set"},
        {"label": "Δ vs dense pp ↑", "tip": "percentage points against the dense model"},
        {"label": "params ×dense ↓", "tip": "achieved parameter ratio"},
        {"label": "MACs ×dense ↓", "tip": "achieved MACs ratio; ⚠ over the budget"},
    ]
    batches = a["cpu_b"][:1] + a["cpu_b"][-1:] if len(a["cpu_b"]) > 1 else a["cpu_b"]
    for b in batches:
        cols.append({"label": f"CPU p50 ms ↓ (batch {b[1:]})", "tip": "median of timed runs"})
        cols.append({"label": f"speedup ↑ (batch {b[1:]})", "tip": "dense p50 / p50"})
    gb = a["cuda_b"][0] if a["cuda_b"] else "b" + (a["cpu_b"][0][1:] if a["cpu_b"] else "1")
    cols.append({"label": f"GPU p50 ms ↓ (batch {gb[1:]})", "tip": "CUDA events; n/a: no GPU"})
    cols.append({"label": "cost s ↓", "tip": "training + method training + compression + "
                                              "fine-tuning, wall seconds"})
    return cols


def _row(e: dict, a: dict, dense: bool = False) -> dict:
    acc, ci = _acc_cells(e["est"])
    if len(e["seeds"]) < a["seeds"]:
        acc += f" (n={len(e['seeds'])})"  # some seeds failed or have not run
    batches = a["cpu_b"][:1] + a["cpu_b"][-1:] if len(a["cpu_b"]) > 1 else a["cpu_b"]
    macs = fmt(e["macs_ratio"], ".3f")
    if e["over_budget"]:
        macs += f" ⚠ +{e['over_by']:.3f}"
    seeds = ", ".join(str(x) for x in e["seeds"])
    tips = ["", f"seeds {seeds}", f"{len(e['seeds'])} seed(s)", _ci_tip(e["est"]), "", "", ""]
    rank = ("over budget" if e.get("rank") is None
            else ("=" if e.get("tied") else "") + str(e["rank"]))
    cells = ["ref" if dense else rank,
             e["method"], acc, ci, "0.00" if dense else fmt(None if e["delta"] is None
                                                             else 100 * e["delta"], "+.2f"),
             fmt(e["params_ratio"], ".3f"), macs]
    for b in batches:
        cells.append(fmt_ms(e.get(f"cpu_{b}_ms")))
        cells.append(fmt(e.get(f"speedup_{b}"), ".2f", "×"))
        p90, iqr = e.get(f"cpu_{b}_p90_ms"), e.get(f"cpu_{b}_iqr_ms")
        tips += [f"p90 {fmt_ms(p90)} ms, IQR {fmt_ms(iqr)} ms (median over seeds)", ""]
    gb = a["cuda_b"][0] if a["cuda_b"] else None
    cells.append(fmt_ms(e.get(f"cuda_{gb}_ms")) if gb else NA)
    cells.append(fmt(e["cost_s"], ".1f"))
    tips += ["", "mean over seeds"]
    return {"cells": cells, "tips": tips, "dense": dense, "tied": bool(e.get("tied")),
            "over_budget": e["over_budget"], "seeds": len(e["seeds"])}


def _noise_note(a: dict, seeds: int) -> str:
    if seeds >= 2:
        return (f"mean ± std over {seeds} seeds; 95% CI is a percentile bootstrap of the mean "
                "over seeds; entries whose intervals overlap share a rank (=).")
    if a["test_n"]:
        return (f"one seed: the 95% CI is the Wilson interval over the {a['test_n']} test "
                "samples; entries whose intervals overlap share a rank (=).")
    return "one seed and unknown test size: no interval, ties only at equal accuracy."


def _score_rows(a: dict) -> list[dict]:
    never = "never" if a["dense_acc"] is not None else NA  # no dense record: no 99% target
    return [{"method": s["method"], "points": str(s["points"]),
             "auc_macs": fmt(None if s["auc_macs"] is None else 100 * s["auc_macs"], ".2f"),
             "auc_latency": fmt(None if s["auc_latency"] is None else 100 * s["auc_latency"],
                                ".2f"),
             "iso_macs": fmt(s["iso_macs"], ".3f", "×") if s["iso_macs"] else never,
             "iso_latency": fmt(s["iso_latency"], ".3f", "×") if s["iso_latency"] else never}
            for s in a["scores"]]


def _range(r: tuple[float, float] | None) -> str:
    if r is None:
        return "none shared by all curves with two or more points (scores n/a)"
    return f"{r[0]:.3f}× – {r[1]:.3f}× dense"


def _provenance(records: list[dict], suite: Suite, counts: dict) -> list[tuple[str, str]]:
    """Machine, versions, commits, hashes and dates, with counts where records disagree."""
    def summary(values: list[Any]) -> str:
        c = Counter("n/a" if v is None else str(v) for v in values)
        if len(c) == 1:
            return next(iter(c))
        return "; ".join(f"{v} ({n} cells)" for v, n in c.most_common())

    envs = [r.get("env") or {} for r in records]
    out = [("suite", suite.name), ("suite hash", suite.hash()),
           ("record suite hashes", summary([r.get("suite_hash") for r in records])),
           ("cells", f"{counts['ok']} ok, {counts['failed']} failed, "
                     f"{counts['missing']} not run (of {counts['expected']})")]
    created = sorted(str(r["created"]) for r in records if r.get("created"))
    if created:
        out.append(("records created", f"{created[0]} to {created[-1]}"))
    keys = list(dict.fromkeys(k for e in envs for k in e))
    labels = {"git_commit": "git commit", "cpu": "CPU", "gpu": "GPU", "cpu_count": "CPU cores",
              "torch_threads": "torch threads", "lowrank_bench": "lowrank-bench"}
    for k in keys:
        vals = []
        for e in envs:
            v = e.get(k)
            if isinstance(v, dict):
                v = ", ".join(f"{ik} {iv}" for ik, iv in v.items() if iv is not None)
            vals.append(v)
        out.append((labels.get(k, k.replace("_", " ")), summary(vals)))
    return out


# -- rendering ----------------------------------------------------------------
def _environments() -> tuple[jinja2.Environment, jinja2.Environment]:
    md_env = jinja2.Environment(loader=jinja2.FileSystemLoader(TEMPLATES),
                                undefined=jinja2.StrictUndefined, autoescape=False,
                                keep_trailing_newline=True)
    md_env.filters["md"] = md_escape
    html_env = jinja2.Environment(loader=jinja2.FileSystemLoader(TEMPLATES),
                                  undefined=jinja2.StrictUndefined, autoescape=True)
    return md_env, html_env


def load_records(suite: Suite, results_dir: Path) -> tuple[list[dict], int]:
    """The suite's current records (stale ones from older configs excluded), and cell count."""
    store = ResultStore(results_dir)
    wanted = {c.id for c in expand(suite)}
    records = [r for r in store.records() if r.get("cell_id") in wanted]
    return records, len(wanted)


def analyse(suite: Suite, records: list[dict], expected: int, out_dir: Path) -> dict:
    """Everything the templates show, with plots written into out_dir."""
    df = flatten(records)
    ok = df[(df.status == "ok") & df.top1.notna()]  # an ok record without top-1 ranks nowhere
    suite_order = [tier_label for tier_label in
                   (f"{k}<={v:g}" for t in suite.targets for k, v in t.items())]
    # colours follow the suite's method order, so each method keeps its colour across reruns
    order = [c.method_label for c in expand(suite)] + df.method.tolist()
    dense_labels = set(df.method[df.method_name == "dense"])
    colors = method_colors([m for m in order if m not in dense_labels])
    groups, score_rows, used = [], [], set()
    for (model, dataset), g in ok.groupby(["model", "dataset"], sort=False):
        a = analyse_group(g, suite_order)
        stem = slug(f"{model}-{dataset}")
        while stem in used:
            stem += "-x"
        used.add(stem)
        plots = group_plots(_points(a), a["cpu_b"], f"{model} on {dataset}", colors,
                            out_dir, stem, cuda_batches=a["cuda_b"])
        seeds = int(g.seed.nunique())
        groups.append({
            "model": model, "dataset": dataset, "anchor": stem, "seeds": seeds,
            "columns": _columns(a), "noise": _noise_note(a, seeds),
            "dense": _row(a["dense"], a, dense=True) if a["dense"] else None,
            "tiers": [{"title": t["title"], "label": t["label"],
                       "rows": [_row(e, a) for e in t["entries"]]} for t in a["tiers"]],
            "scores": _score_rows(a), "macs_range": _range(a["macs_range"]),
            "latency_range": _range(a["latency_range"]),
            "latency_batch": a["cpu_b"][0][1:] if a["cpu_b"] else NA,
            "plots": [p.__dict__ for p in plots], "pivot": _pivot(a),
        })
        for s in a["scores"]:
            score_rows.append({"group": f"{model} / {dataset}", **s})
        groups[-1]["raw_scores"] = {
            "model": model, "dataset": dataset, "dense_top1": a["dense_acc"],
            "macs_range": a["macs_range"], "latency_range": a["latency_range"],
            "scores": a["scores"]}
    ranking = cross_ranking(score_rows)
    failures = [{"model": r.model, "dataset": r.dataset, "seed": str(r.seed),
                 "method": r.method, "target": _pretty_target(r.target_metric, r.target_ratio),
                 "error_type": r.error_type or "error", "error": _one_line(r.error)}
                for r in df[~df.status.isin(["ok", "not_applicable"])].sort_values(
                    ["model", "dataset", "method", "target_ratio", "seed"],
                    ascending=[True, True, True, False, True], na_position="first").itertuples()]
    # cells a method cannot reach: shown with their reason, never ranked nor failed
    not_applicable = [{"model": r.model, "dataset": r.dataset, "seed": str(r.seed),
                       "method": r.method,
                       "target": _pretty_target(r.target_metric, r.target_ratio),
                       "reason": _one_line(r.reason)}
                      for r in df[df.status == "not_applicable"].sort_values(
                          ["model", "dataset", "method", "target_ratio", "seed"],
                          ascending=[True, True, True, False, True]).itertuples()]
    counts = {"ok": int((df.status == "ok").sum()), "failed": len(failures),
              "not_applicable": len(not_applicable), "expected": expected}
    counts["missing"] = max(0, expected - counts["ok"] - counts["failed"]
                            - counts["not_applicable"])
    return {"suite": {"name": suite.name, "description": suite.description,
                      "data_note": suite.data_note or ""},
            "groups": groups, "failures": failures, "counts": counts,
            "not_applicable": not_applicable,
            "methods": _methods(df),
            "ranking": [_rank_row(r) for r in ranking], "ranking_groups": len(groups),
            "provenance": _provenance(records, suite, counts)}


def _pivot(a: dict) -> dict:
    """Method x tier grid of top-1 (achieved MACs ratio) for compact summaries."""
    methods = [s["method"] for s in a["scores"]]
    methods += [e["method"] for t in a["tiers"] for e in t["entries"] if e["method"] not in methods]
    auc = {s["method"]: s["auc_macs"] for s in a["scores"]}
    rows = []
    for m in dict.fromkeys(methods):
        cells = []
        for t in a["tiers"]:
            e = next((e for e in t["entries"] if e["method"] == m), None)
            if e is None:
                cells.append({"text": "", "best": False})
                continue
            flag = " ⚠ over budget" if e["over_budget"] else ""
            text = f"{100 * e['est'].mean:.2f} ({fmt(e['macs_ratio'], '.2f')}×){flag}"
            cells.append({"text": text,
                          "best": e.get("rank") == 1})
        rows.append({"method": m, "cells": cells,
                     "auc": fmt(None if auc.get(m) is None else 100 * auc[m], ".2f")})
    return {"tiers": [t["title"] for t in a["tiers"]], "rows": rows}


def _methods(df: pd.DataFrame) -> list[dict]:
    """Label, registered name, kind and one-line description of each method in the report."""
    from bench.plugins import get_method
    from bench.registry import UnknownNameError

    out = []
    for label, name in dict.fromkeys(zip(df.method, df.method_name)):
        try:
            cls = get_method(str(name))
            kind = str(getattr(cls, "kind", ""))
            desc = cls.description or (cls.__doc__ or "").strip().split("\n")[0]
        except (UnknownNameError, ImportError):  # plugin not installed: its records still show
            kind, desc = "", "(not installed here)"
        out.append({"label": str(label), "name": str(name), "kind": kind, "description": desc})
    return out


def _pretty_target(metric: Any, ratio: Any) -> str:
    return "dense" if metric is None or _missing(metric) else tier_title(metric, ratio)


def _rank_row(r: dict) -> dict:
    return {"method": r["method"], "groups": str(r["groups"]), "wins": str(r["wins"]),
            "auc_macs_rank": fmt(r["auc_macs_rank"], ".2f"),
            "auc_latency_rank": fmt(r["auc_latency_rank"], ".2f"),
            "iso_macs_rank": fmt(r["iso_macs_rank"], ".2f"),
            "iso_latency_rank": fmt(r["iso_latency_rank"], ".2f")}


def build_report(suite: Suite, results_dir: Path, out_dir: Path) -> list[Path]:
    """Render reports/<suite>/: README.md, index.html, plots, results.csv/json, scores.json."""
    records, expected = load_records(suite, Path(results_dir))
    if not records:
        raise FileNotFoundError(
            f"no records for suite '{suite.name}' in {results_dir}/cells; run it first "
            f"(lowrank-bench run {suite.name})")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    for old in list(out_dir.glob("*.png")) + list(out_dir.glob("*.svg")):
        old.unlink()  # plots of models or datasets no longer in the suite
    ctx = analyse(suite, records, expected, out_dir)
    md_env, html_env = _environments()
    files = {
        "README.md": md_env.get_template("report.md.j2").render(**ctx),
        "index.html": html_env.get_template("report.html.j2").render(**ctx),
        "summary.md": md_env.get_template("summary.md.j2").render(**ctx),
    }
    flat = flatten_all(sorted(records, key=lambda r: str(r.get("cell_id"))))
    files["results.csv"] = flat.to_csv(index=False)
    files["results.json"] = json.dumps(
        [{k: v for k, v in row.items() if not _missing(v)} for row in
         flat.to_dict(orient="records")], indent=1, default=str)
    files["scores.json"] = json.dumps({
        "suite": suite.name, "suite_hash": suite.hash(), "counts": ctx["counts"],
        "description": suite.description,
        "groups": [g["raw_scores"] for g in ctx["groups"]]}, indent=1, default=str)
    written = []
    for name, text in files.items():
        atomic_write_bytes(out_dir / name, text.encode())
        written.append(out_dir / name)
    written += sorted(out_dir.glob("*.png")) + sorted(out_dir.glob("*.svg"))
    return written
