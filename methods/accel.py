"""Making decomposed models fast, not only small (Hajimolahoseini et al. 2023, 2024).

A decomposed model has more, thinner layers: its MACs fall but its latency may
not. Four options any low-rank method can use, and ``svd-accel`` = SVD with
all of them on:

- rank quantization (:func:`quantize_rank`): each layer's rank is rounded to
  a multiple of 8/16/32/64, or (``rank_table``) chosen from a small table of
  such ranks timed on this device: the largest table rank within the budget,
  unless a smaller one is at least ``step_gain`` faster (a latency step), in
  which case the fastest (ties within ``tie_tolerance`` to the larger rank);
- skip rule: a layer at a rank is decomposed where paired, interleaved
  timings (methods.layers.paired_timing) show its factorized form clearly
  faster than dense, kept dense where they show it clearly slower, and where
  the difference is within ``speed_margin`` plus the timing noise (or timing
  is off, or the rank was not timed) decided by MACs: decomposed when they
  fall below ``skip_threshold`` of dense. Where the budget cannot be met that
  way, the layers with the largest MAC saving are decomposed anyway, one at a
  time, until it can (the budget wins over speed);
- sequential freezing (:class:`SequentialFreezer`): during fine-tuning only
  one factor of each decomposed pair trains, alternating every
  ``freeze_every`` epochs (or steps), which skips the frozen factor's weight
  gradient;
- layer merging (:func:`merge_linear_chains`): adjacent linear maps with no
  nonlinearity between them (in ``nn.Sequential`` containers, with only
  Identity or p=0 Dropout between) are multiplied into one map, deployed as
  one dense layer or as a factorized pair through the narrowest inner width,
  whichever costs fewer MACs.

``techniques`` switches each technique (and the greedy top-up of left-over
budget, which is ours) on or off, so a suite can list ablation rows; every
cell also records ``accel_ablation``: the validation top-1 (before
fine-tuning) and MACs of plain SVD and of each technique added in turn.
``rank_selection`` is svd's: with ``auto`` each rule is compressed with the
techniques on and ``local`` is kept unless another rule's validation loss
before fine-tuning is clearly lower (methods.layers.ranks.pick_rank_rule);
the ablation uses the rule chosen.

Our choices where the papers leave room: timing is per layer on random inputs
of the layer's real shape at the suite's batch sizes (mean relative time over
``timing_batches``), single-threaded by default like the suite's latency; when
the multiple cannot meet the budget (tiny layers), it is halved until it can.
The papers fine-tune with frozen factors for speed on GPU/NPU; we measure CPU.
"""

from __future__ import annotations

import copy
import dataclasses
import json
from dataclasses import dataclass
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field
from torch import nn
from tqdm.auto import tqdm

from bench import Method, MethodContext, Target, register_method
from methods.accel_ablation import ablation_record
from methods.layers import LowRankConv2d, LowRankLinear, factorize, paired_timing, set_module
from methods.layers.freezing import SequentialFreezer, factor_pairs
from methods.layers.merging import merge_linear_chains, merge_maps
from methods.layers.paired_timing import LayerTimings, PairedTiming, paired_timings
from methods.layers.ranks import LayerSpectrum, RankSelection, pick_rank_rule, ranks_for_knob
from methods.layers.surgery import probe_layers
from methods.layers.timing_cache import TimingCache, machine_key
from methods.svd import SVDParams, decompose_to_budget, layer_spectra

__all__ = ["AccelParams", "SVDAccel", "SequentialFreezer", "decompose_accel", "factor_pairs",
           "merge_linear_chains", "merge_maps", "quantize_rank"]

Technique = Literal["rounding", "top_up", "skip", "freezing", "merging"]
TECHNIQUES: tuple[Technique, ...] = ("rounding", "top_up", "skip", "freezing", "merging")


class AccelParams(BaseModel):
    """Acceleration options shared by the low-rank methods."""

    model_config = ConfigDict(extra="forbid")
    rank_multiple: int | None = Field(
        default=8, ge=1, description="round ranks to this multiple (8/16/32/64); None: off")
    rank_table: bool = Field(
        default=False, description="time a table of candidate ranks per layer; take a "
        "smaller rank than the budget's only across a latency step (needs timing)")
    timing: bool = Field(default=True, description="time layers on this device for the "
                         "rank table and the skip rule; off: MACs threshold only")
    timing_batches: list[int] = Field(default_factory=lambda: [1, 64],
                                      description="batch sizes the layer timings average over")
    timing_threads: int = Field(default=1, ge=1, description="CPU threads while timing")
    timing_rounds: int = Field(default=7, ge=1, description="paired interleaved timing rounds "
                               "(median ratio, noise from their spread)")
    speed_margin: float = Field(default=0.05, ge=0.0, lt=1.0,
                                description="timings decide only beyond this margin (plus "
                                "noise) from parity; within it the MACs rule decides")
    skip_threshold: float = Field(default=0.8, gt=0.0, le=1.0,
                                  description="without timing: decompose only below this "
                                  "fraction of the dense layer's MACs")
    tie_tolerance: float = Field(default=0.03, ge=0.0,
                                 description="timed ranks this close count as equally fast")
    step_gain: float = Field(default=0.25, ge=0.0, lt=1.0,
                             description="a smaller table rank is taken only when it is this "
                             "much faster than the largest rank within the budget")
    sequential_freezing: bool = Field(default=True,
                                      description="train one factor per pair at a time")
    freeze_every: int = Field(default=1, ge=1, description="epochs (or steps) per turn")
    freeze_unit: str = Field(default="epoch", pattern="^(epoch|step)$")
    merge_layers: bool = Field(default=True, description="multiply adjacent linear maps")
    techniques: list[Technique] = Field(
        default_factory=lambda: list(TECHNIQUES), description="techniques on: rounding "
        "(rank quantization/table), top_up (greedy use of left-over budget), skip (skip "
        "rule), freezing (sequential freezing), merging; the options above configure them")
    ablation: bool = Field(default=True, description="record accel_ablation: val top-1 and "
                           "MACs of plain SVD and each technique added in turn")

    def uses(self, technique: Technique) -> bool:
        """Whether a technique is on: listed in ``techniques`` and not disabled by its option."""
        if technique not in self.techniques:
            return False
        return {"rounding": bool(self.rank_multiple), "freezing": self.sequential_freezing,
                "merging": self.merge_layers}.get(technique, True)


# -- rank quantization ----------------------------------------------------------------

def quantize_rank(rank: int, multiple: int | None, full_rank: int) -> int:
    """``rank`` rounded to the nearest multiple (at least one multiple), capped at full rank."""
    if not multiple or multiple <= 1:
        return max(1, min(rank, full_rank))
    if full_rank < multiple:  # a layer narrower than the multiple: nothing to round to
        return max(1, min(rank, full_rank))
    q = max(multiple, multiple * round(rank / multiple))
    return min(q, multiple * (full_rank // multiple))


def rank_table(sp: LayerSpectrum, multiple: int, max_entries: int = 8) -> list[int]:
    """Candidate ranks of a layer: multiples of ``multiple`` below the break-even rank."""
    top = sp.max_useful_rank()
    cands = list(range(multiple, top + 1, multiple)) or [max(1, min(multiple, top))]
    if len(cands) > max_entries:  # keep the table small: an even spread
        step = len(cands) / max_entries
        cands = sorted({cands[min(len(cands) - 1, int(i * step))] for i in range(max_entries)}
                       | {cands[-1]})
    return cands


# -- timing ---------------------------------------------------------------------------

def layer_inputs(model: nn.Module, layers: dict[str, nn.Module],
                 input_shape: tuple[int, ...]) -> dict[str, tuple[int, ...]]:
    """Per-sample input shape of each layer (batch dimension dropped), from one forward."""
    shapes: dict[str, tuple[int, ...]] = {}
    probe_layers(model, layers, input_shape,
                 lambda path, mod, inp, out: shapes.setdefault(path, tuple(inp[0].shape[1:])))
    return shapes


_TIMING_CACHE: dict[tuple, LayerTimings] = {}  # this process's timings
DISK_CACHE = TimingCache()  # every process's timings on this machine (methods.layers.timing_cache)
MAX_TIMED_RANKS = 8  # candidate ranks timed per layer; ranks between them are bracketed


def _layer_key(layer: nn.Module, in_shape: tuple[int, ...]) -> tuple:
    if isinstance(layer, nn.Linear):
        return ("linear", layer.in_features, layer.out_features, layer.bias is not None, in_shape)
    return ("conv", layer.in_channels, layer.out_channels, layer.kernel_size, layer.stride,
            layer.padding, layer.dilation, layer.bias is not None, in_shape)


def timing_key(layer: nn.Module, in_shape: tuple[int, ...], opts: AccelParams) -> str:
    """The disk-cache key of a layer's timings, less the rank: shape, input, batches,
    threads, rounds and the machine (CPU model, torch version)."""
    return json.dumps([_layer_key(layer, tuple(in_shape)), list(opts.timing_batches),
                       opts.timing_threads, opts.timing_rounds, machine_key()])


def time_layer(layer: nn.Module, in_shape: tuple[int, ...], ranks: list[int],
               opts: AccelParams) -> LayerTimings:
    """Paired timings of ``layer`` against its factorized forms (random weights, same shapes).

    Layers of equal shape share one timing, so blocks repeated through a network
    and later targets cost nothing more and decide alike. Timings of the
    library's own timer are also kept on disk (:data:`DISK_CACHE`), keyed by
    :func:`timing_key` and the rank, so a later call or run on this machine
    times only the ranks it has not seen.
    """
    key = (_layer_key(layer, in_shape), tuple(ranks), tuple(opts.timing_batches),
           opts.timing_threads, opts.timing_rounds)
    if key in _TIMING_CACHE:
        return _TIMING_CACHE[key]
    persistent = paired_timing.measure_ms is paired_timing.DEFAULT_TIMER
    base = timing_key(layer, in_shape, opts) if persistent else ""
    out = LayerTimings()
    missing = []
    for r in ranks:
        hit = DISK_CACHE.get(f"{base}|{r}") if persistent else None
        if hit:
            out.pairs[r] = PairedTiming(list(hit["ratios"]))
            out.dense_ms.update({int(b): ms for b, ms in hit["dense_ms"].items()})
        else:
            missing.append(r)
    if missing:
        layer = layer.cpu()
        facts: dict[int, nn.Module] = {}
        for r in missing:
            facts[r] = LowRankLinear(layer.in_features, layer.out_features, r,
                                     bias=layer.bias is not None) \
                if isinstance(layer, nn.Linear) else LowRankConv2d(layer, r)
        fresh = paired_timings(layer, facts, in_shape, list(opts.timing_batches),
                               opts.timing_rounds, opts.timing_threads)
        out.pairs.update(fresh.pairs)
        out.dense_ms.update(fresh.dense_ms)
        if persistent:
            DISK_CACHE.put_many({f"{base}|{r}": {"ratios": fresh.pairs[r].ratios,
                                                 "dense_ms": fresh.dense_ms} for r in missing})
    out.pairs = dict(sorted(out.pairs.items()))
    _TIMING_CACHE[key] = out
    return out


def timing_candidates(sp: LayerSpectrum, multiple: int, opts: AccelParams) -> list[int]:
    """The ranks of a layer that get timed: at most :data:`MAX_TIMED_RANKS` multiples of
    ``multiple`` spread evenly up to the break-even rank (the skip rule brackets the rest)."""
    table = rank_table(sp, multiple, max_entries=MAX_TIMED_RANKS - 1)[-MAX_TIMED_RANKS:]
    return [r for r in table if r <= sp.max_useful_rank()] or table[:1]


# -- rank choice ----------------------------------------------------------------------

@dataclass
class Plan:
    """Rank (None = dense) per layer and what decided it."""

    ranks: dict[str, int | None]
    multiple: int | None
    forced: list[str]


class AccelRankChooser:
    """Budget-constrained ranks with quantization, timed tables and the skip rule."""

    def __init__(self, spectra: list[LayerSpectrum], selection: RankSelection, metric: str,
                 opts: AccelParams, timings: dict[str, LayerTimings] | None):
        self.spectra, self.selection, self.metric = spectra, selection, metric
        self.opts, self.timings = opts, timings or {}

    def pick(self, sp: LayerSpectrum, raw: int, multiple: int | None) -> int:
        """Quantized rank; with a timed table, a smaller table rank when it is clearly faster."""
        rank = quantize_rank(raw, multiple, sp.full_rank)
        timing = self.timings.get(sp.path)
        if not (self.opts.rank_table and self.opts.uses("rounding") and timing
                and timing.relative and multiple == self.opts.rank_multiple):
            return rank
        allowed = {r: t for r, t in timing.relative.items() if r <= rank}
        if not allowed:
            return rank
        top = max(allowed)
        fastest = min(allowed.values())
        if fastest >= allowed[top] * (1 - self.opts.step_gain):
            return top  # no latency step below the budget's rank: keep the accuracy
        return max(r for r, t in allowed.items() if t <= fastest * (1 + self.opts.tie_tolerance))

    def basis(self, sp: LayerSpectrum, rank: int) -> str:
        """What the skip rule decides ``rank`` of a layer from: a timed verdict or MACs.

        An untimed rank is bracketed by the timed ones (a factorized layer's time
        grows with its rank): below a rank timed clearly faster it is faster,
        above one timed clearly slower it is slower; otherwise MACs decide.
        """
        timing = self.timings.get(sp.path)
        if not self.opts.timing:
            return "macs"
        if not timing or not timing.pairs:
            return "macs (not timed)"
        margin = self.opts.speed_margin
        if rank in timing.pairs:
            verdict = timing.pairs[rank].verdict(margin)
            return f"timed {verdict}" if verdict != "tie" else "macs (timings within noise)"
        above = [r for r in timing.pairs if r > rank]
        below = [r for r in timing.pairs if r < rank]
        if above and timing.pairs[min(above)].verdict(margin) == "faster":
            return "timed faster"
        if below and timing.pairs[max(below)].verdict(margin) == "slower":
            return "timed slower"
        return "macs (between timed ranks)"

    def worth_it(self, sp: LayerSpectrum, rank: int) -> bool:
        if sp.saving(rank, self.metric) <= 0:
            return False
        if not self.opts.uses("skip"):
            return True
        basis = self.basis(sp, rank)
        if basis.startswith("timed"):
            return basis == "timed faster"
        frac = sp.factorized_cost(rank, "macs") / max(1, sp.dense_cost("macs"))
        return frac < self.opts.skip_threshold

    def assign(self, knob: float, multiple: int | None, forced: set[str]) -> dict[str, int | None]:
        raw = ranks_for_knob(self.spectra, self.selection, knob)
        out: dict[str, int | None] = {}
        for sp in self.spectra:
            r = self.pick(sp, raw[sp.path], multiple)
            keep = sp.saving(r, self.metric) > 0 and (sp.path in forced or self.worth_it(sp, r))
            out[sp.path] = r if keep else None
        return out

    def cost(self, ranks: dict[str, int | None], dense_total: int) -> int:
        return dense_total - sum(sp.saving(ranks.get(sp.path), self.metric)
                                 for sp in self.spectra)

    def choose(self, dense_total: int, budget: float, grid: int = 256) -> Plan:
        multiple = self.opts.rank_multiple if self.opts.uses("rounding") else None
        while True:
            forced: set[str] = set()
            order = sorted(self.spectra, key=lambda sp: -sp.saving(
                self.pick(sp, 1, multiple), self.metric))
            floor = self.assign(0.0, multiple, forced)
            for sp in order:  # the budget wins over the skip rule
                if self.cost(floor, dense_total) <= budget:
                    break
                if floor[sp.path] is None:
                    forced.add(sp.path)
                    floor = self.assign(0.0, multiple, forced)
            if self.cost(floor, dense_total) <= budget or not multiple or multiple <= 1:
                break
            multiple //= 2  # tiny layers: the multiple itself is over budget
        # Quantized ranks, timed tables and the skip rule make cost non-monotone in
        # the knob, so scan it on a grid and keep the feasible plan that uses most
        # of the budget (the highest ranks the budget allows).
        best, best_cost = floor, self.cost(floor, dense_total)
        for i in range(1, grid + 1):
            cand = self.assign(i / grid, multiple, forced)
            c = self.cost(cand, dense_total)
            if best_cost < c <= budget:
                best, best_cost = cand, c
        if self.opts.uses("top_up"):
            best = self.fill(best, dense_total, budget, multiple)
        return Plan(best, multiple, sorted(forced))

    def fill(self, ranks: dict[str, int | None], dense_total: int, budget: float,
             multiple: int | None) -> dict[str, int | None]:
        """Spend what the budget has left: raise single layers one rank step at a time.

        The knob moves every layer together, so a quantized plan can leave much
        of the budget unused; the layer whose next step keeps the most spectral
        energy per unit of cost goes first, while the skip rule still holds.
        """
        step = multiple or 1
        ranks = dict(ranks)
        by_path = {sp.path: sp for sp in self.spectra}
        while True:
            best_path, best_gain, best_rank = None, 0.0, 0
            cost = self.cost(ranks, dense_total)
            for path, r in ranks.items():
                sp = by_path[path]
                if r is None:
                    continue
                nxt = quantize_rank(r + step, multiple, sp.full_rank)
                if nxt <= r or sp.saving(nxt, self.metric) <= 0 or not self.worth_it(sp, nxt):
                    continue
                extra = sp.factorized_cost(nxt, self.metric) - sp.factorized_cost(r, self.metric)
                if cost + extra > budget:
                    continue
                s2 = sp.singular_values.double() ** 2
                gain = float(s2[r:nxt].sum() / s2.sum().clamp_min(1e-30)) / max(extra, 1)
                if gain > best_gain:
                    best_path, best_gain, best_rank = path, gain, nxt
            if best_path is None:
                return ranks
            ranks[best_path] = best_rank


def decompose_accel(model: nn.Module, target: Target, ctx: MethodContext,
                    layers: dict[str, nn.Module], selection: RankSelection,
                    opts: AccelParams, max_attempts: int = 5) -> nn.Module:
    """Factorize ``layers`` in place with accelerated rank choices that meet ``target``."""
    spectra = layer_spectra(model, layers, ctx.input_shape)
    metric = target.metric
    dense_total = ctx.measure(model).get(metric)
    reference = ctx.dense_cost.get(metric) if ctx.dense_cost else dense_total
    budget = target.ratio * reference
    timings: dict[str, LayerTimings] = {}
    if opts.timing and (opts.uses("skip") or (opts.rank_table and opts.uses("rounding"))):
        shapes = layer_inputs(model, layers, ctx.input_shape)
        multiple = opts.rank_multiple or 1
        ctx.logger.info("svd-accel: timing %d layers against their factorized forms (up to "
                        "%d ranks each; timings already in %s are reused)", len(spectra),
                        MAX_TIMED_RANKS, DISK_CACHE.path)
        # a progress bar on a terminal (tqdm disables itself when output is redirected)
        for sp in tqdm(spectra, desc="svd-accel layer timings", unit="layer", leave=False,
                       disable=None if len(spectra) >= 4 else True):
            table = timing_candidates(sp, multiple, opts)
            timings[sp.path] = time_layer(layers[sp.path], shapes[sp.path], table, opts)
    chooser = AccelRankChooser(spectra, selection, metric, opts, timings)
    goal, plan, achieved = budget, None, dense_total
    for _ in range(max_attempts):
        plan = chooser.choose(dense_total, goal)
        for path, layer in layers.items():
            rank = plan.ranks.get(path)
            set_module(model, path, layer if rank is None else factorize(layer, rank))
        achieved = ctx.measure(model).get(metric)
        if achieved <= budget:
            break
        goal -= achieved - budget  # ops the closed form does not see
    assert plan is not None
    ctx.record("ranks", dict(plan.ranks))
    ctx.record("full_ranks", {sp.path: sp.full_rank for sp in spectra})
    ctx.record("rank_selection", selection)
    ctx.record("rank_multiple", plan.multiple)
    ctx.record("forced_by_budget", plan.forced)
    by_path = {sp.path: sp for sp in spectra}
    ctx.record("skip_basis", {path: chooser.basis(by_path[path], r) for path, r in
                              plan.ranks.items() if r is not None} if opts.uses("skip") else {})
    if timings:
        ctx.record("relative_layer_time", {p: {str(r): round(t, 3) for r, t in lt.relative.items()}
                                           for p, lt in timings.items()})
        ctx.record("skip_timings", {p: {str(r): pt.as_record(opts.speed_margin)
                                        for r, pt in lt.pairs.items()}
                                    for p, lt in timings.items()})
    if achieved > budget:
        ctx.logger.warning("%s budget %s not reachable: %.4f of dense", metric, target.label,
                           achieved / reference)
    return model


# -- the method -----------------------------------------------------------------------

class SVDAccelParams(SVDParams, AccelParams):
    model_config = ConfigDict(extra="forbid")


@register_method
class SVDAccel(Method):
    """SVD with rank quantization/tables, the skip rule, sequential freezing and merging."""

    name = "svd-accel"
    kind = "post"
    Params = SVDAccelParams
    description = "SVD with hardware-aware ranks, skip rule, sequential freezing, merging"

    def __init__(self, params=None):
        super().__init__(params)
        p: SVDAccelParams = self.params
        self.freezer = SequentialFreezer(p.freeze_every, p.freeze_unit) \
            if p.uses("freezing") else None

    def compress(self, model: nn.Module, target: Target, ctx: MethodContext) -> nn.Module:
        p: SVDAccelParams = self.params

        def build(rule: RankSelection, opts: SVDAccelParams = p,
                  merge: bool = True) -> tuple[nn.Module, dict]:
            trial, sub = copy.deepcopy(model), dataclasses.replace(ctx, info={})
            layers = p.select(trial)
            if not opts.techniques:
                return decompose_to_budget(trial, target, sub, layers, rule), sub.info
            trial = decompose_accel(trial, target, sub, layers, rule, opts)
            if merge and opts.uses("merging"):
                sub.record("merged_layers", merge_linear_chains(trial))
            return trial, sub.info

        out = pick_rank_rule(p.rank_selection, build, ctx)
        if p.ablation:
            rule = ctx.info["rank_rule_choice"]["chosen"]

            def stage(techniques: list[str]) -> nn.Module:
                opts = p.model_copy(update={"techniques": techniques})
                return build(rule, opts, merge="merging" in techniques)[0]

            ctx.record("accel_ablation", ablation_record(stage, ctx, rule))
        return out

    def before_step(self, model: nn.Module, ctx: MethodContext) -> None:
        if self.freezer is not None:
            self.freezer.before_step(model, ctx)

    def on_epoch_end(self, model: nn.Module, ctx: MethodContext) -> None:
        if self.freezer is not None:
            self.freezer.on_epoch_end(model, ctx)
