"""Speedups by deployment runtime, read from records: what a deployer would see.

Every published speedup column compares a model with the dense model in the
same runtime. A deployer also needs how fast the dense model itself is under
each runtime, since onnxruntime alone can be several times faster than eager
at batch 1. Three paired figures per runtime ``rt`` and batch size, all with
their 95% intervals:

- ``s_rt``: the method against dense, both under ``rt``
  (``metrics.latency_paired_runtimes.<rt>.b<N>.speedup``; for eager
  ``metrics.latency_paired.cpu.b<N>.speedup``);
- ``d_rt``: the dense model under ``rt`` against the dense model in eager (the
  dense record's ``metrics.runtime_vs_eager.<rt>.b<N>.speedup``; eager: 1);
- end to end: ``s_rt x d_rt``, the method under ``rt`` against dense in
  eager. Its interval combines the two log-ratio half-widths in quadrature,
  each side on its own: ``exp(log(s d) -+ sqrt(h_s^2 + h_d^2))``, which treats
  the two timings as independent (they are: separate paired runs).

Seeds aggregate like the leaderboard's speedup columns: the median over seeds
of the median, of the low and of the high end. The dense record's own paired
entry under a runtime (a deep copy against itself) is that runtime's A/A
check: on an idle machine it reads 1.00 within ``AA_TOLERANCE`` with an
interval covering 1.0; anything else is flagged ``noisy``.

``speed_findings`` turns the same figures into sentences for the Findings.
Nothing here reads anything but record dicts' ``metrics``.
"""

from __future__ import annotations

import math
import statistics
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

AA_TOLERANCE = 0.03  # an A/A pair's median must lie within 1.00 +- this
RUNTIME_ORDER = ("eager", "compile", "onnxruntime")
NOT_TIMED = "not timed"
COMPOSE_RULE = ("end to end = (speedup over dense in the same runtime) x (dense in that "
                "runtime over dense in eager); its 95% interval combines the two log-ratio "
                "half-widths in quadrature, each side on its own")


@dataclass(frozen=True)
class Speed:
    """A paired speedup (> 1: faster) with its 95% interval."""

    median: float
    lo: float
    hi: float
    noisy: bool = False
    n: int = 1  # seeds aggregated

    def text(self) -> str:
        return (f"{self.median:.2f}× [{self.lo:.2f}, {self.hi:.2f}]"
                + (" noisy" if self.noisy else ""))

    def overlaps(self, other: Speed) -> bool:
        return not (self.lo > other.hi or self.hi < other.lo)

    @property
    def aa_ok(self) -> bool:
        """Whether this reads as an A/A pair should: 1.00 +- AA_TOLERANCE, covering 1.0."""
        return (abs(self.median - 1.0) <= AA_TOLERANCE and self.lo <= 1.0 <= self.hi
                and not self.noisy)


ONE = Speed(1.0, 1.0, 1.0)


def _finite(*vs: Any) -> bool:
    return all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
               and v > 0 for v in vs)


def speed_of(entry: Any) -> Speed | None:
    """The Speed of a paired entry (``{"speedup": {median, ci_low, ci_high, noisy}}``)."""
    sp = entry.get("speedup") if isinstance(entry, Mapping) else None
    if not isinstance(sp, Mapping):
        return None
    med, lo, hi = sp.get("median"), sp.get("ci_low"), sp.get("ci_high")
    if not _finite(med):
        return None
    if not _finite(lo, hi):
        lo = hi = med
    return Speed(float(med), float(lo), float(hi), bool(sp.get("noisy")))


def aggregate(speeds: Iterable[Speed | None]) -> Speed | None:
    """Median over seeds of the median, the low and the high end; noisy if any seed is."""
    got = [s for s in speeds if s is not None]
    if not got:
        return None
    return Speed(statistics.median(s.median for s in got), statistics.median(s.lo for s in got),
                 statistics.median(s.hi for s in got), any(s.noisy for s in got), len(got))


def compose(a: Speed, b: Speed) -> Speed:
    """a x b with the log half-widths combined in quadrature on each side."""
    med = a.median * b.median
    down = math.hypot(max(0.0, math.log(a.median / a.lo)), max(0.0, math.log(b.median / b.lo)))
    up = math.hypot(max(0.0, math.log(a.hi / a.median)), max(0.0, math.log(b.hi / b.median)))
    return Speed(med, med * math.exp(-down), med * math.exp(up), a.noisy or b.noisy,
                 min(a.n, b.n))


# -- reading one record's metrics -----------------------------------------------------
def pair_entry(metrics: Mapping, rt: str, b: str) -> Any:
    """The paired entry of a model against dense, both under ``rt``, at batch key ``b``."""
    if rt == "eager":
        return ((metrics.get("latency_paired") or {}).get("cpu") or {}).get(b)
    return ((metrics.get("latency_paired_runtimes") or {}).get(rt) or {}).get(b)


def vs_eager_entry(metrics: Mapping, rt: str, b: str) -> Any:
    """The dense record's entry of the dense model under ``rt`` against itself in eager."""
    return ((metrics.get("runtime_vs_eager") or {}).get(rt) or {}).get(b)


def state_of(metrics: Mapping, rt: str) -> tuple[str, str]:
    """(state, error) of a runtime in a record: 'measured', 'not exportable', ...;
    NOT_TIMED when the record holds nothing for the runtime."""
    if rt == "eager":
        return "measured", ""
    info = (metrics.get("runtime_info") or {}).get(rt)
    if not isinstance(info, Mapping):
        return NOT_TIMED, f"the record has no {rt} timing"
    return str(info.get("state") or "measured"), str(info.get("error") or "")


def dense_p50(metrics: Mapping, rt: str, b: str) -> float | None:
    """The dense model's p50 (ms) under ``rt``: the reference side of its paired entry;
    for eager, else the unpaired CPU latency's median."""
    side = (pair_entry(metrics, rt, b) or {}).get("reference") or {}
    v = side.get("p50_ms") if isinstance(side, Mapping) else None
    if _finite(v):
        return float(v)
    if rt == "eager":
        lat = ((metrics.get("latency") or {}).get("cpu") or {}).get(b) or {}
        v = lat.get("median_ms") if isinstance(lat, Mapping) else None
        return float(v) if _finite(v) else None
    return None


@dataclass(frozen=True)
class Figure:
    """What one table cell shows: a speed, or a state with its error."""

    speed: Speed | None
    state: str = "measured"
    error: str = ""


def figure(metrics_list: list[Mapping], rt: str, b: str, read=pair_entry) -> Figure:
    """Aggregated over the seeds' metrics where ``rt`` was measured; else the first
    state that is not 'measured' (with its error), or 'n/a' where the batch is absent."""
    speeds, states = [], []
    for m in metrics_list:
        state, error = state_of(m, rt)
        s = speed_of(read(m, rt, b)) if state == "measured" else None
        if s is not None:
            speeds.append(s)
        elif state != "measured":
            states.append((state, error))
    agg = aggregate(speeds)
    if agg is not None:
        return Figure(agg)
    if states:
        return Figure(None, *states[0])
    return Figure(None, "n/a", f"no {rt} figure at batch {b[1:]} in the records")


def dense_vs_eager(dense: list[Mapping], rt: str, b: str) -> Figure:
    """d_rt over the dense seeds (eager: exactly 1)."""
    if rt == "eager":
        return Figure(ONE) if dense else Figure(None, "not run", "no dense record")
    if not dense:
        return Figure(None, "not run", "no dense record")
    got = figure(dense, rt, b, vs_eager_entry)
    if got.speed is None and got.state == "n/a":
        return Figure(None, NOT_TIMED, "the dense record has no runtime_vs_eager entry "
                                       "(written before it was measured)")
    return got


def end_to_end(own: Figure, dense: Figure) -> Figure:
    """own x dense (composed interval), or the first of the two states that is missing."""
    if own.speed is None:
        return own
    if dense.speed is None:
        return Figure(None, f"dense {dense.state}", dense.error)
    return Figure(compose(own.speed, dense.speed))


def batch_keys(metrics_list: Iterable[Mapping]) -> list[str]:
    """Batch keys timed in eager or any runtime, smallest first."""
    keys: set[str] = set()
    for m in metrics_list:
        keys.update((m.get("latency_paired") or {}).get("cpu") or {})
        for section in ("latency_paired_runtimes", "runtime_vs_eager"):
            for entries in (m.get(section) or {}).values():
                keys.update(entries or {})
    return sorted((k for k in keys if k[:1] == "b" and k[1:].isdigit()),
                  key=lambda k: int(k[1:]))


def runtimes_in(metrics_list: Iterable[Mapping]) -> list[str]:
    """eager, then every runtime some record has information on, in a fixed order."""
    seen = {"eager"}
    for m in metrics_list:
        seen.update(m.get("runtime_info") or {})
        seen.update(m.get("latency_paired_runtimes") or {})
    return sorted(seen, key=lambda r: (RUNTIME_ORDER.index(r) if r in RUNTIME_ORDER
                                       else len(RUNTIME_ORDER), r))


# -- findings -------------------------------------------------------------------------
def _usable(r: Mapping) -> bool:
    m = r.get("metrics") or {}
    return r.get("status") == "ok" and (m.get("budget") or {}).get("met", True) is not False


def _bn(b: str) -> str:
    return f"batch {b[1:]}"


def fastest_runtime(dense: list[Mapping], runtimes: list[str], b: str) -> str | None:
    """One sentence: which runtime runs the dense model fastest at batch ``b``."""
    p50 = {}
    speed = {}
    for rt in runtimes:
        vals = [v for v in (dense_p50(m, rt, b) for m in dense
                            if state_of(m, rt)[0] == "measured") if v is not None]
        if vals:
            p50[rt] = statistics.median(vals)
        f = dense_vs_eager(dense, rt, b)
        if f.speed is not None:
            speed[rt] = f.speed
    if len(p50) < 2:
        return None
    paired = set(p50) <= set(speed)  # every runtime paired against eager: rank on that
    best = (max(p50, key=lambda rt: speed[rt].median) if paired
            else min(p50, key=lambda rt: p50[rt]))
    others = ", ".join(f"{rt} {p50[rt]:.3g} ms" for rt in p50 if rt != best)
    text = f"{best} ({p50[best]:.3g} ms; {others})"
    if best != "eager" and best in speed:
        s = speed[best]
        word = ("faster than eager beyond the 95% interval" if s.lo > 1.0
                else "slower than eager beyond the 95% interval" if s.hi < 1.0
                else "within the 95% interval of eager")
        text += f", {s.text()} over eager, {word}"
    return text


def speed_findings(records: list[Mapping], reference: str) -> list[str]:
    """Markdown lines for the Findings: the fastest runtime for each dense model, where a
    method's speedup under a runtime differs from its eager speedup beyond both 95%
    intervals, and where the order of methods by speed changes with the runtime. Empty
    when no record timed a runtime beside eager."""
    usable = [r for r in records if _usable(r)]
    if not any(r["metrics"].get("runtime_info") for r in usable):
        return []
    groups: dict[tuple, list[Mapping]] = defaultdict(list)
    for r in usable:
        groups[(r["model"], r["dataset"])].append(r)
    fastest, differs, orders = [], [], []
    n_compared = n_reordered = 0
    for (model, dataset), rs in sorted(groups.items()):
        dense = [r["metrics"] for r in rs if r["method"] == reference]
        metrics = [r["metrics"] for r in rs]
        runtimes = runtimes_in(metrics)
        batches = batch_keys(metrics)
        for b in batches:
            line = fastest_runtime(dense, runtimes, b)
            if line:
                fastest.append(f"{model}/{dataset}, {_bn(b)}: {line}")
        cells: dict[tuple, list[Mapping]] = defaultdict(list)
        for r in rs:
            if r["method"] != reference:
                cells[(r["target_label"], r["method"])].append(r["metrics"])
        for target in sorted({t for t, _ in cells}):
            methods = sorted(m for t, m in cells if t == target)
            for b in batches:
                eager = {m: figure(cells[(target, m)], "eager", b).speed for m in methods}
                for rt in runtimes[1:]:
                    under = {m: figure(cells[(target, m)], rt, b).speed for m in methods}
                    for m in methods:
                        e, u = eager[m], under[m]
                        if e is not None and u is not None and not e.overlaps(u):
                            differs.append(
                                f"{m} under {rt}, {model}/{dataset} {target} {_bn(b)}: "
                                f"{u.text()} vs {e.text()} in eager "
                                f"({'higher' if u.lo > e.hi else 'lower'})")
                    both = [m for m in methods if eager[m] is not None
                            and under[m] is not None]
                    if len(both) < 2:
                        continue
                    n_compared += 1
                    by_e = sorted(both, key=lambda m: -eager[m].median)
                    by_u = sorted(both, key=lambda m: -under[m].median)
                    if by_e == by_u:
                        continue
                    n_reordered += 1
                    swaps = [f"{a} / {c}" for i, a in enumerate(by_e) for c in by_e[i + 1:]
                             if eager[a].lo > eager[c].hi and under[c].lo > under[a].hi]
                    if swaps:
                        orders.append(
                            f"{model}/{dataset} {target} {_bn(b)}: eager "
                            f"{' > '.join(by_e)}; {rt} {' > '.join(by_u)} (swapped beyond "
                            f"both intervals: {', '.join(swaps)})")
    out = ["", "Speedups by runtime (paired, 95% intervals; seeds aggregated by the median):",
           ""]
    out += [f"- Fastest runtime for the dense model, {line}." for line in fastest] or [
        "- Fastest runtime for the dense model: no dense record holds a p50 under two "
        "runtimes."]
    if differs:
        out.append(f"- A method's speedup over dense under a runtime differs from its eager "
                   f"speedup beyond both 95% intervals in {len(differs)} case"
                   f"{'s' if len(differs) > 1 else ''}:")
        out += [f"  - {line}" for line in differs[:12]]
        if len(differs) > 12:
            out.append(f"  - ... and {len(differs) - 12} more")
    else:
        out.append("- No method's speedup over dense under a runtime differs from its eager "
                   "speedup beyond both 95% intervals.")
    decisive = len(orders)
    out.append(f"- The order of methods by speed (median speedup over dense) changes with the "
               f"runtime in {n_reordered} of {n_compared} (model, budget, batch, runtime) "
               f"comparisons; a pair swaps beyond both intervals in {decisive}"
               + (":" if orders else "."))
    out += [f"  - {line}" for line in orders[:12]]
    return out
