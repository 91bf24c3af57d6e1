"""Findings generated from records: who leads at each budget, and the papers' claims checked.

Each claim is checked per (model, dataset, budget) with 95% intervals over
seeds (see ``stats``): a claim is *supported* where the interval of the
method's difference to its comparator, paired by seed, lies wholly above 0,
*contradicted* where it lies wholly below, and *undecided* where it includes 0
(unpaired intervals over seeds, pooled over the table, when no seed is shared).
With one seed there is no interval over seeds: the Wilson intervals over the
test samples must separate instead, and the verdict says it rests on one seed.
Only ok records that met their budget take part. The verdicts are counted
over every comparison the records allow, so a reader sees how much evidence
there is, not just the direction.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field

from bench.report.runtime_speed import speed_findings
from bench.report.stats import (
    Estimate,
    SeedNoise,
    difference_interval,
    infer_test_size,
    pooled_estimates,
    separated,
    tie_ranks,
)

PRUNING = ("prune-l1", "prune-group", "prune-random")


@dataclass
class Claim:
    key: str
    text: str  # the paper's claim, in words
    supported: list[str] = field(default_factory=list)
    contradicted: list[str] = field(default_factory=list)
    undecided: list[str] = field(default_factory=list)
    one_seed: int = 0  # comparisons without an interval over seeds

    @property
    def verdict(self) -> str:
        n = len(self.supported) + len(self.contradicted) + len(self.undecided)
        if n == 0:
            return "cannot decide: no comparable cells in these records"
        if self.one_seed:
            rests = ("rests on one seed" if self.one_seed == n else
                     f"{self.one_seed} of {n} comparisons rest on one seed")
            return f"{self._verdict()} ({rests})"
        return self._verdict()

    def _verdict(self) -> str:
        if self.supported and not self.contradicted:
            return "supported" if not self.undecided else "partly supported"
        if self.contradicted and not self.supported:
            return "contradicted" if not self.undecided else "partly contradicted"
        if self.supported and self.contradicted:
            return "mixed"
        return "cannot decide within the intervals"


def _usable(r: dict) -> bool:
    m = r.get("metrics") or {}
    return r.get("status") == "ok" and m.get("top1") is not None and \
        (m.get("budget") or {}).get("met", True) is not False


@dataclass
class _Table:
    """One model x dataset x budget: per method its estimate and {seed: top-1}."""

    est: dict[str, Estimate]
    seeds: dict[str, dict[int, float]]
    noise: SeedNoise

    def separated(self, a: str, b: str) -> int:
        return separated(self.est[a], self.est[b], self.seeds[a], self.seeds[b], self.noise)


def _tables(records: Iterable[dict]) -> dict[tuple, _Table]:
    """(model, dataset, target_label) -> the table's estimates, seed sd pooled over it."""
    acc: dict[tuple, dict[str, dict[int, float]]] = defaultdict(lambda: defaultdict(dict))
    tests: dict[tuple, list[float]] = defaultdict(list)
    test_n: dict[tuple, int] = {}
    for r in records:
        if not _usable(r):
            continue
        m = r["metrics"]
        acc[(r["model"], r["dataset"], r["target_label"])][r["method"]][
            int(r.get("seed", 0))] = float(m["top1"])
        tests[(r["model"], r["dataset"])].append(m["top1"])
        if m.get("test_n"):
            test_n[(r["model"], r["dataset"])] = int(m["test_n"])
    out: dict[tuple, _Table] = {}
    for key, by_method in acc.items():
        n = test_n.get(key[:2]) or infer_test_size(tests[key[:2]])
        ests, noise = pooled_estimates(list(by_method.values()), n)
        out[key] = _Table(dict(zip(by_method, ests)), dict(by_method), noise)
    return out


def _estimates(records: Iterable[dict]) -> dict[tuple, dict[str, Estimate]]:
    """(model, dataset, target_label) -> method label -> accuracy estimate over seeds."""
    return {k: t.est for k, t in _tables(records).items()}


def _speedups(records: Iterable[dict]) -> dict[tuple, tuple[float, float, float]]:
    """(model, dataset, target, method) -> paired CPU batch-1 speedup (median, lo, hi)."""
    out = {}
    for r in records:
        if not _usable(r):
            continue
        paired = ((r["metrics"].get("latency_paired") or {}).get("cpu") or {})
        first = paired.get("b1") or next(iter(paired.values()), None)
        sp = (first or {}).get("speedup") if isinstance(first, dict) else None
        if sp and sp.get("ci_low") is not None:
            out[(r["model"], r["dataset"], r["target_label"], r["method"])] = (
                sp["median"], sp["ci_low"], sp["ci_high"])
    return out


def _compare(claim: Claim, where: str, t: _Table, a: str, b: str | None, what: str) -> None:
    if a not in t.est or b not in t.est:
        return
    ea, eb = t.est[a], t.est[b]
    line = f"{where}: {what} {ea.mean:.2%} vs {eb.mean:.2%}"
    diff = difference_interval(t.seeds[a], t.seeds[b], t.noise)
    if not (ea.seed_based and eb.seed_based):
        line += " (one seed)"
        claim.one_seed += 1
    elif diff is not None:
        line += (f", difference paired by seed {100 * diff[0]:+.2f} pp "
                 f"[{100 * diff[1]:+.2f}, {100 * diff[2]:+.2f}]")
    verdict = t.separated(a, b)
    if verdict > 0:
        claim.supported.append(line)
    elif verdict < 0:
        claim.contradicted.append(line)
    else:
        claim.undecided.append(line)


def check_claims(records: list[dict]) -> list[Claim]:
    """The four claims of the papers this project compares, checked on these records."""
    tables = _tables(records)
    speed = _speedups(records)
    maestro = Claim("maestro", "Maestro beats SVD-based and pruning baselines at equal budget "
                               "(against the best of svd and the pruning methods)")
    lorita = Claim("lorita", "LoRITa's truncated models beat SVD of a plainly trained model")
    accel = Claim("accel", "The acceleration techniques raise realised speedup at equal "
                           "accuracy (svd-accel vs svd, paired CPU batch-1 speedup)")
    funnel = Claim("funnel", "Funnel keeps more accuracy than SVD at a 2x MAC cut")
    for (model, dataset, target), t in sorted(tables.items()):
        where = f"{model}/{dataset} {target}"
        by = t.est
        baselines = [m for m in ("svd", *PRUNING) if m in by]
        if "maestro" in by and baselines:
            best = max(baselines, key=lambda m: by[m].mean)
            _compare(maestro, where, t, "maestro", best, "top-1")
        _compare(lorita, where, t, "lorita", "svd", "top-1")
        if target == "macs<=0.5":
            _compare(funnel, where, t, "funnel", "svd", "top-1")
        a, s = by.get("svd-accel"), by.get("svd")
        sa, ss = speed.get((model, dataset, target, "svd-accel")), \
            speed.get((model, dataset, target, "svd"))
        if a and s and sa and ss:
            line = f"{where}: speedup {sa[0]:.2f}x vs {ss[0]:.2f}x"
            if not (a.seed_based and s.seed_based):
                line += " (one seed)"
                accel.one_seed += 1
            if t.separated("svd-accel", "svd"):
                accel.undecided.append(line + " (accuracies differ, not an equal-accuracy "
                                              "comparison)")
            elif sa[1] > ss[2]:
                accel.supported.append(line)
            elif sa[2] < ss[1]:
                accel.contradicted.append(line)
            else:
                accel.undecided.append(line)
    return [maestro, lorita, accel, funnel]


def leaders(records: list[dict], reference: str = "dense") -> list[str]:
    """One line per (model, dataset, budget): the methods ranked first (ties within noise)."""
    lines = []
    for (model, dataset, target), t in sorted(_tables(records).items()):
        by = t.est
        if target == reference or not by:
            continue
        names = [m for m in by if m != reference]
        if not names:
            continue
        ranks = tie_ranks([by[m] for m in names], [t.seeds[m] for m in names], t.noise)
        first = sorted((m for m, (rank, _) in zip(names, ranks) if rank == 1),
                       key=lambda m: -by[m].mean)
        best = ", ".join(f"{m} {by[m].mean:.2%}" for m in first)
        tie = ""
        if len(first) > 1:
            tie = (" (tied at rank 1: no row beats them beyond the 95% interval of the "
                   "difference, paired by seed")
            # Ties are not transitive: a row whose seeds spread widely is beaten by no row,
            # while a steadier row above it by mean is beaten by the leader.
            passed = [m for m in first
                      if any(by[o].mean > by[m].mean for o in names if o not in first)]
            if passed:
                tie += (f"; {', '.join(passed)} rank{'s' if len(passed) == 1 else ''} 1 below "
                        "rows the leader beats, because no row beats "
                        f"{'it' if len(passed) == 1 else 'them'} beyond "
                        f"{'its' if len(passed) == 1 else 'their'} wider seed spread")
            tie += ")"
        if not all(by[m].seed_based for m in names):
            tie += " (one seed: ranked by the single run, no ties within noise marked)"
        lines.append(f"{model}/{dataset} {target}: {best}{tie}")
    return lines


def undertrained(records: list[dict], reference: str = "dense") -> list[str]:
    """Rows that beat their dense reference by more than the 95% intervals: a warning that
    the reference may be undertrained (compression should not add accuracy)."""
    out = []
    for (model, dataset, target), by in sorted(_estimates(records).items()):
        if target == reference:
            continue
        ref = _estimates(r for r in records if r["model"] == model and
                         r["dataset"] == dataset and r["method"] == reference)
        dense = next(iter(next(iter(ref.values()), {}).values()), None)
        if dense is None:
            continue
        for meth, e in sorted(by.items()):
            if meth != reference and e.lo > dense.hi:
                out.append(f"{meth} at {target} on {model}/{dataset} scores {e.mean:.2%}, above "
                           f"the dense reference's {dense.mean:.2%} beyond both 95% intervals: "
                           "the reference may be undertrained")
    return out


def method_details(records: list[dict]) -> list[str]:
    """What methods decided and why, from their ``method_info``: the rank rule chosen on
    the validation split, svd-accel's per-technique ablation, maestro's full-rank model."""
    lines: list[str] = []
    rules: dict[tuple, list[str]] = defaultdict(list)
    full: dict[tuple, list[float]] = defaultdict(list)
    for r in records:
        if r.get("status") != "ok":
            continue
        info = r.get("method_info") or {}
        choice = info.get("rank_rule_choice")
        if isinstance(choice, dict) and choice.get("chosen"):
            rules[(r["model"], r["method"], r["target_label"])].append(str(choice["chosen"]))
        if info.get("full_rank_top1") is not None:
            full[(r["model"], r["method"])].append(float(info["full_rank_top1"]))
    if rules:
        lines += ["", "Rank rule chosen on the validation split (per seed):", ""]
        lines += [f"- {m} {meth} {t}: {', '.join(v)}" for (m, meth, t), v in sorted(rules.items())]
    if full:
        lines += ["", "Full-rank accuracy of the trained model before any truncation "
                  "(validation split, mean over seeds):", ""]
        lines += [f"- {m} {meth}: {sum(v) / len(v):.2%} ({len(v)} cells)"
                  for (m, meth), v in sorted(full.items())]
    abl = [r for r in records if r.get("status") == "ok" and
           isinstance((r.get("method_info") or {}).get("accel_ablation"), dict)]
    if abl:
        lines += ["", "svd-accel, what each technique adds (cumulative, before fine-tuning, "
                  "seed " + str(min(r.get("seed", 0) for r in abl)) + "): validation top-1 / "
                  "MACs ratio. Rounding and top-up buy accuracy within the budget; the skip "
                  "rule and merging are about latency.", ""]
        seed0 = min(r.get("seed", 0) for r in abl)
        for r in sorted(abl, key=lambda r: (r["model"], r["target_label"])):
            if r.get("seed", 0) != seed0:
                continue
            stages = r["method_info"]["accel_ablation"].get("stages", [])
            cells = "; ".join(
                f"{st['stage']} {st['val_top1']:.2%} / {st['macs_ratio']:.3f}x"
                if st.get("val_top1") is not None and st.get("macs_ratio") is not None
                else f"{st['stage']} n/a" for st in stages)
            lines.append(f"- {r['model']} {r['method']} {r['target_label']}: {cells}")
    return lines


RUNTIME_RULE = (
    "Speedup under each deployment runtime against eager, per cell at the largest batch "
    "timed under both (both sides prepared the same way, paired rounds): **reverses** when "
    "eager's median speedup and the runtime's whole 95% interval lie on opposite sides of "
    "1.0 (a speedup turned slowdown, or the reverse; checked first); **grows** when the "
    "runtime's interval lies wholly above eager's median; **shrinks** when it lies wholly "
    "below; **holds** when it contains eager's median. A method's word is its most common "
    "verdict over its cells (mixed on a tie).")


def runtime_verdict(eager_median: float, lo: float, hi: float) -> str:
    """reverses / grows / shrinks / holds: a runtime's speedup interval [lo, hi] against
    eager's median speedup of the same cell (see RUNTIME_RULE)."""
    if (eager_median > 1.0 and hi < 1.0) or (eager_median < 1.0 and lo > 1.0):
        return "reverses"
    if lo > eager_median:
        return "grows"
    if hi < eager_median:
        return "shrinks"
    return "holds"


def _largest_common(eager: dict, other: dict) -> str | None:
    keys = [k for k in other if k in eager and isinstance(other[k], dict)
            and isinstance(eager[k], dict)]
    return max(keys, key=lambda k: (len(k), k)) if keys else None


def runtime_findings(records: list[dict], reference: str = "dense") -> list[str]:
    """One line per (method, runtime): how its speedup under the runtime compares with
    eager's (RUNTIME_RULE), with the counts and the medians; cells the runtime could
    not take are counted by state. Empty when no record timed a runtime beside eager."""
    verdicts: dict[tuple[str, str], list[str]] = defaultdict(list)
    speeds: dict[tuple[str, str], list[tuple[float, float, str]]] = defaultdict(list)
    states: dict[tuple[str, str], list[str]] = defaultdict(list)
    seen = False
    for r in records:
        if not _usable(r) or r.get("method") == reference:
            continue
        m = r["metrics"]
        eager = (m.get("latency_paired") or {}).get("cpu") or {}
        timed = m.get("latency_paired_runtimes") or {}
        for rt, info in sorted((m.get("runtime_info") or {}).items()):
            seen = True
            key = (r["method"], rt)
            state = (info or {}).get("state", "measured")
            if state != "measured" or rt not in timed:
                states[key].append(state)
                continue
            b = _largest_common(eager, timed[rt])
            e_sp = (eager.get(b) or {}).get("speedup") if b else None
            r_sp = (timed[rt].get(b) or {}).get("speedup") if b else None
            if not e_sp or not r_sp or r_sp.get("ci_low") is None:
                continue
            verdicts[key].append(runtime_verdict(e_sp["median"], r_sp["ci_low"],
                                                 r_sp["ci_high"]))
            speeds[key].append((r_sp["median"], e_sp["median"], b))
    if not seen:
        return []
    lines = []
    for key in sorted(set(verdicts) | set(states)):
        method, rt = key
        v = verdicts.get(key, [])
        parts = []
        if v:
            counts = Counter(v).most_common()
            top = [w for w, n in counts if n == counts[0][1]]
            word = top[0] if len(top) == 1 else "mixed"
            med_rt = sorted(x[0] for x in speeds[key])[len(speeds[key]) // 2]
            med_e = sorted(x[1] for x in speeds[key])[len(speeds[key]) // 2]
            batch = sorted({x[2] for x in speeds[key]}, key=lambda k: (len(k), k))
            parts.append(f"**{word}** ({', '.join(f'{n} {w}' for w, n in counts)} of {len(v)} "
                         f"cells; median speedup {med_rt:.2f}× under {rt} vs {med_e:.2f}× "
                         f"eager, batch {'/'.join(b[1:] for b in batch)})")
        for state, n in Counter(states.get(key, [])).most_common():
            parts.append(f"{state} in {n} cell{'s' if n > 1 else ''}")
        lines.append(f"{method} under {rt}: " + "; ".join(parts))
    return lines


def render_findings(records: list[dict], reference: str = "dense") -> str:
    """The Markdown "Findings" section of a report."""
    out = ["## Findings", "", "Generated from the records. Leaders at each budget "
           "(top-1, mean over seeds):", ""]
    out += [f"- {line}" for line in leaders(records, reference)] or ["- no ok records yet"]
    out += ["", "The papers' claims, checked per model, dataset and budget with 95% intervals "
            "over seeds (Student t over a row's own seeds from three on, else with the seed sd "
            "pooled over the methods at that budget; "
            "supported: the interval of the difference to the comparator, paired by seed, "
            "lies wholly above 0; contradicted: wholly below; undecided: it includes 0). "
            "With one seed there is no interval over seeds: the Wilson intervals over the "
            "test samples must separate, and the verdict says it rests on one seed:", ""]
    for c in check_claims(records):
        n = len(c.supported) + len(c.contradicted) + len(c.undecided)
        out.append(f"- **{c.text}**: {c.verdict} ({len(c.supported)} supported, "
                   f"{len(c.contradicted)} contradicted, {len(c.undecided)} undecided of {n}).")
        for line in (c.supported + c.contradicted + c.undecided)[:8]:
            out.append(f"  - {line}")
    runtime_lines = runtime_findings(records, reference)
    if runtime_lines:
        out += ["", RUNTIME_RULE, ""] + [f"- {line}" for line in runtime_lines]
    out += speed_findings(records, reference)
    warn = undertrained(records, reference)
    if warn:
        out += ["", "Warnings:", ""] + [f"- {w}" for w in warn]
    out += method_details(records)
    return "\n".join(out) + "\n"
