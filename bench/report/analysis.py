"""One model x dataset: entries over seeds, budget tiers with every expected cell, scores.

An entry is one (method, target) aggregated over its seeds. Entries come from
the manifest's expected cells, so a method that was not run, failed or does
not apply still has its row, with its state instead of numbers. Only ok
entries within their budget are ranked; curve scores are computed only for
methods that cover every budget of the group (equal coverage), and a point
over its budget never counts towards a "keeps 99%" score.
"""

from __future__ import annotations

import math
from typing import Any

import pandas as pd

from bench.record import RUNTIME_LABELS, metric_columns
from bench.report.pareto import mark_front
from bench.report.scores import area_scores, iso_accuracy
from bench.report.stats import estimate, infer_test_size, pooled_estimates, tie_ranks

METRIC_NAMES = {"macs": "MACs", "params": "params"}


def missing(v: Any) -> bool:
    return v is None or (isinstance(v, float) and math.isnan(v))


def tier_title(metric: str | None, ratio: float) -> str:
    """'MACs ≤ 0.5× dense' for a {macs: 0.5} target: readable, and no '<' to escape."""
    if metric is None or missing(metric):
        return "no budget"
    return f"{METRIC_NAMES.get(metric, metric)} ≤ {ratio:g}× dense"


def _agg(series: pd.Series, how: str) -> float:
    vals = pd.to_numeric(series, errors="coerce").dropna()
    if vals.empty:
        return math.nan
    return float(vals.median() if how == "median" else vals.mean())


def _state_of(cells: pd.DataFrame) -> tuple[str, str]:
    """The state shown for an entry with no ok seed, and its detail (error or reason)."""
    for state in ("failed", "not_applicable"):
        hit = cells[cells.state == state]
        if len(hit):
            r = hit.iloc[0]
            detail = (f"{r.error_type}: {r.error}" if state == "failed" else str(r.reason or ""))
            return ("not applicable" if state == "not_applicable" else "failed"), detail
    if cells.state.isin(["ok", "over budget"]).any():
        return "no top-1", "the record has no top-1 accuracy"
    return "not run", ""


def make_entries(cells: pd.DataFrame, batches: dict[str, list[str]], reference: set[str],
                 test_n: int | None) -> list[dict]:
    """Entries of one group from its expected cells (view rows, 'not run' ones included)."""
    lb = metric_columns(batches)
    out = []
    for (method, target), e in cells.groupby(["method", "target"], sort=False):
        first = e.iloc[0]
        ok = e[e.state.isin(["ok", "over budget"]) & e.top1.notna()]
        row: dict[str, Any] = {
            "method": method, "method_name": first.method_name, "kind": first.kind,
            "target": target, "ref": first.method_name in reference,
            "metric": None if missing(first.target_metric) else first.target_metric,
            "ratio": first.target_ratio, "expected_seeds": int(e.seed.nunique()),
            "seeds": sorted(int(s) for s in ok.seed), "cell_ids": list(e.cell_id),
            "record_ids": list(e.cell_id[e.state != "not run"]),
            "record_seeds": [int(s) for s in e.seed[e.state != "not run"]],
            "over_budget": bool((ok.state == "over budget").any()),
            "by_seed": {int(s): float(v) for s, v in zip(ok.seed, ok.top1)},
            "machines": sorted({str(m) for m in ok.machine.dropna()}) if "machine" in ok
            else [],
        }
        if ok.empty:
            row["state"], row["detail"] = _state_of(e)
            row["est"] = None
        else:
            row["state"], row["detail"] = ("over budget" if row["over_budget"] else "ok"), ""
            # on its own (the reference row keeps this); tier rows are re-estimated
            # with the seed sd pooled over their table in analyse_group
            row["est"] = estimate(list(row["by_seed"].values()), test_n)
        for m, col, _, _ in lb:
            if m.name.startswith("runtime_"):  # a runtime's state or error: text
                text = [v for v in ok[col] if isinstance(v, str)] if col in ok else []
                row[col] = text[0] if text else None
                continue
            row[col] = _agg(ok[col], m.agg) if len(ok) and col in ok else math.nan
        row["over_by"] = float(ok.budget_over_by.max()) if len(ok) else math.nan
        noisy = [c for c in ok.columns if c.endswith("_noisy")]
        row["noisy"] = {c[len("speedup_"):-len("_noisy")]: bool((ok[c] == True).any())  # noqa: E712
                        for c in noisy}
        out.append(row)
    return out


def mark_other_machines(entries: list[dict], ref: dict | None) -> None:
    """Set ``other_machine`` on each entry measured (on some seed) on a machine the
    reference was not: its absolute times and costs do not compare with the reference's,
    while its paired speedups, timed against the dense model beside it, do."""
    ref_machines = set(ref["machines"]) if ref else set()
    for e in entries:
        own = set(e.get("machines", []))
        e["other_machine"] = sorted(own - ref_machines) if ref_machines and own else []
        e["ref_machines"] = sorted(ref_machines)


def _tier_key(entry: dict) -> tuple:
    if entry["metric"] is None:
        return (1, "", 0.0)
    return (0, str(entry["metric"]), -float(entry["ratio"]))


def analyse_group(cells: pd.DataFrame, batches: dict[str, list[str]], reference: set[str],
                  suite_order: list[str]) -> dict:
    """Leaderboard tiers, curve scores and plot points of one model x dataset.

    `cells` holds every expected cell of the group (state 'not run' for those
    without a record) with the view's metric columns.
    """
    ok = cells[cells.state.isin(["ok", "over budget"]) & cells.top1.notna()]
    explicit = ok.test_n.dropna() if "test_n" in ok else pd.Series(dtype=float)
    test_n = int(explicit.iloc[0]) if len(explicit) else infer_test_size(ok.top1.tolist())
    entries = make_entries(cells, batches, reference, test_n)
    dense = [e for e in entries if e["ref"] and e["est"] is not None]
    d = dense[0] if dense else None
    dense_acc = d["est"].mean if d else None
    mark_other_machines(entries, d)
    cpu_b = batches.get("cpu", [])
    for e in entries:
        e["delta"] = None if dense_acc is None or e["est"] is None else e["est"].mean - dense_acc
        for b in cpu_b:
            e[f"speedup_{b}_paired"] = not missing(e.get(f"speedup_{b}"))
            if missing(e.get(f"speedup_{b}")):
                base, own = (d or {}).get(f"cpu_{b}_ms"), e.get(f"cpu_{b}_ms")
                e[f"speedup_{b}"] = (base / own if not missing(base) and not missing(own)
                                     and own > 0 else math.nan)
        b0 = cpu_b[0] if cpu_b else None
        sp = e.get(f"speedup_{b0}") if b0 else None
        e["latency_ratio"] = 1 / sp if sp and not missing(sp) else math.nan
    steps = [e["total_steps"] for e in entries if not missing(e.get("total_steps"))]
    common_steps = max(set(steps), key=steps.count) if steps else None
    for e in entries:
        e["steps_differ"] = (common_steps is not None and not missing(e.get("total_steps"))
                             and e["total_steps"] != common_steps)

    order = {label: i for i, label in enumerate(suite_order)}
    tiers: dict[str, list[dict]] = {}
    for e in sorted((e for e in entries if not e["ref"]), key=_tier_key):
        tiers.setdefault(e["target"], []).append(e)
    ranked_tiers = []
    for label, members in sorted(tiers.items(), key=lambda kv: (
            _tier_key(kv[1][0])[0], order.get(kv[0], len(order)), _tier_key(kv[1][0]))):
        # over budget: shown, never ranked; without a result: shown with its state, last
        within = [m for m in members if m["state"] == "ok"]
        over = [m for m in members if m["state"] == "over budget"]
        absent = [m for m in members if m["est"] is None]
        ests, noise = pooled_estimates([m["by_seed"] for m in within + over], test_n)
        for m, est in zip(within + over, ests):
            m["est"] = est
        ranks = tie_ranks([m["est"] for m in within], [m["by_seed"] for m in within], noise)
        for m, (rank, tied) in zip(within, ranks):
            m["rank"], m["tied"] = rank, tied
        for m in within:  # ties are not transitive: rank 1 only through a wide seed spread
            m["first_by_spread"] = m["rank"] == 1 and any(
                o["rank"] != 1 and o["est"].mean > m["est"].mean for o in within)
        for m in over + absent:
            m["rank"], m["tied"] = None, False
        within.sort(key=lambda m: (m["rank"], -m["est"].mean, m["method"]))
        over.sort(key=lambda m: (-m["est"].mean, m["method"]))
        absent.sort(key=lambda m: m["method"])
        ranked_tiers.append({"label": label,
                             "title": tier_title(members[0]["metric"], members[0]["ratio"]),
                             "entries": within + over + absent, "noise": noise})
    scores, macs_range, lat_range = curve_scores(entries, len(ranked_tiers), dense_acc)
    front_basis = mark_front(entries, "macs_ratio")
    runtimes = {rt: batches[rt] for rt in RUNTIME_LABELS if batches.get(rt)}
    return {"cpu_b": cpu_b, "cuda_b": batches.get("cuda", []), "runtime_b": runtimes,
            "test_n": test_n, "ref": d,
            "seeds": int(cells.seed.nunique()), "entries": entries, "tiers": ranked_tiers,
            "scores": scores, "macs_range": macs_range, "latency_range": lat_range,
            "dense_acc": dense_acc, "common_steps": common_steps,
            "front_basis": front_basis}


def curve_scores(entries: list[dict], n_tiers: int, dense_acc: float | None
                 ) -> tuple[list[dict], Any, Any]:
    """Area and 99% scores per method, over equal coverage.

    Only methods with a within-budget result at every budget tier of the
    group are scored (the others are listed with their coverage and no
    score), so every compared curve spans the same budgets. Over-budget
    points are left out of every score.
    """
    compressed = [e for e in entries if not e["ref"] and e["metric"] is not None]
    methods = list(dict.fromkeys(e["method"] for e in compressed))
    good = {m: [e for e in compressed if e["method"] == m and e["state"] == "ok"]
            for m in methods}
    complete = [m for m in methods if len(good[m]) >= n_tiers]
    macs = {m: [(e["macs_ratio"], e["est"].mean) for e in good[m]] for m in complete}
    lat = {m: [(e["latency_ratio"], e["est"].mean) for e in good[m]
               if not missing(e["latency_ratio"])] for m in complete}
    auc_macs, macs_range = area_scores(macs)
    auc_lat, lat_range = area_scores(lat)
    scores = []
    for m in methods:
        full = m in complete
        scores.append({
            "method": m, "points": len(good[m]), "expected": n_tiers, "complete": full,
            "auc_macs": auc_macs.get(m) if full else None,
            "auc_latency": auc_lat.get(m) if full else None,
            "iso_macs": iso_accuracy(macs[m], dense_acc) if full else None,
            "iso_latency": iso_accuracy(lat[m], dense_acc) if full else None})
    scores.sort(key=lambda s: (not s["complete"], s["auc_macs"] is None,
                               -(s["auc_macs"] or 0.0), s["method"]))
    return scores, macs_range, lat_range
