"""How long a suite will take here, from a short measured probe (``run --dry-run``).

For each distinct (model, dataset) of the cells still to run, the probe builds
the model on this machine's device and times, with the harness's own code:

- a few training steps of the real loop (:func:`bench.train.train`, so the
  device loop, bf16 and channels_last on CUDA) at the training and the
  fine-tuning batch size (8 steps, after 3 warm-up steps);
- evaluation of 512 images;
- measurement of the dense model with a cut-down latency block (two timed
  runs), extrapolated to the suite's ``min_runs``/``min_seconds``/``warmup``
  and to the paired timing against the dense reference (rounds x calls, both
  models).

The estimate adds up, per cell: every training without a checkpoint (dense
baselines; "train" methods once per parameter set) as epochs x steps per epoch
x seconds per step; fine-tuning likewise; evaluation of the val and test
splits; measurement; and compression: the mean of earlier records of the same
method and model where there are some, else the training a method is known to
do inside ``compress`` (dense-small trains its narrow model for the training
epochs), else nothing. Every row is fine-tuned for the fine-tune budget (a
regularization phase such as funnel's is part of it). With recovery budgets,
each row and seed pays its compression once and its lr choice once (every lr
of the grid fine-tunes at the largest budget), and each smaller budget one
fine-tune with the chosen lr; under ``lr_chosen_on: first-seed`` only the first
seed chooses, and the other seeds fine-tune once per budget. A compressed model
is priced as the dense one (an upper bound for fine-tuning). Timing is priced
once per row and seed (a row's recovery budgets deploy one architecture and
reuse its figures, see bench.run.timing_share; seeds may share too, which the
estimate does not count on), or per cell with ``share_timing=False``.
Work on the device is GPU time when the device is CUDA; latency timing on the
CPU is CPU time.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from bench.data.base import DataBundle, Split

WARMUP_STEPS, PROBE_STEPS, EVAL_IMAGES = 3, 8, 512


@dataclass
class ModelProbe:
    """Seconds measured for one (model, dataset) on this machine."""

    step_s: dict[int, float]  # batch size -> seconds per training step
    eval_s_per_image: float
    measure_s: float  # one cell's measurement, extrapolated to the suite's latency block
    measure_cuda_s: float
    train_size: int
    eval_size: int


@dataclass
class Estimate:
    """Seconds of work still to do, split by where it runs, per model and per method."""

    device: str
    cells: int = 0
    device_s: float = 0.0  # training, fine-tuning, compression, evaluation (and CUDA timing)
    cpu_s: float = 0.0  # CPU latency timing
    per_model: dict[str, list[float]] = field(default_factory=lambda: defaultdict(lambda: [0, 0]))
    per_method: dict[str, list[float]] = field(default_factory=lambda: defaultdict(lambda: [0, 0]))
    missing: list[str] = field(default_factory=list)  # why some cells have no estimate
    trainings: int = 0
    probe_s: float = 0.0
    # per cell id: seconds a worker spends on it, and seconds of its latency timing (the
    # driver's timing phase when workers defer it): what the schedule below runs
    cell_work: dict[str, float] = field(default_factory=lambda: defaultdict(float))
    cell_timing: dict[str, float] = field(default_factory=lambda: defaultdict(float))
    todo: list[Any] = field(default_factory=list)  # the cells still to run (bench.cells.Cell)
    checkpointed: set[str] = field(default_factory=set)  # dense baselines already trained

    @property
    def total_s(self) -> float:
        """Serial wall-clock seconds: one process does all of it."""
        return self.device_s + self.cpu_s

    def add(self, model: str, method: str, device_s: float, cpu_s: float = 0.0,
            cell: str | None = None, timing_s: float = 0.0) -> None:
        """Work of ``device_s`` seconds (``timing_s`` of it latency timing) and ``cpu_s`` of
        CPU timing, counted for the model and method and, with ``cell``, for that cell."""
        if cell is not None:
            self.cell_work[cell] += device_s - timing_s
            self.cell_timing[cell] += timing_s + cpu_s
        self.device_s += device_s
        self.cpu_s += cpu_s
        for table, key in ((self.per_model, model), (self.per_method, method)):
            table[key][0] += device_s
            table[key][1] += cpu_s


def _subset(data: DataBundle, n: int) -> DataBundle:
    n = max(1, min(n, len(data.train)))
    small = Split(data.train.x[:n], data.train.y[:n])
    return dataclasses.replace(data, train=small, info=dict(data.info))


def _step_seconds(model: torch.nn.Module, data: DataBundle, budget: Any) -> float:
    """Seconds per step of the real training loop at ``budget``'s batch size."""
    from bench.train import train

    kw = budget.model_dump()
    bs = budget.batch_size
    kw.update(epochs=1, warmup_epochs=0)
    train(model, _subset(data, WARMUP_STEPS * bs), **kw)
    stats = train(model, _subset(data, PROBE_STEPS * bs), **kw)
    return stats.seconds / max(1, stats.steps)


def probe(cell: Any, data: DataBundle, device: torch.device) -> ModelProbe:
    """Time training steps, evaluation and measurement of ``cell``'s dense model here."""
    from bench.measure import measure_cost, measure_deployable
    from bench.models import build_model
    from bench.train import evaluate

    m = cell.model

    def fresh() -> torch.nn.Module:
        torch.manual_seed(0)
        return build_model(m.name, data.num_classes, data.in_chans, data.img_size,
                           kwargs=m.kwargs, stem=None if m.stem == "default" else m.stem
                           ).to(device)

    model = fresh()
    step_s = {}
    for budget in (cell.train, cell.finetune):
        if budget.batch_size not in step_s and budget.epochs > 0:
            step_s[budget.batch_size] = _step_seconds(copy.deepcopy(model), data, budget)
    n_eval = min(EVAL_IMAGES, len(data.test))
    small_test = dataclasses.replace(data, test=Split(data.test.x[:n_eval], data.test.y[:n_eval]))
    evaluate(model, small_test, "test")
    t0 = time.perf_counter()
    evaluate(model, small_test, "test")
    eval_s = (time.perf_counter() - t0) / max(1, n_eval)
    measure_s, cuda_s = _measure_seconds(model, data, cell.latency, measure_cost,
                                         measure_deployable)
    return ModelProbe(step_s, eval_s, measure_s, cuda_s, len(data.train),
                      len(data.val) + len(data.test))


def _measure_seconds(model, data, latency, measure_cost, measure_deployable) -> tuple[float, float]:
    """One cell's measurement: a cut-down run, then the timed loops scaled to the suite's."""
    from bench.measure.paired import DEFAULT_CALLS, DEFAULT_ROUNDS

    rounds = getattr(latency, "paired_rounds", DEFAULT_ROUNDS)
    calls = getattr(latency, "paired_calls", DEFAULT_CALLS)
    quick = latency.model_copy(update={"warmup": 1, "min_runs": 2, "min_seconds": 0.0})
    dense = measure_cost(model, data.input_shape)
    t0 = time.perf_counter()
    metrics = measure_deployable(model, data.input_shape, quick, dense, None)
    base = time.perf_counter() - t0
    extra = {"cpu": 0.0, "cuda": 0.0}
    for dev in extra:
        for summary in ((metrics.get("latency") or {}).get(dev) or {}).values():
            if not isinstance(summary, dict) or "median_ms" not in summary:
                continue
            one = float(summary["median_ms"]) / 1000.0
            runs = max(latency.min_runs, math.ceil(latency.min_seconds / max(one, 1e-9)))
            runs = min(runs, latency.max_runs)
            # plus the paired timing against the dense reference: rounds x calls, both sides
            paired = 2 * (rounds * calls + latency.warmup)
            extra[dev] += (latency.warmup + runs + paired) * one
            if dev == "cpu":  # each deployment runtime: another paired timing (eager's pace)
                extra[dev] += paired * one * len(_other_runtimes(latency))
    prepare = sum(PREPARE_S.get(rt, 0.0) for rt in _other_runtimes(latency))
    return base + extra["cpu"] + 2 * prepare * len(latency.batch_sizes), extra["cuda"]


# rough seconds to prepare one side at one batch size for a runtime (export, compile)
PREPARE_S = {"compile": 15.0, "onnxruntime": 2.0}


def _other_runtimes(latency: Any) -> list[str]:
    return [rt for rt in getattr(latency, "runtimes", ("eager",)) if rt != "eager"]


def _train_s(p: ModelProbe, budget: Any, epochs: float) -> float:
    steps = math.ceil(p.train_size / budget.batch_size)
    return epochs * steps * p.step_s.get(budget.batch_size, 0.0)


def _compress_training_epochs(cell: Any) -> float:
    """Epochs of training a method does inside ``compress`` (known methods), else 0."""
    ratio = next(iter((cell.target or {}).values()), 1.0)
    if cell.method == "dense-small":  # a narrow model trained from scratch per target
        return cell.train.epochs * max(ratio, 0.3)
    return 0.0


def estimate_suite(suite: Any, results_dir: str | Path, data_root: str | None = None, *,
                   device: torch.device | None = None,
                   retry_failed: bool = False, share_timing: bool = True) -> Estimate:
    """Probe each distinct model of the cells still to run and add up their work."""
    from bench.cells import expand
    from bench.data import load_dataset
    from bench.plugins import get_method
    from bench.store import ResultStore

    device = device or torch.device("cuda" if torch.cuda.is_available() else "cpu")
    store = ResultStore(results_dir)
    est = Estimate(device=device.type)
    started = time.perf_counter()
    cells = [c for c in expand(suite) if not store.is_done(c.id, retry_failed)]
    est.todo = cells
    est.checkpointed = {c.baseline_key() for c in cells if store.has_checkpoint(c.baseline_key())}
    records = [r for r in store.records() if r.get("status") == "ok"]
    bundles: dict[str, DataBundle | None] = {}
    probes: dict[tuple[str, str], ModelProbe] = {}
    trained: set[str] = set()
    families: set[str] = set()
    timed: set[str] = set()  # rows (and seeds) whose architecture is priced as timed
    for c in cells:
        dkey = c.dataset.model_dump_json()
        if dkey not in bundles:
            try:
                bundles[dkey] = load_dataset(c.dataset.name, c.dataset.options, data_root)
            except Exception as exc:
                bundles[dkey] = None
                est.missing.append(f"dataset '{c.dataset.display}': {type(exc).__name__}: "
                                   f"{str(exc).splitlines()[0]}")
        data = bundles[dkey]
        if data is None:
            continue
        pkey = (c.model.model_dump_json(), dkey)
        if pkey not in probes:
            probes[pkey] = probe(c, data, device)
        p = probes[pkey]
        est.cells += 1
        label, method = c.model.display, c.method_label
        if store.has_pending(c.id):
            est.add(label, method, p.measure_cuda_s, p.measure_s, cell=c.id,
                    timing_s=p.measure_cuda_s)
            continue

        kind = get_method(c.method).kind
        key = c.training_key() if kind == "train" else c.baseline_key()
        if key not in trained and not store.has_checkpoint(key):
            trained.add(key)
            est.trainings += 1
            owner = method if kind == "train" else "(dense baselines)"
            est.add(label, owner, _train_s(p, c.train, c.train.epochs), cell=c.id)
        same = [r for r in records if r.get("model") == label and r.get("method_name") == c.method
                and r.get("dataset") == c.dataset.display]
        if same:
            compress = sum(float(r["cost"].get("compress_s", 0.0)) for r in same) / len(same)
        else:
            compress = _train_s(p, c.train, _compress_training_epochs(c))
        finetune = _train_s(p, c.finetune, c.finetune.epochs)  # every row, dense included
        if c.recovery is not None:  # one compression and one lr choice per row and seed
            family = c.family_key()
            first = family not in families
            families.add(family)
            compress = compress if first else 0.0
            top = max(int(e) for e in c.recovery["budgets"])
            grid = len(c.recovery["lr_grid"])
            tunes = first and c.lr_donor_seed is None  # else it reuses the first seed's lr
            tuning = _train_s(p, c.finetune, top) * grid if tunes else 0.0
            # the largest budget's cell is the tuning run the lr choice kept
            finetune = tuning + (0.0 if c.finetune.epochs == top and c.lr_donor_seed is None
                                 else finetune)
            if grid > 1 and tunes:
                evaluation_val = grid * len(data.val) * p.eval_s_per_image
                finetune += evaluation_val
        evaluation = p.eval_size * p.eval_s_per_image
        times = not share_timing or c.family_key() not in timed
        timed.add(c.family_key())
        cuda_s, cpu_s = (p.measure_cuda_s, p.measure_s) if times else (0.0, 0.0)
        est.add(label, method, compress + finetune + evaluation + cuda_s, cpu_s, cell=c.id,
                timing_s=cuda_s)
    est.probe_s = time.perf_counter() - started
    return est


def scheduled_wall_s(est: Estimate, cells: list[Any], jobs: int, split: bool,
                     baseline_cached: Callable[[str], bool], defer_timing: bool = True) -> float:
    """Wall seconds of the run on ``jobs`` workers: its units dispatched in the runner's order
    (bench.run.plan.group_cells), each to the first free worker, wave by wave (a later
    seed waits for the first seed's lr choice, bench.run.driver.lr_waves), and each wave's
    timing after its units when the workers defer it. A unit that needs a dense baseline
    another unit trains starts no earlier than that unit ends."""
    from bench.plugins import get_method
    from bench.run.driver import lr_waves
    from bench.run.plan import group_cells

    wall = 0.0
    for wave in lr_waves([c for c in cells if c.id in est.cell_work]):
        free = [wall] * max(1, jobs)
        trained_by: dict[str, float] = {}  # baseline key -> when the unit training it ends
        for unit in group_cells(wave, baseline_cached, split=split).values():
            work = sum(est.cell_work[c.id] for c in unit)
            if not defer_timing:
                work += sum(est.cell_timing[c.id] for c in unit)
            k = min(range(len(free)), key=free.__getitem__)
            baseline = unit[0].baseline_key()
            waits = get_method(unit[0].method).kind != "train" and not baseline_cached(baseline)
            start = max(free[k], trained_by.get(baseline, 0.0)) if waits else free[k]
            free[k] = start + work
            if waits:
                trained_by.setdefault(baseline, free[k])  # the first such unit trains it
        wall = max(free)
        if defer_timing:
            wall += sum(est.cell_timing[c.id] for c in wave)
    return wall


def _hours(seconds: float) -> str:
    return f"{seconds / 3600:.2f} h" if seconds >= 360 else f"{seconds / 60:.1f} min"


def format_estimate(est: Estimate, jobs: int = 1, executor: str | None = None) -> str:
    """The dry run's lines: totals, then per model and per method."""
    gpu = est.device == "cuda"
    dev_name = "GPU" if gpu else "CPU"
    lines = [f"estimate from a probe on this machine's {est.device} ({est.probe_s:.0f} s: a few "
             f"training steps, an evaluation and a measurement of each model), for "
             f"{est.cells} cell(s) and {est.trainings} training(s) from scratch:"]
    if gpu:
        lines.append(f"  GPU-hours {est.device_s / 3600:.2f}, CPU-hours {est.cpu_s / 3600:.2f} "
                     "(latency timing); serial wall time about "
                     f"{_hours(est.total_s)}")
    else:
        lines.append(f"  CPU-hours {est.total_s / 3600:.2f} (serial wall time about "
                     f"{_hours(est.total_s)}); GPU-hours: no CUDA device here, run --dry-run on "
                     "the GPU machine for its figure")
    if jobs > 1 and executor != "serial":
        executor = executor or "local"
        wall = scheduled_wall_s(est, est.todo, jobs, split=executor == "local",
                                baseline_cached=est.checkpointed.__contains__)
        lines.append(f"  with {jobs} jobs ({executor}): about {_hours(wall)} of wall time, the "
                     "units dispatched in the run's order to the first free worker and "
                     f"timed after them ({_hours(est.total_s / jobs)} if the work divided "
                     "evenly)")
    for title, table in (("per model", est.per_model), ("per method", est.per_method)):
        lines.append(f"  {title}:")
        width = max((len(k) for k in table), default=0)
        for key, (dev_s, cpu_s) in sorted(table.items(), key=lambda kv: -sum(kv[1])):
            split = (f"{dev_s / 3600:.3f} {dev_name}-h + {cpu_s / 3600:.3f} CPU-h timing" if gpu
                     else f"{(dev_s + cpu_s) / 3600:.3f} CPU-h")
            lines.append(f"    {key:<{width}}  {split}")
    for why in est.missing:
        lines.append(f"  no estimate for cells of {why}")
    return "\n".join(lines)
