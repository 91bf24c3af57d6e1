"""The cell record as a typed, versioned object, and the one table of metrics.

A record is what one cell of a suite leaves behind (``results/<suite>/cells/
<cell-id>.json``). `Record` types it: the cell's configuration, its status
(ok, failed, not_applicable), the measured ``metrics``, the ``cost`` in
seconds, the training-budget ``ledger``, the environment and the method's own
facts. It is lenient where the harness keeps growing (nested metric dicts and
unknown top-level fields are kept as they are), strict where a misread would
mislead (status, version).

`METRICS` is the single list of what the reports show: each entry says where
its value lives in a record (a dotted path), how to print it and which way is
better, and whether it is a leaderboard column and a column of the tidy CSV.
Adding a metric to every table is one entry here plus its measurement.

Versions: 1 is the untyped record written before this module (no
``schema_version``; a ``schema: 1`` key at most); `load_record` upgrades it.
2 is this one. Anything else is rejected with the file's name.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

SCHEMA_VERSION = 2
SUPPORTED_VERSIONS = (1, 2)
Status = Literal["ok", "failed", "not_applicable"]


class RecordError(ValueError):
    """A record that cannot be read as any supported version; the message names the file."""


class _Open(BaseModel):
    """Keeps fields this version does not name (newer measurements) instead of dropping them."""

    model_config = ConfigDict(extra="allow")


class ErrorInfo(_Open):
    type: str = "Error"
    message: str = ""
    traceback: str = ""


class Cost(_Open):
    """Wall seconds per stage of a cell. Open: suites with recovery budgets add
    ``tune_s`` (the row's recovery-lr choice, every lr of the grid), and newer records
    ``trained_here_s`` (the part of ``cell_s`` spent on trainings this cell did rather
    than loaded)."""

    baseline_train_s: float | None = None
    method_train_s: float | None = None
    compress_s: float | None = None
    finetune_s: float | None = None
    eval_s: float | None = None
    measure_s: float | None = None
    cell_s: float | None = None

    @property
    def total_s(self) -> float | None:
        """Training + method training + compression + fine-tuning: what a method costs."""
        parts = [self.baseline_train_s, self.method_train_s, self.compress_s, self.finetune_s]
        present = [p for p in parts if p is not None]
        return float(sum(present)) if present else None


class LedgerPhase(_Open):
    phase: str
    epochs: float | None = None
    steps: int | None = None
    optimizer: dict[str, Any] = Field(default_factory=dict)


class Ledger(_Open):
    """The training budget a cell spent, phase by phase, against the suite's budget."""

    phases: list[LedgerPhase] = Field(default_factory=list)
    total_steps: int | None = None
    budget_steps: int | None = None
    violation: str | None = None


class Record(_Open):
    """One cell's record (schema version 2)."""

    schema_version: Literal[2] = SCHEMA_VERSION
    # configuration: which cell this is
    suite: str
    suite_hash: str | None = None
    cell_id: str
    model: str
    dataset: str
    seed: int = 0
    method: str = Field(description="the method's label in the suite (grid values included)")
    method_name: str = Field(description="the registered method name")
    params: dict[str, Any] = Field(default_factory=dict)
    target: dict[str, float] | None = None
    target_label: str = "dense"
    # outcome
    status: Status
    metrics: dict[str, Any] = Field(default_factory=dict)
    cost: Cost = Field(default_factory=Cost)
    ledger: Ledger | None = None
    env: dict[str, Any] = Field(default_factory=dict)
    method_info: dict[str, Any] = Field(default_factory=dict)
    error: ErrorInfo | None = None
    reason: str | None = None
    created: str | None = None

    @property
    def target_metric(self) -> str | None:
        return next(iter(self.target)) if self.target and len(self.target) == 1 else None

    @property
    def target_ratio(self) -> float | None:
        return float(next(iter(self.target.values()))) if self.target_metric else None

    def get(self, path: str) -> Any:
        """The value at a dotted path ('metrics.latency.cpu.b1.median_ms'), or None."""
        return get_path(self, path)

    def to_json(self) -> dict[str, Any]:
        return self.model_dump(mode="json")


def get_path(obj: Any, path: str) -> Any:
    """Walk a dotted path through models (attributes, properties, extra fields) and dicts."""
    for part in path.split("."):
        if obj is None:
            return None
        if isinstance(obj, dict):
            obj = obj.get(part)
        elif isinstance(obj, BaseModel):
            extra = obj.model_extra or {}
            obj = extra[part] if part in extra else getattr(obj, part, None)
        else:
            return None
    return obj


# -- reading -------------------------------------------------------------------
def record_version(raw: dict) -> int:
    """2 for a typed record, 1 for the untyped ones before it."""
    if "schema_version" in raw:
        return raw["schema_version"]
    return raw.get("schema", 1)


def upgrade_v1(raw: dict) -> dict:
    """Version 1 -> 2: same fields, now named and typed; a missing status means ok."""
    out = {k: v for k, v in raw.items() if k != "schema"}
    out["schema_version"] = SCHEMA_VERSION
    out.setdefault("status", "ok" if isinstance(raw.get("metrics"), dict) else "failed")
    out.setdefault("method_name", raw.get("method"))
    out.setdefault("target_label", "dense" if raw.get("target") is None else
                   "_".join(f"{k}<={v:g}" for k, v in raw["target"].items()))
    for key in ("metrics", "cost", "env", "method_info"):
        if out.get(key) is None:
            out.pop(key, None)
    return out


def load_record(source: str | Path | dict, name: str | None = None) -> Record:
    """A `Record` from a JSON file or an already parsed dict, upgrading version 1.

    Raises RecordError naming the file (or `name`) for unknown versions and
    for content that is not a record.
    """
    where = name or "record"
    if isinstance(source, dict):
        raw = source
    else:
        where = name or str(source)
        try:
            raw = json.loads(Path(source).read_text())
        except (OSError, json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise RecordError(f"{where}: not a readable JSON record ({exc})") from None
    if not isinstance(raw, dict):
        raise RecordError(f"{where}: a record is a JSON object, got {type(raw).__name__}")
    version = record_version(raw)
    if version not in SUPPORTED_VERSIONS:
        raise RecordError(
            f"{where}: record schema_version {version!r} is not supported; this lowrank-bench "
            f"reads versions {', '.join(map(str, SUPPORTED_VERSIONS))} (upgrade lowrank-bench, "
            "or rerun the cell)")
    if version == 1:
        raw = upgrade_v1(raw)
    try:
        return Record.model_validate(raw)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or '(top)'}: {e['msg']}"
                             for e in exc.errors())
        raise RecordError(f"{where}: invalid record (version {version}): {problems}") from None


def load_records(results_dir: str | Path) -> list[Record]:
    """Every record under results_dir/cells, sorted by cell id.

    A file that does not parse is a cell whose write never finished: it is
    skipped, as the runner treats it as not run. A parsed file of an unknown
    version raises RecordError: it must never be silently misread.
    """
    out = []
    for path in sorted((Path(results_dir) / "cells").glob("*.json")):
        try:
            raw = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError, UnicodeDecodeError):
            continue
        out.append(load_record(raw, name=str(path)))
    return out


# -- the metric table ----------------------------------------------------------
@dataclass(frozen=True)
class Metric:
    """One measured quantity: where it lives in a record and how reports show it.

    `path` is a dotted path into the record; with `per_batch` set to a device
    ('cpu', 'cuda') or a CPU deployment runtime ('compile', 'onnxruntime') it
    holds a `{b}` placeholder and the metric expands into one column per batch
    key measured there (b1, b64, ...): no column where nothing was measured.
    """

    name: str
    label: str
    path: str
    unit: str = ""
    fmt: str = ".3f"  # a format spec, or "ms" (precision by magnitude)
    direction: Literal["higher", "lower"] | None = None
    csv: bool = True
    leaderboard: bool = False
    per_batch: Literal["cpu", "cuda", "compile", "onnxruntime"] | None = None
    agg: Literal["mean", "median"] = "mean"
    description: str = ""
    optional: bool = False  # a CSV column only when some record holds a value
    # an absolute time taken on one machine: comparable only between records of that machine
    machine_bound: bool = False

    def names(self, batches: dict[str, list[str]]) -> list[tuple[str, str, str]]:
        """(column name, path, batch key or '') for each expansion of this metric."""
        if not self.per_batch:
            return [(self.name, self.path, "")]
        return [(self.name.format(b=b), self.path.format(b=b), b)
                for b in batches.get(self.per_batch, [])]

    def heading(self, batch: str = "") -> str:
        arrow = {"higher": " ↑", "lower": " ↓"}.get(self.direction or "", "")
        unit = f" {self.unit}" if self.unit else ""
        where = f" (batch {batch[1:]})" if batch else ""
        return f"{self.label}{unit}{arrow}{where}"

    def format(self, value: Any) -> str:
        if value is None or (isinstance(value, float) and math.isnan(value)):
            return "n/a"
        if isinstance(value, bool):
            return "yes" if value else "no"
        if self.fmt.endswith("d") and isinstance(value, float) and value.is_integer():
            value = int(value)  # counts come back as floats from tables
        if self.fmt == "ms":
            return format(value, ".3f" if value < 1 else ".2f" if value < 100 else ".0f")
        try:
            return format(value, self.fmt)
        except (TypeError, ValueError):
            return str(value)


LAT = "metrics.latency.{dev}.{{b}}"
PAIRED = "metrics.latency_paired.cpu.{b}.speedup"
RUNTIME_PAIRED = "metrics.latency_paired_runtimes.{rt}.{{b}}.speedup"
# deployment runtimes timed beside eager (bench.measure.runtimes): name, short label
RUNTIME_LABELS = {"compile": "compile", "onnxruntime": "ORT"}


def _runtime_metrics(rt: str, label: str) -> list[Metric]:
    """The paired speedup under one runtime, one column per batch (like eager's), and the
    runtime's state ('measured', 'not exportable', ...) with its error."""
    path = RUNTIME_PAIRED.format(rt=rt)
    return [
        Metric(f"speedup_{rt}_{{b}}", f"speedup {label}", path + ".median", "×", ".2f",
               "higher", leaderboard=True, per_batch=rt, agg="median",
               description=f"reference time / time, both under {rt}, paired rounds"),
        Metric(f"speedup_{rt}_{{b}}_lo", f"speedup {label} CI low", path + ".ci_low", "×",
               ".2f", "higher", per_batch=rt, agg="median"),
        Metric(f"speedup_{rt}_{{b}}_hi", f"speedup {label} CI high", path + ".ci_high", "×",
               ".2f", "higher", per_batch=rt, agg="median"),
        Metric(f"speedup_{rt}_{{b}}_noisy", f"speedup {label} noisy", path + ".noisy", "", "",
               csv=False, per_batch=rt),
    ]


def _runtime_states() -> list[Metric]:
    return [m for rt in RUNTIME_LABELS for m in (
        Metric(f"runtime_{rt}_state", f"{rt} state", f"metrics.runtime_info.{rt}.state", "",
               "", description=f"measured, or why {rt} could not run the model",
               optional=True),
        Metric(f"runtime_{rt}_error", f"{rt} error", f"metrics.runtime_info.{rt}.error", "",
               "", csv=False, optional=True))]


METRICS: list[Metric] = [
    Metric("top1", "top-1", "metrics.top1", "%", ".4f", "higher",
           description="test top-1 accuracy (fraction)"),
    Metric("top5", "top-5", "metrics.top5", "%", ".4f", "higher"),
    Metric("val_top1", "val top-1", "metrics.val_top1", "%", ".4f", "higher"),
    Metric("test_loss", "test loss", "metrics.test_loss", "", ".4f", "lower"),
    Metric("test_n", "test samples", "metrics.test_n", "", "d", csv=False),
    Metric("params", "params", "metrics.params", "", ",d", "lower"),
    Metric("params_ratio", "params", "metrics.params_ratio", "×dense", ".3f", "lower",
           leaderboard=True, description="achieved parameter ratio"),
    Metric("macs", "MACs", "metrics.macs", "", ",d", "lower"),
    Metric("macs_ratio", "MACs", "metrics.macs_ratio", "×dense", ".3f", "lower",
           leaderboard=True, description="achieved MACs ratio; ⚠ over the budget"),
    Metric("size_bytes", "size", "metrics.size_bytes", "bytes", ",d", "lower"),
    Metric("budget_met", "budget met", "metrics.budget.met", "", ""),
    Metric("budget_over_by", "over budget by", "metrics.budget.over_by", "", ".3f", "lower"),
    Metric("cpu_{b}_ms", "CPU p50", LAT.format(dev="cpu") + ".median_ms", "ms", "ms", "lower",
           leaderboard=True, per_batch="cpu", agg="median", machine_bound=True,
           description="median of timed runs on the CPU"),
    Metric("cpu_{b}_p25_ms", "CPU p25", LAT.format(dev="cpu") + ".p25_ms", "ms", "ms", "lower",
           csv=False, per_batch="cpu", agg="median", machine_bound=True),
    Metric("cpu_{b}_p75_ms", "CPU p75", LAT.format(dev="cpu") + ".p75_ms", "ms", "ms", "lower",
           csv=False, per_batch="cpu", agg="median", machine_bound=True),
    Metric("cpu_{b}_p90_ms", "CPU p90", LAT.format(dev="cpu") + ".p90_ms", "ms", "ms", "lower",
           csv=False, per_batch="cpu", agg="median", machine_bound=True),
    Metric("cpu_{b}_iqr_ms", "CPU IQR", LAT.format(dev="cpu") + ".iqr_ms", "ms", "ms", "lower",
           csv=False, per_batch="cpu", agg="median", machine_bound=True),
    Metric("speedup_{b}", "speedup", PAIRED + ".median", "×", ".2f", "higher",
           leaderboard=True, per_batch="cpu", agg="median",
           description="reference time / time, paired rounds (else reference p50 / p50)"),
    Metric("speedup_{b}_lo", "speedup CI low", PAIRED + ".ci_low", "×", ".2f", "higher",
           per_batch="cpu", agg="median"),
    Metric("speedup_{b}_hi", "speedup CI high", PAIRED + ".ci_high", "×", ".2f", "higher",
           per_batch="cpu", agg="median"),
    Metric("speedup_{b}_noisy", "speedup noisy", PAIRED + ".noisy", "", "", csv=False,
           per_batch="cpu"),
    *[m for rt, label in RUNTIME_LABELS.items() for m in _runtime_metrics(rt, label)],
    *_runtime_states(),
    Metric("cuda_{b}_ms", "GPU p50", LAT.format(dev="cuda") + ".median_ms", "ms", "ms", "lower",
           leaderboard=True, per_batch="cuda", agg="median", machine_bound=True,
           description="CUDA events"),
    Metric("total_steps", "train steps", "ledger.total_steps", "", ",d",
           leaderboard=True, description="optimizer steps over every training phase"),
    Metric("ledger_violation", "budget violation", "ledger.violation", "", ""),
    Metric("cost_s", "cost", "cost.total_s", "s", ".1f", "lower", leaderboard=True,
           machine_bound=True,
           description="training + method training + compression + fine-tuning, wall s"),
]

def machine_label(env: dict[str, Any]) -> str:
    """The machine a record was measured on, as far as its timings depend on it: CPU model,
    the instruction set torch dispatches to, cores, and the GPU where there is one."""
    cpu = env.get("cpu") or "unknown CPU"
    extra = [str(env["cpu_capability"])] if env.get("cpu_capability") else []
    cores = env.get("cpu_cores_available") or env.get("cpu_count")
    if cores:
        extra.append(f"{cores} cores")
    label = f"{cpu} ({', '.join(extra)})" if extra else str(cpu)
    return f"{label}, {env['gpu']}" if env.get("gpu") else label


_BATCH = re.compile(r"b(\d+)")


def batch_key(key: str) -> tuple[int, str]:
    m = _BATCH.fullmatch(key)
    return (int(m.group(1)) if m else 10**9, key)


def measured_batches(records: list[Record]) -> dict[str, list[str]]:
    """Per device, the batch keys (b1, b64, ...) with a latency in some record, smallest first;
    per deployment runtime, the batch keys it was timed at (or, where it could not take the
    model, the CPU batch keys, so that its state has a column to show in)."""
    out: dict[str, set[str]] = {"cpu": set(), "cuda": set(),
                                **{rt: set() for rt in RUNTIME_LABELS}}
    for r in records:
        lat = r.metrics.get("latency") or {}
        for dev in out:
            for key, summary in (lat.get(dev) or {}).items():
                if isinstance(summary, dict) and summary.get("median_ms") is not None:
                    out[dev].add(key)
        for key in ((r.metrics.get("latency_paired") or {}).get("cpu") or {}):
            out["cpu"].add(key)
        timed = r.metrics.get("latency_paired_runtimes") or {}
        for rt, info in (r.metrics.get("runtime_info") or {}).items():
            if rt not in out or not isinstance(info, dict):
                continue
            keys = timed.get(rt) or ((r.metrics.get("latency_paired") or {}).get("cpu") or {})
            out[rt].update(k for k in keys if _BATCH.fullmatch(k))
        for rt, entries in timed.items():
            if rt in out and isinstance(entries, dict):
                out[rt].update(k for k in entries if _BATCH.fullmatch(k))
    return {dev: sorted(keys, key=batch_key) for dev, keys in out.items()}


def metric_columns(batches: dict[str, list[str]], where: str | None = None
                   ) -> list[tuple[Metric, str, str, str]]:
    """(metric, column, path, batch) for every expansion; `where`: 'csv' or 'leaderboard'."""
    out = []
    for m in METRICS:
        if where and not getattr(m, where):
            continue
        out += [(m, col, path, b) for col, path, b in m.names(batches)]
    return out


def metric(name: str) -> Metric:
    """The table entry whose (unexpanded) name is `name`."""
    for m in METRICS:
        if m.name == name:
            return m
    raise KeyError(f"no metric named {name!r}; known: {', '.join(m.name for m in METRICS)}")
