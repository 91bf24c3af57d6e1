"""Acceleration options: rank quantization, skip rule, merging, sequential freezing."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from bench.data import load_dataset
from bench.measure import measure_cost
from bench.method import MethodContext, Target
from bench.train import train
from methods.accel import (
    AccelParams,
    SequentialFreezer,
    SVDAccel,
    decompose_accel,
    factor_pairs,
    merge_linear_chains,
    merge_maps,
    quantize_rank,
)
from methods.layers import LowRankLinear, factorize, select_layers

SHAPE = (1, 8, 8)


def mlp(width: int = 128) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(64, width), nn.ReLU(), nn.Linear(width, width),
                         nn.ReLU(), nn.Linear(width, 10))


def make_ctx(model: nn.Module) -> MethodContext:
    empty = lambda: iter(())  # noqa: E731
    return MethodContext(device=torch.device("cpu"), generator=torch.Generator(), seed=0,
                         calibration_batches=empty, val_batches=empty,
                         measure=lambda m: measure_cost(m, SHAPE),
                         dense_cost=measure_cost(model, SHAPE), input_shape=SHAPE)


@pytest.mark.parametrize("multiple", [8, 16, 32, 64])
def test_quantize_rank_returns_multiples(multiple):
    for rank in range(1, 300, 7):
        q = quantize_rank(rank, multiple, full_rank=512)
        assert q % multiple == 0 and q >= multiple
        assert abs(q - rank) <= multiple // 2 or rank < multiple
    assert quantize_rank(500, multiple, full_rank=100) <= 100


@pytest.mark.parametrize("multiple", [8, 16])
def test_svd_accel_ranks_are_multiples_and_meet_budget(multiple):
    model = mlp()
    ctx = make_ctx(model)
    target = Target("macs", 0.5)
    params = {"rank_multiple": multiple, "timing": False, "sequential_freezing": False}
    out = SVDAccel(params).compress(copy.deepcopy(model), target, ctx)
    assert measure_cost(out, SHAPE).macs <= 0.5 * ctx.dense_cost.macs
    ranks = [r for r in ctx.info["ranks"].values() if r is not None]
    assert ranks and all(r % ctx.info["rank_multiple"] == 0 for r in ranks)
    assert ctx.info["rank_multiple"] == multiple
    assert any(isinstance(m, LowRankLinear) for m in out.modules())


def test_multiple_is_halved_when_it_cannot_meet_the_budget():
    model = mlp(width=128)  # at rank 64 no layer is cheaper factorized
    ctx = make_ctx(model)
    out = SVDAccel({"rank_multiple": 64, "timing": False}).compress(
        copy.deepcopy(model), Target("params", 0.3), ctx)
    assert measure_cost(out, SHAPE).params <= 0.3 * ctx.dense_cost.params
    multiple = ctx.info["rank_multiple"]
    assert multiple < 64
    assert all(r % multiple == 0 for r in ctx.info["ranks"].values() if r is not None)


def test_skip_rule_by_macs_threshold_keeps_unprofitable_layers_dense():
    model = mlp()
    layers = select_layers(model)
    opts = AccelParams(timing=False, rank_multiple=8, skip_threshold=0.2)
    ctx = make_ctx(model)
    decompose_accel(copy.deepcopy(model), Target("macs", 0.9), ctx, layers, "local", opts)
    # a 10% saving is reachable without any layer below 20% of its dense MACs
    assert all(r is None for r in ctx.info["ranks"].values())


def test_timed_skip_rule_records_layer_timings_and_meets_budget():
    model = mlp(width=64)
    ctx = make_ctx(model)
    params = {"timing": True, "rank_table": True, "timing_batches": [8]}
    out = SVDAccel(params).compress(copy.deepcopy(model), Target("macs", 0.4), ctx)
    assert measure_cost(out, SHAPE).macs <= 0.4 * ctx.dense_cost.macs
    times = ctx.info["relative_layer_time"]
    assert set(times) == set(select_layers(model)) and all(times.values())


def test_merging_two_linear_maps_preserves_outputs():
    torch.manual_seed(0)
    seq = nn.Sequential(nn.Linear(20, 30), nn.Dropout(0.0), nn.Linear(30, 12), nn.ReLU(),
                        nn.Linear(12, 5))
    x = torch.randn(7, 20)
    ref = seq(x)
    assert merge_linear_chains(seq) == 1
    assert isinstance(seq[0], nn.Linear) and isinstance(seq[2], nn.Identity)
    assert (seq(x) - ref).abs().max() < 1e-4
    assert sum(isinstance(m, nn.Linear) for m in seq.modules()) == 2


def test_merging_factorized_pair_with_next_layer_goes_through_the_bottleneck():
    torch.manual_seed(0)
    a = factorize(nn.Linear(40, 48), 6)
    b = nn.Linear(48, 36)
    x = torch.randn(4, 40)
    ref = b(a(x))
    merged = merge_maps([a.first, a.second, b])
    assert isinstance(merged, LowRankLinear) and merged.rank == 6
    assert (merged(x) - ref).abs().max() < 1e-4


def test_sequential_freezing_leaves_frozen_factor_unchanged():
    data = load_dataset("digits")
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), factorize(nn.Linear(64, 32), 8), nn.ReLU(),
                          factorize(nn.Linear(32, 10), 4))
    ctx = make_ctx(model)
    snaps: list[dict[str, torch.Tensor]] = []

    class Watch(SVDAccel):
        def on_epoch_end(self, model, ctx):
            snaps.append({k: v.detach().clone() for k, v in model.state_dict().items()})
            super().on_epoch_end(model, ctx)

    start = {k: v.detach().clone() for k, v in model.state_dict().items()}
    train(model, data, epochs=2, batch_size=128, optimizer="adamw", lr=1e-2, weight_decay=0.1,
          augment=False, method=Watch(), ctx=ctx, phase="finetune")
    firsts = [k for k in start if ".first." in k]
    seconds = [k for k in start if ".second." in k]
    # epoch 0: "first" factors frozen (not even decayed), "second" factors train
    assert all(torch.equal(snaps[0][k], start[k]) for k in firsts)
    assert all(not torch.equal(snaps[0][k], start[k]) for k in seconds)
    # epoch 1: the other way round
    assert all(torch.equal(snaps[1][k], snaps[0][k]) for k in seconds)
    assert all(not torch.equal(snaps[1][k], snaps[0][k]) for k in firsts)
    assert all(p.requires_grad for p in model.parameters())  # handed back trainable


def test_freezer_ignores_other_phases():
    model = nn.Sequential(factorize(nn.Linear(8, 8), 2))
    ctx = make_ctx(nn.Sequential(nn.Flatten(), nn.Linear(64, 2)))
    ctx.phase = "train"
    SequentialFreezer().before_step(model, ctx)
    assert all(p.requires_grad for p in model.parameters())
    assert len(factor_pairs(model)) == 1
