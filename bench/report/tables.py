"""Records -> flat tables: every field for export, and the columns the report ranks on.

Records grow as the harness learns to measure more, so nothing here assumes
a key exists: a missing metric becomes NaN (shown as n/a), an unknown one
still reaches results.csv/json through `flatten_record`.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

import pandas as pd

COST_KEYS = ("baseline_train_s", "method_train_s", "compress_s", "finetune_s")
# Scalar metrics copied under their own name when present (new ones welcome).
SCALAR_METRICS = ("top1", "top5", "val_top1", "test_loss", "params", "params_ratio", "macs",
                  "macs_ratio", "flops", "dense_params", "dense_macs", "macs_fvcore",
                  "size_bytes", "test_n")


def flatten_record(record: dict, prefix: str = "", sep: str = ".") -> dict[str, Any]:
    """Every leaf of a record under a dotted key; lists become JSON text."""
    out: dict[str, Any] = {}
    for key, value in record.items():
        name = f"{prefix}{sep}{key}" if prefix else str(key)
        if isinstance(value, dict):
            if value:
                out.update(flatten_record(value, name, sep))
            else:
                out[name] = None
        elif isinstance(value, (list, tuple)):
            out[name] = json.dumps(value, default=str)
        else:
            out[name] = value
    return out


def flatten_all(records: list[dict]) -> pd.DataFrame:
    """One row per record, one column per leaf field (union over records)."""
    rows = [flatten_record(r) for r in records]
    df = pd.DataFrame(rows)
    first = [c for c in ("cell_id", "status", "suite", "model", "dataset", "seed", "method",
                         "method_name", "target_label") if c in df.columns]
    return df[first + sorted(c for c in df.columns if c not in first)]


def _num(v: Any) -> float:
    if isinstance(v, bool) or v is None:
        return math.nan
    try:
        return float(v)
    except (TypeError, ValueError):
        return math.nan


def batch_sort_key(key: str) -> tuple[int, str]:
    m = re.fullmatch(r"b(\d+)", key)
    return (int(m.group(1)) if m else 10**9, key)


def flatten(records: list[dict]) -> pd.DataFrame:
    """The report's view: one row per cell with the columns leaderboards use."""
    rows = []
    for r in records:
        m = r.get("metrics") or {}
        lat = m.get("latency") or {}
        cpu = lat.get("cpu") or {}
        cuda = lat.get("cuda") or {}
        budget = m.get("budget") or {}
        err = r.get("error") or {}
        target = r.get("target") if isinstance(r.get("target"), dict) else None
        metric, ratio = (next(iter(target.items())) if target and len(target) == 1
                         else (None, math.nan))
        row: dict[str, Any] = {
            "cell_id": r.get("cell_id"), "status": r.get("status", "unknown"),
            "model": str(r.get("model", "?")), "dataset": str(r.get("dataset", "?")),
            "seed": r.get("seed", 0), "method": str(r.get("method", "?")),
            "method_name": r.get("method_name") or r.get("method"),
            "target": r.get("target_label") or "dense", "target_metric": metric,
            "target_ratio": _num(ratio), "created": r.get("created"),
            "suite_hash": r.get("suite_hash"),
            "budget_met": budget.get("met"), "budget_over_by": _num(budget.get("over_by")),
            "error": err.get("message"), "error_type": err.get("type"),
            "reason": r.get("reason"),
        }
        for key in SCALAR_METRICS:
            row[key] = _num(m.get(key))
        for key, summary in cpu.items():
            if isinstance(summary, dict):
                row[f"cpu_{key}_ms"] = _num(summary.get("median_ms"))
                row[f"cpu_{key}_p90_ms"] = _num(summary.get("p90_ms"))
                row[f"cpu_{key}_iqr_ms"] = _num(summary.get("iqr_ms"))
        for key, summary in cuda.items():
            if isinstance(summary, dict):
                row[f"cuda_{key}_ms"] = _num(summary.get("median_ms"))
        cost = r.get("cost") or {}
        parts = [_num(cost.get(k)) for k in COST_KEYS]
        row["cost_s"] = (sum(p for p in parts if not math.isnan(p))
                         if any(not math.isnan(p) for p in parts) else math.nan)
        rows.append(row)
    df = pd.DataFrame(rows)
    if df.empty:
        return df
    return df


def latency_batches(df: pd.DataFrame, device: str = "cpu") -> list[str]:
    """Batch keys (b1, b64, ...) with a measured median on `device`, smallest first."""
    keys = [c[len(device) + 1:-3] for c in df.columns
            if c.startswith(f"{device}_") and c.endswith("_ms")
            and not c.endswith(("_p90_ms", "_iqr_ms")) and df[c].notna().any()]
    return sorted(keys, key=batch_sort_key)
