"""svd-accel's layer timings: cached on disk across calls, fewer ranks timed, and
untimed ranks bracketed by the timed ones."""

from __future__ import annotations

import copy
import json

import torch
from torch import nn

from bench.measure import measure_cost
from bench.method import MethodContext, Target
from methods import accel
from methods.accel import MAX_TIMED_RANKS, AccelParams, AccelRankChooser, SVDAccel
from methods.layers import LowRankLinear
from methods.layers import paired_timing as pt
from methods.layers.paired_timing import LayerTimings, PairedTiming
from methods.layers.timing_cache import TimingCache

SHAPE = (1, 16, 16)


def mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, 256),
                         nn.ReLU(), nn.Linear(256, 10))


def ctx_for(model: nn.Module) -> MethodContext:
    empty = lambda: iter(())  # noqa: E731
    return MethodContext(device=torch.device("cpu"), generator=torch.Generator(), seed=0,
                         calibration_batches=empty, val_batches=empty,
                         measure=lambda m: measure_cost(m, SHAPE),
                         dense_cost=measure_cost(model, SHAPE), input_shape=SHAPE)


def test_a_second_call_on_the_same_shapes_times_nothing(monkeypatch, tmp_path):
    calls: list[int] = []

    def timer(module, in_shape, batch, threads):
        calls.append(1)
        return 0.5 if isinstance(module, LowRankLinear) else 1.0

    # the counting timer stands in for the library's own (whose timings are cached)
    monkeypatch.setattr(pt, "measure_ms", timer)
    monkeypatch.setattr(pt, "DEFAULT_TIMER", timer)
    monkeypatch.setattr(accel, "DISK_CACHE", TimingCache(tmp_path / "t.json"))
    params = {"timing_rounds": 3, "timing_batches": [1, 4], "sequential_freezing": False,
              "ablation": False, "rank_selection": "local"}
    infos = []
    for _ in range(2):
        monkeypatch.setattr(accel, "_TIMING_CACHE", {})  # a new process: only the disk
        model = mlp()
        ctx = ctx_for(model)
        SVDAccel(params).compress(copy.deepcopy(model), Target("macs", 0.5), ctx)
        infos.append((ctx.info["ranks"], len(calls)))
        calls.clear()
    (ranks1, first), (ranks2, second) = infos
    assert first > 0 and second == 0 and ranks1 == ranks2
    saved = json.loads((tmp_path / "t.json").read_text())
    assert saved and all(len(v["ratios"]) == 3 for v in saved.values())
    # at most MAX_TIMED_RANKS ranks per layer shape are timed; the two hidden layers share
    # one shape (the classifier stays dense by default)
    per_shape: dict[str, int] = {}
    for key in saved:
        per_shape[key.rsplit("|", 1)[0]] = per_shape.get(key.rsplit("|", 1)[0], 0) + 1
    assert len(per_shape) == 1 and 2 <= max(per_shape.values()) <= MAX_TIMED_RANKS


def test_a_test_timer_is_never_written_to_disk(monkeypatch, tmp_path):
    monkeypatch.setattr(pt, "measure_ms", lambda m, s, b, t: 1.0)
    monkeypatch.setattr(accel, "DISK_CACHE", TimingCache(tmp_path / "t.json"))
    monkeypatch.setattr(accel, "_TIMING_CACHE", {})
    accel.time_layer(nn.Linear(32, 32), (32,), [8, 16], AccelParams(timing_rounds=1))
    assert not (tmp_path / "t.json").exists()


def test_untimed_ranks_are_bracketed_by_timed_ones():
    class Sp:  # the two fields basis() reads
        path = "l"

    timings = LayerTimings(pairs={8: PairedTiming([0.5] * 5), 16: PairedTiming([0.99] * 5),
                                  24: PairedTiming([1.5] * 5)})
    chooser = AccelRankChooser([], "local", "macs", AccelParams(), {"l": timings})
    assert chooser.basis(Sp, 8) == "timed faster"
    assert chooser.basis(Sp, 4) == "timed faster"  # below a clearly faster rank
    assert chooser.basis(Sp, 12) == "macs (between timed ranks)"  # next timed rank: a tie
    assert chooser.basis(Sp, 16) == "macs (timings within noise)"
    assert chooser.basis(Sp, 32) == "timed slower"  # above a clearly slower rank
    assert chooser.basis(Sp, 20) == "macs (between timed ranks)"


def test_a_corrupt_cache_file_is_ignored(tmp_path):
    path = tmp_path / "t.json"
    path.write_text("{not json")
    cache = TimingCache(path)
    assert cache.get("x") is None
    cache.put_many({"x": {"ratios": [1.0]}})
    assert TimingCache(path).get("x") == {"ratios": [1.0]}
