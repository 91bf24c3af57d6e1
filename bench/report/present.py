"""Analysis -> rows of formatted strings for the templates (HTML and Markdown alike).

Leaderboard columns are the METRICS entries marked `leaderboard`, after the
fixed rank / method / top-1 / interval / delta columns; a column that is
n/a in every row of a group is dropped. Entries without a result keep their
row and show their state ("not run", "failed", "not applicable") instead.
"""

from __future__ import annotations

import re
from typing import Any

from bench.record import RUNTIME_LABELS, Metric, metric_columns
from bench.report.analysis import missing, tier_title
from bench.report.stats import Estimate

NA = "n/a"
GAP = "–"  # no result: shown, never blank
FRONT_MARK = "◆"  # on the MACs Pareto front (bench.report.pareto)
# rank 1 only because its seeds spread too widely for any row to beat it, while the
# leader beats rows above it by mean (ties are not transitive)
SPREAD_MARK = "≈"
SPREAD_NOTE = (f"{SPREAD_MARK} rank 1 only through its wide seed spread: no row beats it "
               "beyond the paired 95% interval, yet the leader beats rows above it by mean")
OTHER_MACHINE_MARK = "†"  # a time or cost taken on another machine than the reference's
ERROR_CHARS = 400


def md_escape(text: Any) -> str:
    """Text safe inside a GitHub Markdown table cell: no HTML, no markup, no cell breaks."""
    s = str(text).replace("\\", "\\\\")
    s = s.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    s = re.sub(r"([|`*_\[\]#~])", r"\\\1", s)
    return " ".join(s.split())


def fmt(v: Any, spec: str, suffix: str = "") -> str:
    return NA if missing(v) else format(v, spec) + suffix


def one_line(text: Any, limit: int = ERROR_CHARS) -> str:
    s = " ".join(str(text or "").split())
    return s if len(s) <= limit else s[: limit - 1] + "…"


def record_href(cell_id: str) -> str:
    return f"records/{cell_id}.json"


def acc_cells(est: Estimate) -> tuple[str, str]:
    main = f"{100 * est.mean:.2f}"
    if est.std is not None:
        main += f" ± {100 * est.std:.2f}"
    ci = NA if est.method == "point" else f"{100 * est.lo:.1f}–{100 * est.hi:.1f}"
    return main, ci


def ci_tip(est: Estimate) -> str:
    seeds = f"{est.n} seed{'s' if est.n != 1 else ''}"
    return {"pooled-t": f"Student t interval of the mean over {seeds}, seed sd pooled over "
                        f"the rows of this table (df {est.df})",
            "t": f"Student t interval of the mean over its own {seeds} (df {est.df})",
            "wilson": "Wilson interval over the test samples of a single run (one seed): "
                      "a rerun with another seed can move more than this",
            "point": "no interval: one seed, test size unknown"}[est.method]


def _one_seed_kinds(a: dict) -> tuple[bool, bool]:
    """(any ranked row with a seed-based interval, any with one seed only) in a group."""
    kinds = {e["est"].method for e in a["entries"] if e["est"] is not None and not e["ref"]}
    return bool(kinds & {"pooled-t", "t"}), bool(kinds & {"wilson", "point"})


def leaderboard_metrics(a: dict) -> list[tuple[Metric, str, str]]:
    """(metric, column, batch) shown in a group's leaderboards: per-batch metrics at the
    smallest and largest CPU batch (and so for each deployment runtime timed) and the
    smallest GPU batch."""
    def ends(keys: list[str]) -> list[str]:
        return keys[:1] + keys[-1:] if len(keys) > 1 else list(keys)

    shown = {"cpu": ends(a["cpu_b"]), "cuda": a["cuda_b"][:1],
             **{rt: ends(keys) for rt, keys in a.get("runtime_b", {}).items()}}
    return [(m, col, b) for m, col, _, b in metric_columns(shown, "leaderboard")]


def metric_cell(m: Metric, col: str, b: str, e: dict) -> tuple[str, str]:
    """(text, tooltip) of one table-driven cell."""
    v = e.get(col)
    text, tip = m.format(v), m.description
    if missing(v) and e["est"] is None:
        return GAP, ""
    if m.name == "macs_ratio" and e["over_budget"]:
        text += f" ⚠ +{e['over_by']:.3f}"
    runtime = m.per_batch if m.per_batch in RUNTIME_LABELS else None
    if runtime and m.name == f"speedup_{runtime}_{{b}}" and missing(v):
        state = e.get(f"runtime_{runtime}_state")
        if state and state != "measured":  # not exportable, not compilable, ...
            return state, one_line(e.get(f"runtime_{runtime}_error") or state)
    if m.name in ("speedup_{b}", f"speedup_{runtime}_{{b}}") and not missing(v):
        text += "×"
        lo, hi = e.get(f"{col}_lo"), e.get(f"{col}_hi")
        if (runtime or e.get(f"speedup_{b}_paired")) and not missing(lo) and not missing(hi):
            text += f" [{lo:.2f}, {hi:.2f}]"
            tip = "paired rounds against the reference: median and 95% interval"
            if runtime:
                tip = (f"both under {runtime}, " + tip)
            if e["noisy"].get(col[len("speedup_"):]):
                text += " noisy"
                tip += "; flagged noisy (machine load changed or rounds disagree)"
        else:
            tip = "reference p50 / p50 (unpaired)"
    if m.name == "cpu_{b}_ms" and not missing(v):
        tip = (f"p90 {Metric.format(m, e.get(f'cpu_{b}_p90_ms'))} ms, IQR "
               f"{Metric.format(m, e.get(f'cpu_{b}_iqr_ms'))} ms (median over seeds)")
    if m.machine_bound and e.get("other_machine") and not missing(v):
        text += f" {OTHER_MACHINE_MARK}"
        tip = (f"measured on {'; '.join(e['other_machine'])}, the reference on "
               f"{'; '.join(e['ref_machines'])}: not comparable with the reference's figure "
               "(the paired speedups are)")
    if m.name == "total_steps" and e.get("steps_differ"):
        text += " ⚠"
        tip = "total training steps differ from most rows of this model × dataset"
    return text, tip


def columns(a: dict) -> list[dict]:
    cols = [
        {"label": "rank", "tip": "rank by mean top-1 among models within the budget; "
                  "'=' marks a tie: the 95% interval of the difference to the tie group's "
                  "leader, paired by seed, includes 0 (never with one seed)", "key": "rank"},
        {"label": "method", "tip": "method label from the suite", "key": "method"},
        {"label": "top-1 % ↑", "tip": "test top-1, mean ± std over seeds", "key": "top1"},
        {"label": ci_label(a), "tip": "Student t over seeds, seed sd pooled over the rows "
                  "of the table; with one seed, Wilson over the test samples", "key": "ci"},
        {"label": "Δ vs ref pp ↑", "tip": "percentage points against the reference row",
         "key": "delta"},
    ]
    for m, col, b in leaderboard_metrics(a):
        cols.append({"label": m.heading(b), "tip": m.description, "key": col})
    cols.append({"label": "records", "tip": "the record JSON of each seed", "key": "records"})
    return cols


def row(e: dict, a: dict, dense: bool = False) -> dict:
    links = [{"text": f"s{s}", "href": record_href(c)}
             for s, c in zip(e.get("record_seeds", []), e.get("record_ids", []))]
    if e["est"] is None:
        state = e["state"]
        cells = [state, e["method"], GAP, GAP, GAP]
        tips = [one_line(e["detail"]), "", "", "", ""]
    else:
        acc, ci = acc_cells(e["est"])
        if e["est"].method == "wilson" and all(_one_seed_kinds(a)):
            ci += " (test samples)"  # beside seed-based intervals in the same column
        if len(e["seeds"]) < e["expected_seeds"]:
            acc += f" (n={len(e['seeds'])} of {e['expected_seeds']})"
        rank = ("over budget" if e.get("rank") is None
                else ("=" if e.get("tied") else "") + str(e["rank"])
                + (f" {SPREAD_MARK}" if e.get("first_by_spread") else ""))
        delta = fmt(None if e["delta"] is None else 100 * e["delta"], "+.2f")
        cells = ["ref" if dense else rank, e["method"], acc, ci, "0.00" if dense else delta]
        tips = ["", f"seeds {', '.join(map(str, e['seeds']))}", f"{len(e['seeds'])} seed(s)",
                ci_tip(e["est"]), ""]
    for m, col, b in leaderboard_metrics(a):
        text, tip = metric_cell(m, col, b, e)
        cells.append(text)
        tips.append(tip)
    cells.append("")
    tips.append("")
    return {"cells": cells, "tips": tips, "ref": dense, "tied": bool(e.get("tied")),
            "best": e.get("rank") == 1, "state": e["state"], "links": links,
            "over_budget": e["over_budget"], "kind": e.get("kind", ""),
            "budget": tier_title(e["metric"], e["ratio"])}


def drop_empty_columns(group: dict) -> None:
    """Hide columns that are n/a (or gaps) in every row of every tier of a group."""
    rows = [r for t in group["tiers"] for r in t["rows"]]
    if group["ref"]:
        rows.append(group["ref"])
    keep = [i for i, c in enumerate(group["columns"])
            if c["key"] in ("rank", "method", "top1", "records")
            or any(r["cells"][i] not in (NA, GAP, "") for r in rows)]
    group["columns"] = [group["columns"][i] for i in keep]
    for r in rows:
        r["cells"] = [r["cells"][i] for i in keep]
        r["tips"] = [r["tips"][i] for i in keep]


def ci_label(a: dict) -> str:
    seeded, single = _one_seed_kinds(a)
    return "95% CI % (test samples)" if single and not seeded else "95% CI %"


def noise_note(a: dict, seeds: int) -> str:
    seeded, single = _one_seed_kinds(a)
    parts = []
    if seeded:
        parts.append(
            f"mean ± std over {seeds} seeds; 95% CI: Student t interval of the mean over the "
            "row's own seeds (three or more), else with the seed standard deviation pooled "
            "over the rows of its budget table (df = Σ(seeds − 1)). Rank = 1 + the number of "
            "entries better beyond the 95% intervals (= when shared): one entry is better "
            "than another when the 95% interval of their difference, paired by seed "
            "(Student t of the per-seed differences from three shared seeds on; with fewer, "
            "the seed effect removed and the residual pooled over the table), excludes 0, "
            "or, without shared seeds, when their intervals do not overlap. So an entry "
            "nothing beats ranks 1, and a row with a wide interval can rank above a higher "
            "mean; rows are listed by rank, then mean.")
    if single:
        where = " in some budget tables" if seeded else ""
        ci = (f"the 95% CI is the Wilson interval over the {a['test_n']} test samples, not "
              "over seeds" if a["test_n"] else "no interval (test size unknown)")
        parts.append(
            f"Warning: one seed{where}: ranks are by the single run; a rerun with another seed "
            "can move post-training rows by several pp, so no ties are marked (except at "
            f"equal accuracy); {ci}.")
    parts.append(machine_note(a))
    return " ".join(p for p in parts if p) or "no results yet."


def machine_note(a: dict) -> str:
    """The sentence for a table whose rows were not all measured where the reference was."""
    others = sorted({m for e in a["entries"] for m in e.get("other_machine", [])})
    if not others:
        return ""
    ref = "; ".join(a["ref"]["machines"]) if a.get("ref") else "n/a"
    return (f"{OTHER_MACHINE_MARK} measured (on some seed) on another machine "
            f"({'; '.join(others)}) than the reference ({ref}): its latencies in ms, its cost "
            "in seconds and its points in the latency plots do not compare with other "
            "machines' figures; its speedups do, as each is timed paired against the dense "
            "model on its own machine.")


def score_rows(a: dict) -> list[dict]:
    never = "never" if a["dense_acc"] is not None else NA

    def pct(v):
        return fmt(None if v is None else 100 * v, ".2f")

    out = []
    for s in a["scores"]:
        cov = f"{s['points']} of {s['expected']}"
        if not s["complete"]:
            out.append({"method": s["method"], "points": cov, "auc_macs": "incomplete",
                        "auc_latency": "incomplete", "iso_macs": "incomplete",
                        "iso_latency": "incomplete", "complete": False})
            continue
        out.append({"method": s["method"], "points": cov, "complete": True,
                    "auc_macs": pct(s["auc_macs"]), "auc_latency": pct(s["auc_latency"]),
                    "iso_macs": fmt(s["iso_macs"], ".3f", "×") if s["iso_macs"] else never,
                    "iso_latency": fmt(s["iso_latency"], ".3f", "×") if s["iso_latency"]
                    else never})
    return out


def range_text(r: tuple[float, float] | None) -> str:
    if r is None:
        return "none shared by all complete curves (scores n/a)"
    return f"{r[0]:.3f}× – {r[1]:.3f}× dense"


def pivot(a: dict) -> dict:
    """Method x budget grid: top-1 (achieved MACs ratio), or the entry's state."""
    auc = {s["method"]: s for s in a["scores"]}
    methods = [s["method"] for s in a["scores"]]
    methods += [e["method"] for t in a["tiers"] for e in t["entries"]]
    rows = []
    for m in dict.fromkeys(methods):
        cells = []
        for t in a["tiers"]:
            e = next((e for e in t["entries"] if e["method"] == m), None)
            if e is None:
                cells.append({"text": GAP, "best": False, "state": "absent"})
            elif e["est"] is None:
                cells.append({"text": e["state"], "best": False, "state": e["state"],
                              "tip": one_line(e["detail"])})
            else:
                flag = " ⚠ over budget" if e["over_budget"] else ""
                front = f" {FRONT_MARK}" if e.get("on_front") else ""
                spread = f" {SPREAD_MARK}" if e.get("first_by_spread") else ""
                text = (f"{100 * e['est'].mean:.2f} ({fmt(e.get('macs_ratio'), '.2f')}×)"
                        f"{front}{spread}{flag}")
                cells.append({"text": text, "best": e.get("rank") == 1, "state": e["state"],
                              "tip": front_note(a) if front else ""})
        s = auc.get(m)
        score = (NA if s is None else "incomplete" if not s["complete"]
                 else fmt(None if s["auc_macs"] is None else 100 * s["auc_macs"], ".2f"))
        kind = next((e.get("kind", "") for t in a["tiers"] for e in t["entries"]
                     if e["method"] == m), "")
        rows.append({"method": m, "cells": cells, "auc": score, "kind": kind})
    return {"tiers": [t["title"] for t in a["tiers"]],
            "labels": [t["label"] for t in a["tiers"]], "rows": rows,
            "front_note": front_note(a)}


def front_note(a: dict) -> str:
    """What the front mark means in this group: beyond seed intervals, or by means."""
    how = {"seeds": "better beyond the 95% intervals over seeds (paired by seed, as for ties)",
           "mixed": "better beyond the 95% intervals over seeds (paired by seed, as for "
                    "ties), or by mean where either row has one seed (a rerun can move those)",
           }.get(a.get("front_basis", "means"),
                 "better by mean (one seed: no interval over seeds, so a rerun can move the "
                 "front)")
    spread = any(e.get("first_by_spread") for t in a.get("tiers", []) for e in t["entries"])
    return (f"{FRONT_MARK} on the MACs Pareto front: no entry of the same or lower MACs "
            f"ratio, the reference included, is {how}" + (f"; {SPREAD_NOTE}" if spread else ""))


def rank_row(r: dict) -> dict:
    rate = NA if r["win_rate"] is None else f"{100 * r['win_rate']:.0f}%"
    return {"method": r["method"], "coverage": f"{r['groups']} of {r['n_groups']}",
            "complete": r["complete"], "win_rate": rate, "comparisons": str(r["comparisons"]),
            "wins": str(r["wins"]),
            **{f"{k}_rank": (fmt(r[f"{k}_rank"], ".2f") if r["complete"] else "incomplete")
               for k in ("auc_macs", "auc_latency", "iso_macs", "iso_latency")}}
