"""Paired timing: A/A covers 1.0, a model made 2x slower reads 0.5x, the statistics are sound."""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import torch
from torch import Tensor, nn

from bench.measure.paired import bootstrap_median_ci, speedup_stats, time_paired
from bench.measure.selfcheck import aa_check


class Twice(nn.Module):
    """Runs the wrapped module twice per call: exactly twice the work."""

    def __init__(self, inner: nn.Module):
        super().__init__()
        self.inner = inner

    def forward(self, x: Tensor) -> Tensor:
        self.inner(x)
        return self.inner(x)


class Spy(nn.Module):
    """Records the order of calls, train flag and inference mode; echoes its input.

    Deep copies (the timer times fresh copies) share the log and count themselves."""

    def __init__(self, name: str, log: list):
        super().__init__()
        self.name, self.log = name, log
        self.lin = nn.Linear(4, 4)
        self.copies = [0]

    def __deepcopy__(self, memo: dict) -> Spy:
        twin = Spy(self.name, self.log)
        twin.lin = copy.deepcopy(self.lin, memo)
        twin.copies = self.copies
        self.copies[0] += 1
        return twin

    def forward(self, x: Tensor) -> Tensor:
        self.log.append((self.name, self.training, torch.is_inference_mode_enabled(),
                         float(x.sum())))
        return self.lin(x)


def with_retry(measure: Callable[[], Any], ok: Callable[[Any], bool]) -> Any:
    """A timing check on a shared machine: a second try before failing."""
    result = measure()
    return result if ok(result) else measure()


SPEEDUP_KEYS = {"median", "ci_low", "ci_high", "ci_low_stat", "ci_high_stat", "floor_rel",
                "half_width_rel", "rounds", "blocks", "noisy", "stopped"}


def test_entry_has_the_record_shape_and_alternates_abba():
    log: list = []
    model, ref = Spy("m", log).train(), Spy("r", log).train()
    before = torch.get_num_threads()
    out = time_paired(model, ref, (4,), [1, 3], threads=1, rounds=4, calls=2, warmup=1,
                      refresh=1)
    assert torch.get_num_threads() == before
    assert model.training and ref.training  # the originals are not touched
    assert set(out) == {"b1", "b3"}
    e = out["b3"]
    assert set(e) == {"model", "reference", "speedup", "load_avg", "threads"}
    for side in ("model", "reference"):
        assert set(e[side]) == {"p50_ms", "p90_ms", "iqr_ms", "n"} and e[side]["n"] == 8
        assert 0 < e[side]["p50_ms"] <= e[side]["p90_ms"] and e[side]["iqr_ms"] >= 0
    assert set(e["speedup"]) == SPEEDUP_KEYS
    assert e["speedup"]["rounds"] == 4 and e["speedup"]["blocks"] == 2
    assert e["speedup"]["stopped"] == "max_rounds"
    assert e["threads"] == 1 and len(e["load_avg"]) == 2
    assert e["speedup"]["ci_low"] <= e["speedup"]["median"] <= e["speedup"]["ci_high"]
    # fresh copies of both sides for each of the 2 blocks (refresh=1)
    assert model.copies[0] == 2 and ref.copies[0] == 2
    # eval + inference mode; each batch size its own fixed batch
    assert all(not training and inference for _, training, inference, _ in log)
    sums = {}
    for *_, xs in log:  # the first call is b1's batch, then b3's (warm-up order)
        sums.setdefault(xs, f"b{len(sums) * 2 + 1}")
    seq = [f"{name}{sums[xs]}" for name, _, _, xs in log]
    warm = ["mb1", "rb1", "mb3", "rb3"]  # fresh copies warm up on each batch
    abba = ["m", "m", "r", "r", "r", "r", "m", "m"]  # 2 calls per side per round
    lead = ["r", "m"]  # untimed: the block starts as inside one long ABBA run
    block = (warm + [f"{n}b1" for n in lead + abba] + [f"{n}b3" for n in lead + abba])
    # the batch sizes take turns block by block, and each block is ABBA
    assert seq == block + block


def test_rounds_stop_at_the_target_once_min_rounds_are_in():
    # The stopping rule, not this machine's noise: a target any interval meets stops at
    # exactly min_rounds, and one below the resolution floor (the half-width is at least
    # floor_rel) is never met. An A/A target of 0.5 is not a fixed outcome here: over 20
    # runs on a shared 2-core machine its half-width after 6 rounds reached 0.49.
    model = nn.Linear(64, 64)
    out = time_paired(model, copy.deepcopy(model), (64,), [4], threads=1, rounds=200,
                      calls=3, warmup=1, min_rounds=6, target_rel=math.inf, floor_rel=0.0)
    s = out["b4"]["speedup"]
    assert s["rounds"] == 6 and s["stopped"] == "target"
    never = time_paired(model, copy.deepcopy(model), (64,), [4], threads=1, rounds=10,
                        calls=1, warmup=0, min_rounds=4, target_rel=0.05,
                        floor_rel=0.1)["b4"]["speedup"]
    assert never["rounds"] == 10 and never["stopped"] == "max_rounds"
    assert never["half_width_rel"] > 0.05
    fixed = time_paired(model, copy.deepcopy(model), (64,), [4], threads=1, rounds=6,
                        calls=1, warmup=0)["b4"]["speedup"]
    assert fixed["rounds"] == 6 and fixed["stopped"] == "max_rounds"


def test_floor_widens_the_interval_in_quadrature():
    ref, mod = [1.0] * 8, [1.0] * 8
    s = speedup_stats(ref, mod, floor_rel=0.02)
    assert s["ci_low_stat"] == s["ci_high_stat"] == 1.0
    assert s["ci_low"] == pytest.approx(0.98) and s["ci_high"] == pytest.approx(1.02)
    assert s["half_width_rel"] == pytest.approx(0.02)
    # an order effect inside an ABBA block cancels: (1.1 * 1/1.1) per block
    alt = speedup_stats([1.1, 1.0] * 4, [1.0, 1.1] * 4)
    assert alt["median"] == pytest.approx(1.0) and alt["blocks"] == 4


def test_fixed_input_tensor_and_bad_arguments():
    model = nn.Linear(4, 2)
    x = torch.randn(5, 4)
    out = time_paired(model, copy.deepcopy(model), x, None, rounds=2, calls=1, warmup=0)
    assert set(out) == {"b5"}
    with pytest.raises(ValueError, match="batch size to 5"):
        time_paired(model, model, x, [1], rounds=2)
    with pytest.raises(ValueError, match="batch_sizes is required"):
        time_paired(model, model, (4,), None)
    with pytest.raises(ValueError, match="rounds >= 2"):
        time_paired(model, model, (4,), [1], rounds=1)


def test_speedup_statistics_and_deterministic_bootstrap():
    rng = np.random.default_rng(1)
    ref = list(2.0 + 0.05 * rng.standard_normal(40))
    mod = list(1.0 + 0.02 * rng.standard_normal(40))
    s = speedup_stats(ref, mod)
    ratios = [r / m for r, m in zip(ref, mod)]
    blocks = [float(np.sqrt(a * b)) for a, b in zip(ratios[::2], ratios[1::2])]
    assert s["median"] == pytest.approx(float(np.median(blocks)))
    assert s["ci_low"] < s["median"] < s["ci_high"] and s["rounds"] == 40 and s["blocks"] == 20
    assert 1.9 < s["ci_low"] and s["ci_high"] < 2.1 and not s["noisy"]
    assert speedup_stats(ref, mod) == s  # fixed seed: same samples, same interval
    wide = speedup_stats([1.0, 1.0, 3.0, 3.0, 1.0, 1.0, 3.0, 3.0], [1.0] * 8)
    assert wide["noisy"]
    assert bootstrap_median_ci([2.0]) == (2.0, 2.0)
    with pytest.raises(ValueError, match="as many"):
        speedup_stats([1.0], [1.0, 2.0])


def test_a_a_interval_covers_one_on_a_tiny_model():
    """``python -m bench.measure.selfcheck``'s A/A: the model against its own deep copy."""
    # Measured over 20 runs on a shared 2-core machine (load average 1.5): every interval
    # covered 1.0 at the first try, medians 0.99 to 1.023 against the 0.1 allowed.
    model = nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 10))

    def measure() -> dict:
        return aa_check(model, (32,), [1, 16], threads=1, rounds=30, calls=5, warmup=3)

    def ok(out: dict) -> bool:
        return all(e["speedup"]["ci_low"] <= 1.0 <= e["speedup"]["ci_high"]
                   for e in out.values())

    out = with_retry(measure, ok)
    for e in out.values():
        s = e["speedup"]
        assert s["ci_low"] <= 1.0 <= s["ci_high"], s
        assert abs(s["median"] - 1.0) < 0.1, s


def test_a_model_twice_as_slow_reads_half_within_its_interval():
    # ~0.3 ms per call on one thread: long enough that Python overhead is small, short
    # enough that a call is rarely preempted on a loaded machine (the round median skips
    # the calls that were). Measured over 20 runs on a shared 2-core machine (load
    # average 1.5): every one passed at the first try, medians 0.465 to 0.51 against
    # 0.44 to 0.56 allowed, p50 ratio 1.97 to 2.14 against the 1.6 asserted.
    inner = nn.Sequential(nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, 256))
    slow, ref = Twice(inner), copy.deepcopy(inner)

    def measure() -> dict:
        return time_paired(slow, ref, (256,), [32], threads=1, rounds=30, calls=5)["b32"]

    def ok(e: dict) -> bool:
        s = e["speedup"]
        return abs(s["median"] - 0.5) <= 0.06 and s["ci_low"] - 0.03 <= 0.5 <= s["ci_high"] + 0.03

    e = with_retry(measure, ok)
    s = e["speedup"]
    assert abs(s["median"] - 0.5) <= 0.06, s
    assert s["ci_low"] - 0.03 <= 0.5 <= s["ci_high"] + 0.03, s  # tolerance: wrapper, caches
    assert e["model"]["p50_ms"] > 1.6 * e["reference"]["p50_ms"]
