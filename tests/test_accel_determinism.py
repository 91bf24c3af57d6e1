"""svd-accel decides from paired timings with a margin, falls back to MACs within noise,
records what it decided from, and separates what each technique buys."""

from __future__ import annotations

import copy
import random

import pytest
import torch
from torch import nn

from bench.data import load_dataset
from bench.measure import measure_cost
from bench.method import MethodContext, Target
from bench.train import train
from methods import accel
from methods.accel import SVDAccel
from methods.layers import LowRankLinear
from methods.layers import paired_timing as pt
from methods.layers.paired_timing import PairedTiming
from methods.layers.ranks import val_scores
from methods.svd import SVD

SHAPE = (1, 8, 8)
HALF = Target("macs", 0.5)


def mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 128),
                         nn.ReLU(), nn.Linear(128, 10))


def make_ctx(model: nn.Module, val=None) -> MethodContext:
    empty = lambda: iter(())  # noqa: E731
    return MethodContext(device=torch.device("cpu"), generator=torch.Generator(), seed=0,
                         calibration_batches=empty, val_batches=val or empty,
                         measure=lambda m: measure_cost(m, SHAPE),
                         dense_cost=measure_cost(model, SHAPE), input_shape=SHAPE)


def fake_timer(ratio_of, seed: int, jitter: float):
    """A timer: dense takes 1 ms, a factorized rank r takes ratio_of(layer, r) ms, both
    with multiplicative noise of +-jitter from a generator seeded per run."""
    rng = random.Random(seed)

    def timer(module, in_shape, batch, threads):
        noise = 1.0 + rng.uniform(-jitter, jitter)
        if isinstance(module, LowRankLinear):
            return ratio_of(module, module.rank) * noise
        return 1.0 * noise
    return timer


def run(monkeypatch, timer, target=HALF, **params) -> dict:
    monkeypatch.setattr(pt, "measure_ms", timer)
    monkeypatch.setattr(accel, "_TIMING_CACHE", {})  # every run times afresh
    model = mlp()
    ctx = make_ctx(model)
    p = {"timing": True, "timing_rounds": 7, "timing_batches": [1, 8],
         "sequential_freezing": False, "ablation": False, "rank_selection": "local", **params}
    SVDAccel(p).compress(copy.deepcopy(model), target, ctx)
    return ctx.info


def macs_ratio(m: LowRankLinear, r: int) -> float:
    return r * (m.in_features + m.out_features) / (m.in_features * m.out_features)


def test_verdict_regions():
    assert PairedTiming([0.5, 0.52, 0.48]).verdict(0.05) == "faster"
    assert PairedTiming([1.5, 1.52, 1.48]).verdict(0.05) == "slower"
    assert PairedTiming([0.96, 0.97, 0.95]).verdict(0.05) == "tie"
    # a clear median but noise as large as the gap: within noise
    assert PairedTiming([0.3, 0.9, 0.85, 0.4, 0.88]).verdict(0.05) == "tie"


def test_paired_rounds_alternate_order():
    calls = []

    def timer(module, in_shape, batch, threads):
        calls.append("d" if isinstance(module, nn.Linear) else "f")
        return 1.0

    pt.paired_timings(nn.Linear(8, 8), {2: LowRankLinear(8, 8, 2)}, (8,), [1], 4, 1, timer)
    assert calls == ["d", "f", "f", "d", "d", "f", "f", "d"]


def test_near_parity_timings_fall_back_to_macs_and_runs_agree(monkeypatch):
    # the factorized layer is 5% faster +-4% noise: exactly at the margin, where an
    # undecided rule would flip between runs
    near = lambda m, r: 0.95  # noqa: E731
    runs = [run(monkeypatch, fake_timer(near, seed, 0.04)) for seed in (1, 2, 3)]
    assert runs[0]["ranks"] == runs[1]["ranks"] == runs[2]["ranks"]
    macs_only = run(monkeypatch, fake_timer(near, 0, 0.0), timing=False)
    assert runs[0]["ranks"] == macs_only["ranks"]
    assert set(runs[0]["skip_basis"].values()) == {"macs (timings within noise)"}
    rec = runs[0]["skip_timings"]["3"]
    assert all(len(v["ratios"]) == 7 and v["verdict"] == "tie" for v in rec.values())


def test_clear_timings_decide_and_runs_agree(monkeypatch):
    # factorized clearly faster (well below its MACs) at +-10% noise: decided by time,
    # also where the MACs rule alone (threshold 0.01) would have skipped every layer
    fast = lambda m, r: 0.5 * macs_ratio(m, r)  # noqa: E731
    runs = [run(monkeypatch, fake_timer(fast, seed, 0.10), Target("macs", 0.9),
                skip_threshold=0.01) for seed in (1, 2)]
    assert runs[0]["ranks"] == runs[1]["ranks"]
    assert any(r is not None for r in runs[0]["ranks"].values())
    assert set(runs[0]["skip_basis"].values()) == {"timed faster"}
    assert runs[0]["forced_by_budget"] == []
    # with no timings the MACs threshold skips every layer: only the budget forces some
    macs_only = run(monkeypatch, fake_timer(fast, 0, 0.0), Target("macs", 0.9), timing=False,
                    skip_threshold=0.01)
    assert macs_only["forced_by_budget"] and set(macs_only["skip_basis"].values()) == {"macs"}


def test_clearly_slower_layers_stay_dense_unless_the_budget_forces_them(monkeypatch):
    slow = lambda m, r: 3.0  # noqa: E731
    info = run(monkeypatch, fake_timer(slow, 0, 0.05), Target("macs", 0.9))
    verdicts = {v["verdict"] for layer in info["skip_timings"].values() for v in layer.values()}
    assert verdicts == {"slower"}
    decomposed = {p for p, r in info["ranks"].items() if r is not None}
    assert decomposed and decomposed <= set(info["forced_by_budget"])


@pytest.fixture(scope="module")
def trained():
    data = load_dataset("digits")
    model = mlp()
    train(model, data, epochs=3, batch_size=64, optimizer="adamw", lr=3e-3, weight_decay=0.0,
          augment=False)
    return model, data


def test_ablation_separates_rounding_from_the_speed_up_techniques(trained):
    model, data = trained
    val = lambda: data.batches("val", 128)  # noqa: E731
    ctx = make_ctx(model, val)
    out = SVDAccel({"timing": False, "rank_selection": "global"}).compress(
        copy.deepcopy(model), Target("macs", 0.25), ctx)
    abl = ctx.info["accel_ablation"]
    stages = {row["stage"]: row for row in abl["stages"]}
    assert list(stages) == ["svd", "+rounding", "+top_up", "+skip", "+merging"]
    assert abl["rule"] == "global"
    for row in stages.values():
        assert row["macs_ratio"] <= 0.25 and 0.0 <= row["val_top1"] <= 1.0
    # the first stage is plain svd at the same rule and budget
    svd_ctx = make_ctx(model, val)
    plain = SVD({"rank_selection": "global"}).compress(copy.deepcopy(model),
                                                       Target("macs", 0.25), svd_ctx)
    assert stages["svd"]["val_top1"] == pytest.approx(
        val_scores(plain, val(), torch.device("cpu"))[0])
    assert stages["svd"]["macs_ratio"] == pytest.approx(
        measure_cost(plain, SHAPE).macs / ctx.dense_cost.macs)
    # the last stage is what the cell deploys (before fine-tuning)
    assert stages["+merging"]["macs_ratio"] == pytest.approx(
        measure_cost(out, SHAPE).macs / ctx.dense_cost.macs)
    assert stages["+merging"]["val_top1"] == pytest.approx(
        val_scores(out, val(), torch.device("cpu"))[0])


def test_techniques_switch_each_part_off(trained):
    model, data = trained
    ctx = make_ctx(model)
    SVDAccel({"techniques": [], "rank_selection": "energy", "ablation": False}).compress(
        copy.deepcopy(model), Target("macs", 0.3), ctx)
    svd_ctx = make_ctx(model)
    SVD({"rank_selection": "energy"}).compress(copy.deepcopy(model), Target("macs", 0.3),
                                               svd_ctx)
    assert ctx.info["ranks"] == svd_ctx.info["ranks"]  # no technique: plain svd
    ctx = make_ctx(model)
    method = SVDAccel({"techniques": ["rounding"], "timing": False, "ablation": False})
    method.compress(copy.deepcopy(model), Target("macs", 0.3), ctx)
    assert all(r % 8 == 0 for r in ctx.info["ranks"].values() if r is not None)
    assert method.freezer is None and SVDAccel().freezer is not None


def test_library_api_without_data_still_compresses():
    import bench

    out = bench.compress(mlp(), "svd-accel", macs=0.5, example_input=torch.randn(1, 1, 8, 8),
                         method_params={"timing": False})
    assert out.macs_ratio <= 0.5
    assert out.info["rank_rule_choice"]["chosen"] == "local"
    assert all(row["val_top1"] is None for row in out.info["accel_ablation"]["stages"])
