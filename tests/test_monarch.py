"""Monarch layers: exact self-projection, dense equivalence, closed-form MACs; both methods."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from bench.measure import count_macs, count_params, measure_cost
from bench.method import MethodContext, NotApplicableError, Target
from methods.layers.monarch import MonarchLinear, monarch_shape, monarch_weights
from methods.layers.monarch_conv import MonarchConv2d
from methods.monarch import Monarch, MonarchScratch

# square, rectangular both ways, and nblocks that divide neither size
SHAPES = [(64, 64, 8), (64, 256, 4), (256, 64, 4), (50, 30, 4), (37, 91, 5), (10, 7, 3),
          (48, 48, 5), (16, 16, 16)]


def make_ctx(model: nn.Module, shape: tuple[int, ...]) -> MethodContext:
    empty = lambda: iter(())  # noqa: E731
    return MethodContext(device=torch.device("cpu"), generator=torch.Generator(), seed=0,
                         calibration_batches=empty, val_batches=empty,
                         measure=lambda m: measure_cost(m, shape),
                         dense_cost=measure_cost(model, shape), input_shape=shape)


def mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 256),
                         nn.ReLU(), nn.Linear(256, 10))


@pytest.mark.parametrize("m,n,b", SHAPES)
def test_monarch_matrix_projects_onto_itself(m, n, b):
    torch.manual_seed(0)
    layer = MonarchLinear(m, n, b)
    dense = layer.dense_matrix().detach()
    again = MonarchLinear.from_dense(dense, b).dense_matrix().detach()
    assert float((again - dense).norm() / dense.norm()) < 1e-5


@pytest.mark.parametrize("m,n,b", SHAPES)
def test_projection_beats_nearby_monarch_matrices(m, n, b):
    torch.manual_seed(1)
    w = torch.randn(n, m, dtype=torch.float64)
    proj = MonarchLinear.from_dense(w, b)
    with torch.no_grad():
        best = float((proj.dense_matrix() - w).norm())
        for _ in range(5):
            other = copy.deepcopy(proj)
            for prm in (other.blocks1, other.blocks2):
                prm.add_(1e-2 * torch.randn_like(prm))
            assert best <= float((other.dense_matrix() - w).norm()) + 1e-12
        assert best < float(w.norm())


@pytest.mark.parametrize("m,n,b", SHAPES)
def test_forward_equals_dense_matrix_from_identity(m, n, b):
    torch.manual_seed(0)
    layer = MonarchLinear(m, n, b).double()
    with torch.no_grad():
        from_identity = (layer(torch.eye(m, dtype=torch.float64)) - layer.bias).T
        assert torch.allclose(from_identity, layer.dense_matrix(), atol=1e-12)
        x = torch.randn(3, 5, m, dtype=torch.float64)
        assert torch.allclose(layer(x), x @ from_identity.T + layer.bias, atol=1e-10)


@pytest.mark.parametrize("m,n,b", SHAPES)
def test_macs_and_params_match_closed_form(m, n, b):
    layer = MonarchLinear(m, n, b)
    p, q, s = monarch_shape(m, n, b)
    assert count_macs(layer, (m,)) == b * q * (p + s) == monarch_weights(m, n, b)
    assert count_macs(layer, (7, m)) == 7 * b * q * (p + s)
    assert count_params(layer) == b * q * (p + s) + n


def test_weights_shrink_like_the_paper_says():
    # about (in + out) / (nblocks * max(in, out)) of dense when the sizes divide
    for m, n, b in [(256, 256, 4), (64, 256, 4), (256, 1024, 8)]:
        assert monarch_weights(m, n, b) / (m * n) == pytest.approx((m + n) / (b * max(m, n)))


@pytest.mark.parametrize("target", [Target("macs", 0.5), Target("macs", 0.125),
                                    Target("params", 0.3)])
def test_monarch_method_meets_budget_with_smallest_nblocks(target):
    model = mlp()
    ctx = make_ctx(model, (1, 8, 8))
    out = Monarch().compress(copy.deepcopy(model), target, ctx)
    got = measure_cost(out, (1, 8, 8)).get(target.metric)
    assert got <= target.ratio * ctx.dense_cost.get(target.metric)
    assert ctx.info["budget_met"] and ctx.info["achieved_ratio"] <= target.ratio
    assert isinstance(out[3], MonarchLinear) and isinstance(out[5], nn.Linear)  # head dense
    nb = ctx.info["nblocks"]
    assert all(m.nblocks == nb for m in out.modules() if isinstance(m, MonarchLinear))
    if nb > 2:  # one block fewer would not have met the budget: not applicable
        ctx2 = make_ctx(model, (1, 8, 8))
        with pytest.raises(NotApplicableError, match=target.label.replace("<", ".")):
            Monarch({"max_nblocks": nb - 1}).compress(copy.deepcopy(model), target, ctx2)
    assert out(torch.randn(2, 1, 8, 8)).shape == (2, 10)


def conv_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 32, 3, padding=1), nn.ReLU(), nn.Conv2d(32, 32, 3),
                         nn.ReLU(), nn.Flatten(), nn.Linear(32 * 6 * 6, 64), nn.ReLU(),
                         nn.Linear(64, 10))


def test_conv_dominated_model_without_convs_is_not_applicable():
    model = conv_net()
    ctx = make_ctx(model, (1, 8, 8))
    with pytest.raises(NotApplicableError, match=r"cannot reach macs<=0.25.*of dense macs"):
        Monarch({"convs": False}).compress(copy.deepcopy(model), Target("macs", 0.25), ctx)


def test_conv_dominated_model_meets_the_budget_with_monarch_convs():
    model = conv_net()
    ctx = make_ctx(model, (1, 8, 8))
    out = Monarch().compress(copy.deepcopy(model), Target("macs", 0.25), ctx)
    assert ctx.info["budget_met"]
    assert isinstance(out[5], MonarchLinear) and isinstance(out[2], MonarchConv2d)
    assert isinstance(out[0], nn.Conv2d)  # the first conv stays dense
    assert ctx.info["achieved_ratio"] == pytest.approx(
        measure_cost(out, (1, 8, 8)).macs / ctx.dense_cost.macs) and \
        ctx.info["achieved_ratio"] <= 0.25


def test_monarch_on_timm_vit_counts_bmm_macs():
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    vit = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=10,
                            in_chans=1, img_size=8, patch_size=2, embed_dim=32, depth=1,
                            num_heads=2)
    shape = (1, 8, 8)
    ctx = make_ctx(vit, shape)
    before = measure_cost(vit, shape).macs
    out = Monarch().compress(copy.deepcopy(vit), Target("macs", 0.5), ctx)
    mons = {p: m for p, m in out.named_modules() if isinstance(m, MonarchLinear)}
    assert {"blocks.0.attn.qkv", "blocks.0.attn.proj", "blocks.0.mlp.fc1",
            "blocks.0.mlp.fc2"} == set(mons)
    tokens = 17
    saved = sum(tokens * (m.in_features * m.out_features
                          - monarch_weights(m.in_features, m.out_features, m.nblocks))
                for m in mons.values())
    assert measure_cost(out, shape).macs == before - saved
    assert ctx.info["budget_met"]


def test_monarch_scratch_trains_monarch_and_reprojects_for_tighter_budgets():
    model = mlp()
    dense_ctx = make_ctx(model, (1, 8, 8))
    method = MonarchScratch({"nblocks": 4})
    prepared = method.prepare(copy.deepcopy(model), dense_ctx)
    assert isinstance(prepared[1], MonarchLinear) and prepared[1].nblocks == 4
    assert isinstance(prepared[5], nn.Linear)
    loose = method.compress(copy.deepcopy(prepared), Target("macs", 0.5), dense_ctx)
    assert not dense_ctx.info["reprojected"] and loose[3].nblocks == 4
    tight_ctx = make_ctx(model, (1, 8, 8))
    tight = method.compress(copy.deepcopy(prepared), Target("macs", 0.1), tight_ctx)
    assert tight_ctx.info["reprojected"] and tight_ctx.info["budget_met"]
    assert tight[3].nblocks > 4


@pytest.mark.parametrize("ratio", [0.5, 0.25, 0.125])
def test_monarch_scratch_can_train_at_the_nblocks_a_budget_needs(ratio):
    model = mlp()
    ctx = make_ctx(model, (1, 8, 8))
    method = MonarchScratch({"train_ratio": ratio})
    prepared = method.prepare(copy.deepcopy(model), ctx)
    nb = ctx.info["trained_nblocks"]
    assert measure_cost(prepared, (1, 8, 8)).macs <= ratio * ctx.dense_cost.macs
    out = method.compress(prepared, Target("macs", ratio), ctx)
    assert not ctx.info["reprojected"] and out[3].nblocks == nb
    smaller = MonarchScratch({"nblocks": nb - 1}).prepare(copy.deepcopy(model), ctx)
    assert measure_cost(smaller, (1, 8, 8)).macs > ratio * ctx.dense_cost.macs
