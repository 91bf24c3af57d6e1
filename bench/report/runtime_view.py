"""The "Speedups by runtime" section of one model x dataset: tables and plots per runtime.

Shown only where some record timed a deployment runtime beside eager. Per batch
size, (a) the dense model under each runtime: its p50, its paired speedup over
dense in eager (``runtime_vs_eager``) and the runtime's A/A check (the dense
record's own paired entry, a deep copy against itself); (b) per method and
budget, for each runtime, the speedup over dense in the same runtime and end
to end over dense in eager (see bench.report.runtime_speed for the numbers).
Per runtime, one accuracy-vs-latency plot with the end-to-end latency on x.
A runtime that could not take a model shows its state, the error as tooltip.
"""

from __future__ import annotations

import math
import statistics
from pathlib import Path
from typing import Any

import pandas as pd

from bench.record import RUNTIME_LABELS, Record, batch_key
from bench.report.analysis import tier_title
from bench.report.plots import RUNTIME_TITLES, accuracy_vs_runtime
from bench.report.present import one_line
from bench.report.runtime_speed import (
    AA_TOLERANCE,
    COMPOSE_RULE,
    Figure,
    dense_p50,
    dense_vs_eager,
    end_to_end,
    figure,
    state_of,
)

NOTE = ("Paired speedups with their 95% intervals, medians over seeds. The dense table: "
        "the dense model's p50 under each runtime, its speedup over the dense model in "
        "eager (both timed in one paired run), and the runtime's A/A check (the dense "
        "model against its own copy under that runtime: 1.00 within ±{tol:.2f} with an "
        "interval covering 1.0 on an idle machine, else flagged noisy). The method table: "
        "per runtime, the speedup over dense in the same runtime, and end to end over "
        "dense in eager; " + COMPOSE_RULE + ".")


def label(rt: str) -> str:
    return "eager" if rt == "eager" else RUNTIME_LABELS.get(rt, rt)


def _cell(f: Figure, runtime: str = "", tip: str = "") -> dict:
    if f.speed is not None:
        return {"text": f.speed.text(), "tip": tip, "runtime": runtime, "state": "ok"}
    return {"text": f.state, "tip": one_line(f.error or f.state), "runtime": runtime,
            "state": f.state}


def _median(values: list[float | None]) -> float | None:
    got = [v for v in values if v is not None]
    return statistics.median(got) if got else None


def dense_rows(dense: list[dict], runtimes: list[str], b: str) -> list[dict]:
    """Table (a): one row per runtime for the dense model at batch key b."""
    rows = []
    for rt in runtimes:
        states = [state_of(m, rt) for m in dense]
        bad = next(((s, e) for s, e in states if s != "measured"), None)
        measured = [m for m, (s, _) in zip(dense, states) if s == "measured"]
        head = {"text": label(rt), "tip": RUNTIME_TITLES.get(rt, rt), "runtime": rt,
                "state": "ok"}
        if not dense:
            rows.append({"runtime": rt, "cells": [head] + [_cell(Figure(None, "not run",
                                                                        "no dense record"))] * 3})
            continue
        if not measured and bad:
            rows.append({"runtime": rt, "cells": [head] + [_cell(Figure(None, *bad))] * 3})
            continue
        p50 = _median([dense_p50(m, rt, b) for m in measured])
        p50_cell = {"text": "n/a" if p50 is None else f"{p50:.3g}", "runtime": rt,
                    "tip": ("reference side of the dense self-pair, p50 over its timed calls"
                            if rt != "eager" else "reference side of the dense A/A pair in "
                            "eager (else the unpaired CPU p50)"), "state": "ok"}
        vs = dense_vs_eager(measured, rt, b)
        vs_cell = ({"text": "1.00×", "tip": "the baseline: dense in eager", "runtime": rt,
                    "state": "ok"} if rt == "eager" else
                   _cell(vs, rt, f"dense under {rt} against dense in eager, paired rounds: "
                                 "eager time / runtime time"))
        aa = figure(measured, rt, b)
        aa_cell = _cell(aa, rt, f"dense against its own copy under {rt}: an A/A check")
        if aa.speed is not None and not aa.speed.aa_ok:
            if not aa.speed.noisy:
                aa_cell["text"] += " noisy"
            aa_cell["tip"] += (f"; flagged noisy: not within 1.00 ± {AA_TOLERANCE:.2f} with an "
                               "interval covering 1.0 (machine load, or too few rounds)")
            aa_cell["state"] = "noisy"
        rows.append({"runtime": rt, "cells": [head, p50_cell, vs_cell, aa_cell]})
    return rows


def method_rows(entries: list[dict], by_id: dict[str, Record], runtimes: list[str],
                dense: list[dict], b: str) -> list[dict]:
    """Table (b): per method and budget, each runtime's speedup over dense in that
    runtime and end to end over dense in eager."""
    d = {rt: dense_vs_eager(dense, rt, b) for rt in runtimes}
    rows = []
    for e in entries:
        metrics = [by_id[c].metrics for c in e["cell_ids"]
                   if c in by_id and by_id[c].status == "ok"]
        top1 = "n/a" if e["est"] is None else f"{100 * e['est'].mean:.2f}"
        budget = (tier_title(e["metric"], e["ratio"])
                  + (" ⚠ over budget" if e["over_budget"] else ""))
        cells = [{"text": e["method"], "tip": "", "runtime": "", "state": "ok"},
                 {"text": budget, "tip": "", "runtime": "", "state": "ok"},
                 {"text": top1, "tip": "test top-1, mean over seeds", "runtime": "",
                  "state": "ok"}]
        for rt in runtimes:
            if e["est"] is None or not metrics:  # not run, failed, not applicable
                gap = _cell(Figure(None, e["state"], e.get("detail") or e["state"]), rt)
                cells += [gap] * (1 if rt == "eager" else 2)
                continue
            own = figure(metrics, rt, b)
            cells.append(_cell(own, rt, f"model against dense, both under {rt}, paired"))
            if rt != "eager":
                cells.append(_cell(end_to_end(own, d[rt]), rt,
                                   f"under {rt} against dense in eager: {COMPOSE_RULE}"))
        rows.append({"method": e["method"], "kind": e.get("kind", ""), "budget": e["target"],
                     "budget_title": tier_title(e["metric"], e["ratio"]),
                     "state": e["state"], "cells": cells})
    return rows


def columns(runtimes: list[str], b: str) -> dict[str, list[dict]]:
    dense = [{"label": "runtime", "tip": "", "runtime": ""},
             {"label": "dense p50 ms ↓", "tip": "the dense model's median call time",
              "runtime": ""},
             {"label": "× dense eager ↑", "tip": "dense under the runtime against dense in "
              "eager: speedup median [95% interval]", "runtime": ""},
             {"label": "A/A: dense vs its copy", "tip": f"should read 1.00 ± {AA_TOLERANCE:.2f} "
              "with an interval covering 1.0", "runtime": ""}]
    methods = [{"label": "method", "tip": "", "runtime": ""},
               {"label": "budget", "tip": "", "runtime": ""},
               {"label": "top-1 % ↑", "tip": "mean over seeds", "runtime": ""}]
    for rt in runtimes:
        lab = label(rt)
        methods.append({"label": f"{lab}: × dense {lab} ↑", "runtime": rt,
                        "tip": f"speedup over dense, both under {rt} (batch {b[1:]})"})
        if rt != "eager":
            methods.append({"label": f"{lab}: × dense eager ↑", "runtime": rt,
                            "tip": f"end to end (batch {b[1:]}): {COMPOSE_RULE}"})
    return {"reference": dense, "methods": methods}


def plot_points(entries: list[dict], by_id: dict[str, Record], dense: list[dict], rt: str,
                b: str) -> pd.DataFrame:
    """Accuracy and end-to-end latency (dense eager p50 / speedup over dense eager) of each
    entry; the latency's 95% interval in `e2e_p25_ms`/`e2e_p75_ms` (drawn as x error bars)."""
    base = _median([dense_p50(m, "eager", b) for m in dense])
    d = dense_vs_eager(dense, rt, b)
    rows = []
    for e in entries:
        if e["est"] is None:
            continue
        if e["ref"]:
            f = d
        else:
            metrics = [by_id[c].metrics for c in e["cell_ids"]
                       if c in by_id and by_id[c].status == "ok"]
            f = end_to_end(figure(metrics, rt, b), d)
        s = f.speed
        ok = s is not None and base is not None
        rows.append({"method": e["method"], "ref": e["ref"], "over_budget": e["over_budget"],
                     "top1": e["est"].mean,
                     "top1_std": math.nan if e["est"].std is None else e["est"].std,
                     "e2e_ms": base / s.median if ok else math.nan,
                     "e2e_p25_ms": base / s.hi if ok else math.nan,
                     "e2e_p75_ms": base / s.lo if ok else math.nan, "entry": e})
    cols = ["method", "ref", "over_budget", "top1", "top1_std", "e2e_ms", "e2e_p25_ms",
            "e2e_p75_ms", "entry"]
    df = pd.DataFrame(rows, columns=cols)
    return df.astype({c: float for c in cols[3:-1]})


def state_notes(batches: list[dict], dense_label: str) -> list[str]:
    """'svd under onnxruntime: not exportable (model: ...)' once per method, runtime and
    error: the tooltips of the HTML, written out for the Markdown page."""
    out, seen = [], set()
    for bt in batches:
        cells = [(dense_label, c) for r in bt["reference"] for c in r["cells"][1:2]]
        cells += [(r["method"], c) for r in bt["methods"] for c in r["cells"][3:]
                  if c["state"] != r["state"]]  # not run, failed, ...: said in the row
        for who, c in cells:
            key = (who, c["runtime"], c["state"], c["tip"])
            if c["state"] in ("ok", "noisy", "n/a") or key in seen:
                continue
            seen.add(key)
            out.append(f"{who} under {c['runtime']}: {c['state']} ({c['tip']})")
    return out


def runtime_section(a: dict, records: list[Record], title: str, colors: dict, out_dir: Path,
                    stem: str) -> dict | None:
    """The section's rows, columns and plots for one group's analysis ``a``; None when no
    runtime besides eager was timed."""
    runtimes = ["eager"] + [rt for rt in (a.get("runtime_b") or {}) if a["runtime_b"][rt]]
    if len(runtimes) < 2:
        return None
    by_id = {r.cell_id: r for r in records}
    refs = [e for e in a["entries"] if e["ref"]]
    dense = [by_id[c].metrics for e in refs[:1] for c in e["cell_ids"]
             if c in by_id and by_id[c].status == "ok"]
    entries = [e for t in a["tiers"] for e in t["entries"]]
    keys = set(a["cpu_b"]) | {b for rt in runtimes[1:] for b in a["runtime_b"][rt]}
    batches = sorted(keys, key=batch_key)
    out: dict[str, Any] = {
        "note": NOTE.format(tol=AA_TOLERANCE),
        "runtimes": [{"name": rt, "label": label(rt), "title": RUNTIME_TITLES.get(rt, rt)}
                     for rt in runtimes],
        "batches": [{"batch": b[1:], "columns": columns(runtimes, b),
                     "reference": dense_rows(dense, runtimes, b),
                     "methods": method_rows(entries, by_id, runtimes, dense, b)}
                    for b in batches],
        "plots": [], "states": []}
    out["states"] = state_notes(out["batches"], dense_label=refs[0]["method"] if refs
                                else "reference")
    for rt in runtimes:
        rt_batches = a["cpu_b"] if rt == "eager" else a["runtime_b"][rt]
        if not rt_batches:
            continue
        b = rt_batches[0]
        points = plot_points(refs[:1] + entries, by_id, dense, rt, b)
        if points.e2e_ms.notna().any():
            plot = accuracy_vs_runtime(points, rt, b, title, colors, out_dir, stem)
            out["plots"].append({**plot.__dict__, "runtime": rt})
    return out

