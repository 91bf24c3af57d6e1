"""Matplotlib plots of a suite's results."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402


def slug(text: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in text).strip("-").lower()


def accuracy_vs_macs(df: pd.DataFrame, model: str, dataset: str, out_dir: Path) -> Path:
    """Accuracy against achieved MACs ratio, one colour per method, dense marked."""
    sub = df[(df.model == model) & (df.dataset == dataset) & (df.status == "ok")]
    fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
    for method, g in sub.groupby("method"):
        g = g.groupby("target", as_index=False)[["macs_ratio", "top1"]].mean()
        g = g.sort_values("macs_ratio")
        if len(g) == 1 and abs(g.macs_ratio.iloc[0] - 1.0) < 1e-9:
            ax.scatter(g.macs_ratio, 100 * g.top1, marker="*", s=160, color="black",
                       zorder=5, label=method)
        else:
            ax.plot(g.macs_ratio, 100 * g.top1, marker="o", label=method)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("MACs relative to dense (log scale)")
    ax.set_ylabel("top-1 test accuracy (%)")
    ax.set_title(f"{model} on {dataset}")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path = out_dir / f"acc-vs-macs-{slug(model)}-{slug(dataset)}.png"
    fig.savefig(path)
    plt.close(fig)
    return path
