"""The recovery view: how each method's top-1 moves with the recovery (fine-tune) budget.

A suite with recovery budgets (its ``recovery`` block) gives one leaderboard per
budget; this view puts them side by side for one model x dataset: per MACs
target, each method's top-1 at every budget (with its interval over seeds and
the recovery lr its rows chose), a plot of top-1 against the budget, and the
pairs of methods whose order flips between two budgets beyond their intervals
(paired by seed, as the leaderboards' ties are), since such a flip means the
ranking is a statement about the recovery budget.
"""

from __future__ import annotations

import itertools
from collections import Counter
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from bench.report.analysis import missing  # noqa: E402
from bench.report.plots import DPI, _row_legend, _save, _text, method_style  # noqa: E402
from bench.report.stats import separated  # noqa: E402

REFERENCE_TIER = "(reference)"  # the reference row's own "tier" in the recovery view


def _pct(v: float) -> str:
    return f"{100 * v:.2f}"


def chosen_lrs(cells: pd.DataFrame) -> dict[tuple[str, str, str, str, int], str]:
    """(model, dataset, method, target, budget) -> the recovery lr its seeds chose, e.g.
    '2e-03' or '5e-04 ×2, 2e-03 ×1' when seeds chose differently. Per model and dataset:
    a method's rows on two models choose their lr apart."""
    out: dict[tuple[str, str, str, str, int], str] = {}
    if "recovery_lr" not in cells:
        return out
    ok = cells[cells.recovery_lr.notna() & cells.recovery_epochs.notna()]
    keys = ["model", "dataset", "method", "target", "recovery_epochs"]
    for (model, dataset, method, target, epochs), g in ok.groupby(keys):
        counts = Counter(f"{float(v):.0e}" for v in g.recovery_lr)
        out[(str(model), str(dataset), str(method), str(target), int(epochs))] = (
            next(iter(counts)) if len(counts) == 1
            else ", ".join(f"{lr} ×{n}" for lr, n in counts.most_common()))
    return out
    ok = cells[cells.recovery_lr.notna() & cells.recovery_epochs.notna()]
    for (method, target, epochs), g in ok.groupby(["method", "target", "recovery_epochs"]):
        counts = Counter(f"{float(v):.0e}" for v in g.recovery_lr)
        out[(str(method), str(target), int(epochs))] = (
            next(iter(counts)) if len(counts) == 1
            else ", ".join(f"{lr} ×{n}" for lr, n in counts.most_common()))
    return out


def _tier_entries(a: dict) -> dict[str, tuple[str, dict[str, dict], Any]]:
    """label -> (title, {method: entry}, the tier's seed noise), the reference included
    as its own tier so that its recovery curve is shown too."""
    out: dict[str, tuple[str, dict[str, dict], Any]] = {}
    if a.get("ref") is not None:
        out[REFERENCE_TIER] = ("reference", {a["ref"]["method"]: a["ref"]}, None)
    for t in a["tiers"]:
        out[t["label"]] = (t["title"], {e["method"]: e for e in t["entries"]}, t.get("noise"))
    return out


def _by_mean_at_largest(methods: list[str], tiers: dict, label: str,
                        budgets: list[int]) -> list[str]:
    """Rows by their mean top-1 at the largest budget that measured them (best first),
    rows without a result last: the table has no rank column, so it reads by mean."""
    def key(method: str) -> tuple:
        for b in reversed(budgets):
            e = tiers[b].get(label, (None, {}, None))[1].get(method)
            if e is not None and e.get("est") is not None:
                return (0, -b, -e["est"].mean, method)
        return (1, 0, 0.0, method)
    return sorted(methods, key=key)


def order_flips(analyses: dict[int, dict]) -> list[dict]:
    """Pairs of methods whose order flips between two recovery budgets beyond their
    intervals: A above B at one budget and B above A at another (`stats.separated`)."""
    budgets = sorted(analyses)
    tiers = {b: _tier_entries(analyses[b]) for b in budgets}
    flips = []
    labels = list(dict.fromkeys(k for b in budgets for k in tiers[b] if k != REFERENCE_TIER))
    for label in labels:
        for lo_b, hi_b in itertools.combinations(budgets, 2):
            if label not in tiers[lo_b] or label not in tiers[hi_b]:
                continue
            title, at_lo, noise_lo = tiers[lo_b][label]
            _, at_hi, noise_hi = tiers[hi_b][label]
            # judged on intervals over seeds only: a single run's test-sample interval says
            # nothing about what a rerun with another seed does
            methods = [m for m in at_lo if m in at_hi and at_lo[m]["est"] is not None
                       and at_hi[m]["est"] is not None and at_lo[m]["state"] == "ok"
                       and at_hi[m]["state"] == "ok" and at_lo[m]["est"].seed_based
                       and at_hi[m]["est"].seed_based]
            for m1, m2 in itertools.combinations(methods, 2):
                before = separated(at_lo[m1]["est"], at_lo[m2]["est"], at_lo[m1].get("by_seed"),
                                   at_lo[m2].get("by_seed"), noise_lo)
                after = separated(at_hi[m1]["est"], at_hi[m2]["est"], at_hi[m1].get("by_seed"),
                                  at_hi[m2].get("by_seed"), noise_hi)
                if before * after == -1:
                    first, second = (m1, m2) if before == 1 else (m2, m1)
                    flips.append({
                        "tier": title, "budgets": (lo_b, hi_b), "first": first,
                        "second": second,
                        "before": (at_lo[first]["est"].mean, at_lo[second]["est"].mean),
                        "after": (at_hi[first]["est"].mean, at_hi[second]["est"].mean)})
    return flips


def mean_order_changes(analyses: dict[int, dict]) -> tuple[int, int]:
    """(pairs whose order by mean differs between the smallest and largest budget, pairs
    compared): the weaker signal, within noise or not."""
    budgets = sorted(analyses)
    if len(budgets) < 2:
        return 0, 0
    lo, hi = _tier_entries(analyses[budgets[0]]), _tier_entries(analyses[budgets[-1]])
    changed = compared = 0
    for label in lo:
        if label == REFERENCE_TIER or label not in hi:
            continue
        at_lo, at_hi = lo[label][1], hi[label][1]
        methods = [m for m in at_lo if m in at_hi and at_lo[m]["est"] is not None
                   and at_hi[m]["est"] is not None]
        for m1, m2 in itertools.combinations(methods, 2):
            compared += 1
            d_lo = at_lo[m1]["est"].mean - at_lo[m2]["est"].mean
            d_hi = at_hi[m1]["est"].mean - at_hi[m2]["est"].mean
            changed += d_lo * d_hi < 0
    return changed, compared


def recovery_plot(analyses: dict[int, dict], title: str, colors: dict, out_dir: Path,
                  stem: str) -> tuple[str, str] | None:
    """Top-1 against the recovery budget, one panel per MACs target (and the reference),
    one line per method with its 95% interval as error bars."""
    budgets = sorted(analyses)
    tiers = {b: _tier_entries(analyses[b]) for b in budgets}
    labels = list(dict.fromkeys(k for b in budgets for k in tiers[b]))
    measured = any(e.get("est") is not None for b in budgets for _, entries, _ in
                   tiers[b].values() for e in entries.values())
    if len(budgets) < 2 or not measured:
        return None
    fig, axes = plt.subplots(1, len(labels), figsize=(3.2 * len(labels) + 1.6, 3.4),
                             squeeze=False, sharey=False)
    for ax, label in zip(axes[0], labels):
        tier_title = next(tiers[b][label][0] for b in budgets if label in tiers[b])
        methods = list(dict.fromkeys(m for b in budgets if label in tiers[b]
                                     for m in tiers[b][label][1]))
        drawn = False
        for method in methods:
            xs, ys, lo, hi = [], [], [], []
            for b in budgets:
                e = tiers[b].get(label, (None, {}, None))[1].get(method)
                if e is None or e["est"] is None:
                    continue
                xs.append(b)
                ys.append(100 * e["est"].mean)
                lo.append(100 * (e["est"].mean - e["est"].lo))
                hi.append(100 * (e["est"].hi - e["est"].mean))
            if not xs:
                continue
            drawn = True
            color, marker = method_style(method)
            ax.errorbar(xs, ys, yerr=[lo, hi], color=colors.get(method, color), marker=marker,
                        ms=4, lw=1.2, capsize=2, label=_text(method))
        if not drawn:  # a gap is shown, not left as a blank frame
            ax.text(0.5, 0.5, "no results", transform=ax.transAxes, ha="center",
                    va="center", fontsize=9, color="0.45")
            ax.set_yticks([])
        ax.set_title(_text(tier_title), fontsize=9)
        ax.set_xticks(budgets)
        ax.set_xlabel("recovery epochs")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("top-1 %")
    _row_legend(axes[0])
    fig.suptitle(_text(f"top-1 vs recovery budget: {title}"), fontsize=10)
    fig.set_dpi(DPI)
    fig.tight_layout()
    return _save(fig, out_dir, f"recovery-{stem}")


def recovery_section(analyses: dict[int, dict], lrs: dict[tuple[str, str, int], str],
                     title: str, colors: dict, out_dir: Path, stem: str) -> dict | None:
    """What the templates show for one model x dataset with several recovery budgets;
    ``lrs``: (method, target, budget) -> the lr chosen, for this model x dataset."""
    budgets = sorted(analyses)
    if len(budgets) < 2:
        return None
    tiers = {b: _tier_entries(analyses[b]) for b in budgets}
    labels = list(dict.fromkeys(k for b in budgets for k in tiers[b]))
    tables = []
    for label in labels:
        tier_title = next(tiers[b][label][0] for b in budgets if label in tiers[b])
        methods = _by_mean_at_largest(
            list(dict.fromkeys(m for b in budgets if label in tiers[b]
                               for m in tiers[b][label][1])), tiers, label, budgets)
        rows = []
        for method in methods:
            cells = []
            for b in budgets:
                e = tiers[b].get(label, (None, {}, None))[1].get(method)
                if e is None:
                    cells.append({"text": "–", "tip": "", "lr": ""})
                elif e["est"] is None:
                    cells.append({"text": e["state"], "tip": str(e.get("detail") or ""),
                                  "lr": ""})
                else:
                    est = e["est"]
                    text = f"{_pct(est.mean)} [{100 * est.lo:.1f}, {100 * est.hi:.1f}]"
                    if e["state"] == "over budget":
                        text += " ⚠ over budget"
                    target = e["target"]
                    lr = lrs.get((method, str(target), b))
                    cells.append({"text": text, "tip": f"lr {lr}" if lr else "",
                                  "lr": lr or ""})
            rows.append({"method": method, "cells": cells})
        tables.append({"title": tier_title, "rows": rows})
    plot = recovery_plot(analyses, title, colors, out_dir, stem)
    flips = order_flips(analyses)
    one_seed = not any(e["est"].seed_based for b in budgets for _, members, _ in tiers[b].values()
                       for e in members.values() if e["est"] is not None)
    changed, compared = mean_order_changes(analyses)
    return {"budgets": budgets, "tables": tables, "one_seed": one_seed,
            "plot": {"png": plot[0], "svg": plot[1]} if plot else None,
            "flips": [flip_sentence(f) for f in flips],
            "mean_changes": (f"{changed} of {compared} pairs of methods at the same target "
                             f"change order by mean between {budgets[0]} and {budgets[-1]} "
                             "recovery epochs" if compared
                             else "no pair of methods has results at two budgets yet")}


def flip_sentence(f: dict) -> str:
    lo, hi = f["budgets"]
    return (f"{f['tier']}: {f['first']} above {f['second']} after {lo} recovery epoch"
            f"{'s' if lo != 1 else ''} ({_pct(f['before'][0])} vs {_pct(f['before'][1])}), "
            f"below it after {hi} ({_pct(f['after'][0])} vs {_pct(f['after'][1])}), beyond "
            "the intervals at both budgets")


def recovery_findings(sections: list[tuple[str, dict]]) -> list[str]:
    """Findings lines: where the order of two methods changes with the recovery budget."""
    out = []
    for where, sec in sections:
        if not sec:
            continue
        if sec.get("one_seed"):
            out.append(f"{where}: one seed, so order changes between recovery budgets are not "
                       f"judged ({sec['mean_changes'] or 'no pairs to compare'}).")
        elif sec["flips"]:
            out += [f"{where}: {s}." for s in sec["flips"]]
        elif sec["mean_changes"]:
            out.append(f"{where}: no pair of methods changes order between recovery budgets "
                       f"beyond the intervals ({sec['mean_changes']}).")
    return out


__all__ = ["chosen_lrs", "order_flips", "recovery_findings", "recovery_section", "missing"]
