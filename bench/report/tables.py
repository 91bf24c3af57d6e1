"""Records -> tables: the report's view, the tidy CSV and the long-format export.

All three are driven by `bench.record.METRICS`: a metric added there is a
column of the view (and of the CSV when its entry says so) and a row of the
long format, with no change here. A missing value is NaN (shown as n/a).
"""

from __future__ import annotations

import json
import math
from typing import Any

import pandas as pd

from bench.record import Record, machine_label, measured_batches, metric_columns

CONFIG_COLUMNS = ("cell_id", "state", "status", "suite", "model", "dataset", "seed", "method",
                  "method_name", "kind", "target", "target_metric", "target_ratio",
                  "recovery_epochs", "recovery_lr")
# config columns of an optional axis: in the CSV only when some record has them
AXIS_COLUMNS = ("recovery_epochs", "recovery_lr")
CSV_TAIL = ("error_type", "error", "reason", "created", "suite_hash", "machine")


def flatten_record(record: dict, prefix: str = "", sep: str = ".") -> dict[str, Any]:
    """Every leaf of a (record) dict under a dotted key; lists become JSON text."""
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


def _num(v: Any) -> Any:
    """Numbers as float, booleans and text kept, anything else NaN."""
    if v is None:
        return math.nan
    if isinstance(v, (bool, str)):
        return v
    try:
        return float(v)
    except (TypeError, ValueError):
        return math.nan


def config_row(r: Record, kinds: dict[str, str] | None = None) -> dict[str, Any]:
    state = r.status
    over = (r.metrics.get("budget") or {}).get("met") is False
    if state == "ok" and over:
        state = "over budget"
    return {
        "cell_id": r.cell_id, "state": state, "status": r.status, "suite": r.suite,
        "model": r.model, "dataset": r.dataset, "seed": r.seed, "method": r.method,
        "method_name": r.method_name, "kind": (kinds or {}).get(r.method_name, ""),
        "target": r.target_label, "target_metric": r.target_metric,
        "target_ratio": math.nan if r.target_ratio is None else r.target_ratio,
        "error_type": r.error.type if r.error else None,
        "error": r.error.message if r.error else None, "reason": r.reason,
        "created": r.created, "suite_hash": r.suite_hash, "machine": machine_label(r.env),
        "recovery_epochs": _num(r.get("recovery.epochs")),
        "recovery_lr": _num(r.get("ledger.tuning.chosen_lr")),
    }


def record_view(records: list[Record], kinds: dict[str, str] | None = None,
                batches: dict[str, list[str]] | None = None) -> pd.DataFrame:
    """One row per record: configuration and state, then every METRICS column."""
    batches = batches if batches is not None else measured_batches(records)
    cols = metric_columns(batches)
    rows = []
    for r in records:
        row = config_row(r, kinds)
        for _, col, path, _ in cols:
            row[col] = _num(r.get(path))
        rows.append(row)
    df = pd.DataFrame(rows, columns=[*CONFIG_COLUMNS, *CSV_TAIL, *(c[1] for c in cols)])
    return df


def tidy_table(view: pd.DataFrame, batches: dict[str, list[str]]) -> pd.DataFrame:
    """The CSV a reader loads: one row per cell, the CSV metrics of the table, config first
    (`state` says ok, over budget, failed or not_applicable; dates live in the records)."""
    metric_cols = [col for m, col, _, _ in metric_columns(batches, "csv") if col in view
                   and not (m.optional and view[col].isna().all())]
    cols = [c for c in CONFIG_COLUMNS if c in view and c != "status"
            and not (c in AXIS_COLUMNS and view[c].isna().all())] + metric_cols + \
        [c for c in CSV_TAIL if c in view and c != "created"]
    return view[cols]


def long_table(records: list[Record], batches: dict[str, list[str]]) -> pd.DataFrame:
    """(cell_id, metric, value): every table metric by name, then every leaf of metrics,
    cost and ledger by its dotted path, so nothing a record measured is lost."""
    rows = []
    cols = metric_columns(batches)
    for r in sorted(records, key=lambda r: r.cell_id):
        for _, col, path, _ in cols:
            v = r.get(path)
            if v is not None:
                rows.append((r.cell_id, col, v))
        leaves = flatten_record({"metrics": r.metrics, "cost": r.cost.model_dump(),
                                 "ledger": r.ledger.model_dump() if r.ledger else {}})
        for key, v in leaves.items():
            if v is not None:
                rows.append((r.cell_id, key, v))
    return pd.DataFrame(rows, columns=["cell_id", "metric", "value"])
