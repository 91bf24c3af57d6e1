"""Records -> a flat pandas table, one row per cell."""

from __future__ import annotations

import pandas as pd


def flatten(records: list[dict]) -> pd.DataFrame:
    rows = []
    for r in records:
        m = r.get("metrics", {}) or {}
        lat = (m.get("latency") or {}).get("cpu") or {}
        cuda = (m.get("latency") or {}).get("cuda") or {}
        row = {
            "cell_id": r["cell_id"], "status": r["status"], "model": r["model"],
            "dataset": r["dataset"], "seed": r["seed"], "method": r["method"],
            "method_name": r.get("method_name"), "target": r.get("target_label"),
            "top1": m.get("top1"), "top5": m.get("top5"), "val_top1": m.get("val_top1"),
            "params": m.get("params"), "params_ratio": m.get("params_ratio"),
            "macs": m.get("macs"), "macs_ratio": m.get("macs_ratio"),
            "budget_met": (m.get("budget") or {}).get("met"),
            "error": (r.get("error") or {}).get("message"),
            "error_type": (r.get("error") or {}).get("type"),
        }
        for key, summary in lat.items():
            row[f"cpu_{key}_ms"] = summary.get("median_ms")
            row[f"cpu_{key}_p90_ms"] = summary.get("p90_ms")
        for key, summary in cuda.items():
            row[f"cuda_{key}_ms"] = summary.get("median_ms")
        cost = r.get("cost") or {}
        row["cost_s"] = sum(cost.get(k, 0.0) for k in
                            ("baseline_train_s", "method_train_s", "compress_s", "finetune_s"))
        rows.append(row)
    return pd.DataFrame(rows)
