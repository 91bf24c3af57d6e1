"""Matplotlib plots of one model x dataset: accuracy vs cost with the Pareto front.

Every plot is written as PNG (for Markdown on GitHub) and SVG (crisp in the
HTML page). Output is deterministic for the same records (no dates in the
files, fixed SVG ids) so regenerated reports diff cleanly.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter  # noqa: E402

from bench.report.pareto import front_flags  # noqa: E402

plt.rcParams["svg.hashsalt"] = "lowrank-bench"
DPI = 200  # PNGs at 2x: legend text stays readable on high-density screens
PALETTE = list(plt.get_cmap("tab10").colors) + list(plt.get_cmap("Dark2").colors)
MARKERS = ["o", "s", "^", "D", "v", "P", "X", "<", ">", "h"]
# Methods shipped with the project get fixed, well-separated styles; any other label
# is hashed into the palette, so a method looks the same in every report and the site.
KNOWN = {"svd": 0, "svd-accel": 1, "lorita": 2, "maestro": 3, "funnel": 4, "monarch": 5,
         "monarch-scratch": 6, "prune-l1": 7, "prune-random": 8, "dense-small": 9,
         "prune-group": 10}


def slug(text: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in text).strip("-").lower() or "x"


def method_style(method: str) -> tuple[tuple, str]:
    """(colour, marker) of a method label: fixed for known methods, else a stable hash."""
    if method in KNOWN:
        i = KNOWN[method]
    else:  # the palette's slots after the known methods', so a plugin never looks like one
        free = len(PALETTE) - len(KNOWN)
        i = len(KNOWN) + int(hashlib.sha256(str(method).encode()).hexdigest()[:8], 16) % free
    return tuple(PALETTE[i % len(PALETTE)]), MARKERS[i % len(MARKERS)]


def method_colors(methods: list[str]) -> dict[str, tuple]:
    """Colour of each method label; the same label gets the same colour in every report."""
    return {m: method_style(m)[0] for m in dict.fromkeys(methods)}


def _ordered(methods: pd.Series, colors: dict) -> list[str]:
    """Methods present, in the given (suite) order, unknown ones last."""
    present = list(dict.fromkeys(methods))
    return sorted(present, key=lambda m: (m not in colors, list(colors).index(m)
                                          if m in colors else 0))


def _legend(ax) -> None:
    """Legend outside the axes, to the right: never on top of a point (none when
    nothing in the panel is labelled)."""
    if not ax.get_legend_handles_labels()[0]:
        return
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0,
              frameon=False)


def _row_legend(axes) -> None:
    """One legend for a row of panels, beside the last: every label drawn in any panel,
    once (the last panel alone may have no data, e.g. a target not run yet)."""
    seen: dict[str, Any] = {}
    for ax in axes:
        for handle, label in zip(*ax.get_legend_handles_labels()):
            seen.setdefault(label, handle)
    if seen:
        axes[-1].legend(list(seen.values()), list(seen), fontsize=8, loc="upper left",
                        bbox_to_anchor=(1.02, 1.0), borderaxespad=0, frameon=False)


def _text(label: str) -> str:
    """Matplotlib treats $...$ as math; show user labels literally."""
    return str(label).replace("$", r"\$")


def pareto_front(xs: np.ndarray, ys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Points not dominated by any cheaper-or-equal, at-least-as-accurate point."""
    order = np.lexsort((-ys, xs))
    best = -np.inf
    fx, fy = [], []
    for i in order:
        if ys[i] > best:
            fx.append(xs[i])
            fy.append(ys[i])
            best = ys[i]
    return np.array(fx), np.array(fy)


def _front(points: pd.DataFrame, xs: np.ndarray, ys: np.ndarray) -> tuple[np.ndarray, str]:
    """Which points are on the front and on what basis: beyond seed intervals when the
    points carry their entries (bench.report.pareto), else by means."""
    if "entry" in points and points["entry"].notna().all():
        flags, basis = front_flags(list(points["entry"]), list(xs))
        return np.array(flags, dtype=bool), basis
    fx, fy = pareto_front(xs, ys)
    on = {(a, b) for a, b in zip(fx, fy)}
    return np.array([(a, b) in on for a, b in zip(xs, ys)], dtype=bool), "means"


@dataclass(frozen=True)
class Plot:
    kind: str
    title: str
    png: str
    svg: str


def _log_axis(ax, which: str, base: float) -> None:
    """Log scale with plain-number labels on major ticks only (cheap to draw, easy to read).

    Base 2 suits ratios (1/2, 1/4, ...); base 10 (ticks at 1, 2, 5 x 10^k) suits times.
    """
    getattr(ax, f"set_{which}scale")("log", base=base)
    axis = getattr(ax, f"{which}axis")
    subs = (1.0, 2.0, 5.0) if base == 10 else (1.0,)
    axis.set_major_locator(LogLocator(base=base, subs=subs, numticks=12))
    axis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    axis.set_minor_formatter(NullFormatter())


def _save(fig, out_dir: Path, stem: str) -> tuple[str, str]:
    png, svg = f"{stem}.png", f"{stem}.svg"
    fig.savefig(out_dir / png, dpi=DPI, bbox_inches="tight", metadata={"Software": None})
    fig.savefig(out_dir / svg, bbox_inches="tight", metadata={"Date": None, "Creator": None})
    plt.close(fig)
    return png, svg


def _xerr(g: pd.DataFrame, x: str) -> np.ndarray | None:
    """Horizontal error bars of a latency axis: the paired interval when the points carry
    one (`<x>_lo`/`<x>_hi`), else the interquartile range (`<x>` with p25/p75 columns)."""
    lo_col, hi_col = x.replace("_ms", "_p25_ms"), x.replace("_ms", "_p75_ms")
    if lo_col == x or lo_col not in g or not g[lo_col].notna().any():
        return None
    lo = (g[x] - g[lo_col]).clip(lower=0).fillna(0.0)
    hi = (g[hi_col] - g[x]).clip(lower=0).fillna(0.0)
    return np.vstack([lo.to_numpy(float), hi.to_numpy(float)])


def accuracy_vs(points: pd.DataFrame, x: str, xlabel: str, title: str, colors: dict,
                out_dir: Path, stem: str, log_base: float = 2) -> tuple[str, str]:
    """Top-1 against a cost column, one style per method, dense starred, front dashed.

    `points` has one row per (method, target) with columns method, ref (the reference row),
    top1, top1_std, over_budget and the cost column `x`; rows missing `x`
    are skipped. A method's points are joined in order of x (no zig-zag);
    error bars are the std over seeds (y) and the IQR of the timed runs (x,
    latency axes); over-budget points are ringed in red.
    """
    sub = points[points[x].notna() & points.top1.notna() & (points[x] > 0)]
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for method in _ordered(sub.method, colors):
        g = sub[sub.method == method].sort_values(x)
        color, marker = method_style(method)
        if bool(g.ref.all()):
            ax.scatter(g[x], 100 * g.top1, marker="*", s=220, color="black", zorder=6,
                       label=f"{_text(method)} (reference)")
            continue
        yerr = 100 * g.top1_std.fillna(0.0) if g.top1_std.notna().any() else None
        ax.errorbar(g[x], 100 * g.top1, yerr=yerr, xerr=_xerr(g, x), marker=marker, ms=5,
                    lw=1.6, capsize=3, color=color, label=_text(method), zorder=4)
        over = g[g.over_budget.astype(bool)]
        if len(over):
            ax.scatter(over[x], 100 * over.top1, s=130, facecolors="none",
                       edgecolors="#cf222e", linewidths=1.8, zorder=7)
    if "over_budget" in sub and sub.over_budget.astype(bool).any():
        ax.scatter([], [], s=130, facecolors="none", edgecolors="#cf222e", linewidths=1.8,
                   label="over budget")
    within = sub[~sub.over_budget.astype(bool)] if "over_budget" in sub else sub
    if len(within):
        xs, ys = within[x].to_numpy(float), within.top1.to_numpy(float)
        flags, basis = _front(within, xs, ys)
        fx, fy = pareto_front(xs[flags], ys[flags])
        ax.step(fx, 100 * fy, where="post", ls="--", lw=1.2, color="0.35", zorder=3,
                label="Pareto front (by means, one seed)" if basis == "means"
                else "Pareto front")
        if basis != "means":  # every point no cheaper one beats beyond the seed intervals
            ax.scatter(xs[flags], 100 * ys[flags], s=170, facecolors="none",
                       edgecolors="0.35", linewidths=1.0, zorder=3,
                       label="on the front within seed intervals" if basis == "seeds"
                       else "on the front (one-seed rows by mean)")
    if len(sub):  # zoom on where the methods are, unless that hides an ordinary point
        ys = 100 * sub.top1
        top, q10, bottom = float(ys.max()), float(ys.quantile(0.1)), float(ys.min())
        spread = max(top - q10, 0.5)
        lo_y = bottom - 0.06 * max(top - bottom, 1.0)
        if q10 - bottom > 3 * spread:  # a collapsed outlier: cut the axis, keep an arrow
            lo_y = q10 - 0.5 * spread
        ax.set_ylim(lo_y, top + 0.08 * max(1.0, top - lo_y))
        for _, p in sub[ys < lo_y].iterrows():  # below the view: an arrow with its value
            ax.annotate(f"{100 * p.top1:.1f}", (p[x], lo_y), xytext=(0, 14),
                        textcoords="offset points", ha="center", fontsize=8,
                        color=method_style(p.method)[0],
                        arrowprops={"arrowstyle": "->", "color": method_style(p.method)[0]})
    _log_axis(ax, "x", log_base)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("top-1 test accuracy (%) ↑")
    ax.set_title(_text(title), fontsize=10)
    ax.grid(True, which="major", alpha=0.3)
    if len(sub):
        _legend(ax)
    return _save(fig, out_dir, stem)


def speedup_vs_theoretical(points: pd.DataFrame, batches: list[str], title: str, colors: dict,
                           out_dir: Path, stem: str) -> tuple[str, str]:
    """Measured CPU speedup against MACs speedup (1 / MACs ratio), with y = x.

    Points under the line are savings that did not turn into latency; one
    marker shape per batch size. `points` needs columns method, ref,
    macs_ratio and speedup_<batch> for each batch.
    """
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    markers = ["o", "s", "^", "D", "v"]
    lo, hi = 1.0, 1.0
    sub = points[~points.ref.astype(bool) & points.macs_ratio.notna() & (points.macs_ratio > 0)]
    for bi, b in enumerate(batches):
        col = f"speedup_{b}"
        if col not in sub:
            continue
        have = sub[sub[col].notna()]
        for method in _ordered(have.method, colors):
            g = have[have.method == method]
            theo = 1.0 / g.macs_ratio
            color = method_style(method)[0]
            lo_c, hi_c = f"{col}_lo", f"{col}_hi"
            if lo_c in g and g[lo_c].notna().any():  # paired interval of the speedup
                err = np.vstack([(g[col] - g[lo_c]).clip(lower=0).fillna(0).to_numpy(float),
                                 (g[hi_c] - g[col]).clip(lower=0).fillna(0).to_numpy(float)])
                ax.errorbar(theo, g[col], yerr=err, fmt="none", ecolor=color, capsize=2,
                            lw=1, zorder=3)
            ax.scatter(theo, g[col], marker=markers[bi % len(markers)], s=36,
                       color=color, zorder=4, label=_text(method) if bi == 0 else None)
            lo = min(lo, float(theo.min()), float(g[col].min()))
            hi = max(hi, float(theo.max()), float(g[col].max()))
    for bi, b in enumerate(batches):  # shape key: one grey marker per batch size
        ax.scatter([], [], marker=markers[bi % len(markers)], s=36, color="0.45",
                   label=f"batch {b[1:]}")
    span = np.array([lo / 1.3, hi * 1.3])
    ax.plot(span, span, ls="--", color="0.35", lw=1.2, label="y = x (ideal)", zorder=3)
    _log_axis(ax, "x", 2)
    _log_axis(ax, "y", 2)
    ax.set_xlabel("theoretical speedup: dense MACs / MACs ↑")
    ax.set_ylabel("measured CPU speedup (p50) ↑")
    ax.set_title(_text(title), fontsize=10)
    ax.grid(True, which="major", alpha=0.3)
    _legend(ax)
    return _save(fig, out_dir, stem)


RUNTIME_TITLES = {"eager": "eager PyTorch", "compile": "torch.compile (inductor)",
                  "onnxruntime": "onnxruntime (CPU)"}


def speedup_by_runtime(points: pd.DataFrame, runtimes: dict[str, list[str]], title: str,
                       colors: dict, out_dir: Path, stem: str) -> tuple[str, str]:
    """Measured paired CPU speedup against the MACs ratio, one panel per runtime.

    `runtimes` maps a runtime to its batch keys ("eager" -> speedup_<b>
    columns, any other -> speedup_<runtime>_<b>); one marker shape per batch
    size, the paired 95% interval as error bars, the dashed curve 1 / MACs
    ratio (what the MACs promise) and a line at 1 (no speedup). Panels share
    both axes, so a runtime that turns a saving into a slowdown stands out.
    """
    names = list(runtimes)
    fig, axes = plt.subplots(1, len(names), figsize=(3.6 * len(names) + 1.6, 3.9),
                             sharex=True, sharey=True, squeeze=False)
    markers = ["o", "s", "^", "D", "v"]
    sub = points[~points.ref.astype(bool) & points.macs_ratio.notna() & (points.macs_ratio > 0)]
    ylo, yhi, xlo = 1.0, 1.0, 1.0
    labelled: set[str] = set()
    for ax, rt in zip(axes[0], names):
        for bi, b in enumerate(runtimes[rt]):
            col = f"speedup_{b}" if rt == "eager" else f"speedup_{rt}_{b}"
            if col not in sub:
                continue
            have = sub[sub[col].notna() & (sub[col] > 0)]
            for method in _ordered(have.method, colors):
                g = have[have.method == method]
                color = method_style(method)[0]
                lo_c, hi_c = f"{col}_lo", f"{col}_hi"
                if lo_c in g and g[lo_c].notna().any():
                    err = np.vstack([(g[col] - g[lo_c]).clip(lower=0).fillna(0).to_numpy(float),
                                     (g[hi_c] - g[col]).clip(lower=0).fillna(0).to_numpy(float)])
                    ax.errorbar(g.macs_ratio, g[col], yerr=err, fmt="none", ecolor=color,
                                capsize=2, lw=1, zorder=3)
                label = _text(method) if method not in labelled else None
                labelled.add(method)
                ax.scatter(g.macs_ratio, g[col], marker=markers[bi % len(markers)], s=32,
                           color=color, zorder=4, label=label)
                ylo, yhi = min(ylo, float(g[col].min())), max(yhi, float(g[col].max()))
                xlo = min(xlo, float(g.macs_ratio.min()))
        ax.set_title(RUNTIME_TITLES.get(rt, rt), fontsize=9)
        ax.axhline(1.0, color="0.55", lw=0.9, zorder=2)
        ax.grid(True, which="major", alpha=0.3)
        ax.set_xlabel("MACs relative to dense ↓")
    xs = np.geomspace(xlo / 1.2, 1.2, 50)
    for ax in axes[0]:
        ax.plot(xs, 1.0 / xs, ls="--", color="0.35", lw=1.1, zorder=2,
                label="1 / MACs ratio (ideal)" if ax is axes[0][0] else None)
    ymin, ymax = min(ylo, 1.0 / 1.2) / 1.3, max(yhi, 1.0 / xlo) * 1.3
    first = axes[0][0]
    first.set_ylim(ymin, ymax)
    _log_axis(first, "x", 2)
    _log_axis(first, "y", 2)
    first.set_ylabel("measured paired speedup ↑")
    shapes = sorted({b for keys in runtimes.values() for b in keys}, key=lambda k: (len(k), k))
    for bi, b in enumerate(shapes):
        first.scatter([], [], marker=markers[bi % len(markers)], s=32, color="0.45",
                      label=f"batch {b[1:]}")
    fig.suptitle(_text(title), fontsize=10)
    _row_legend(axes[0])
    return _save(fig, out_dir, stem)


def group_plots(points: pd.DataFrame, batches: list[str], title: str, colors: dict,
                out_dir: Path, stem: str, cuda_batches: list[str] | None = None,
                runtime_batches: dict[str, list[str]] | None = None) -> list[Plot]:
    """The plots of one model x dataset (a GPU one where measured, one of the speedup under
    each deployment runtime where more than eager was timed); names start with the kind.
    None without a measured point: an empty frame would read as a result."""
    plots: list[Plot] = []
    if points.empty:
        return plots
    png, svg = accuracy_vs(points, "macs_ratio", "MACs relative to dense (log scale) ↓",
                           f"accuracy vs MACs: {title}", colors, out_dir,
                           f"acc-vs-macs-{stem}")
    plots.append(Plot("macs", "accuracy vs MACs", png, svg))
    png, svg = accuracy_vs(points, "params_ratio", "parameters relative to dense (log scale) ↓",
                           f"accuracy vs parameters: {title}", colors, out_dir,
                           f"acc-vs-params-{stem}")
    plots.append(Plot("params", "accuracy vs parameters", png, svg))
    def latency_plot(device: str, label: str, kind: str, file_kind: str, b: str) -> None:
        png, svg = accuracy_vs(points, f"{device}_{b}_ms",
                               f"measured {label} latency, batch {b[1:]}, p50 (ms, log) ↓",
                               f"accuracy vs {label} latency: {title}", colors, out_dir,
                               f"{file_kind}-{stem}", log_base=10)
        plots.append(Plot(kind, f"accuracy vs measured {label} latency (batch {b[1:]})",
                          png, svg))

    if batches and points[f"cpu_{batches[0]}_ms"].notna().any():
        latency_plot("cpu", "CPU", "latency", "acc-vs-latency", batches[0])
        png, svg = speedup_vs_theoretical(points, batches, f"speedup: {title}", colors,
                                          out_dir, f"speedup-{stem}")
        plots.append(Plot("speedup", "measured vs theoretical speedup", png, svg))
    runtimes = {rt: keys for rt, keys in (runtime_batches or {}).items()
                if any(f"speedup_{rt}_{b}" in points and points[f"speedup_{rt}_{b}"].notna().any()
                       for b in keys)}
    if runtimes and batches:
        png, svg = speedup_by_runtime(points, {"eager": batches, **runtimes},
                                      f"speedup by runtime: {title}", colors, out_dir,
                                      f"speedup-runtimes-{stem}")
        plots.append(Plot("speedup-runtimes", "measured speedup vs MACs, per runtime",
                          png, svg))
    if cuda_batches and points[f"cuda_{cuda_batches[0]}_ms"].notna().any():
        latency_plot("cuda", "GPU", "gpu-latency", "acc-vs-gpu-latency", cuda_batches[0])
    return plots


def accuracy_vs_runtime(points: pd.DataFrame, runtime: str, batch: str, title: str,
                        colors: dict, out_dir: Path, stem: str) -> Plot:
    """Top-1 against the end-to-end latency under one deployment runtime (accuracy_vs).

    `points` carries `e2e_ms`: the dense model's eager p50 divided by each row's paired
    speedup over dense in eager (bench.report.runtime_speed), and its 95% interval in
    `e2e_p25_ms`/`e2e_p75_ms`, which accuracy_vs draws as x error bars.
    """
    name = RUNTIME_TITLES.get(runtime, runtime)
    png, svg = accuracy_vs(points, "e2e_ms",
                           f"latency under {name}, batch {batch[1:]}: dense eager p50 / "
                           "speedup over it (ms, log) ↓",
                           f"accuracy vs latency under {name}: {title}", colors, out_dir,
                           f"acc-vs-runtime-latency-{slug(runtime)}-{stem}", log_base=10)
    return Plot(f"runtime-latency-{runtime}",
                f"accuracy vs end-to-end latency under {name} (batch {batch[1:]})", png, svg)
