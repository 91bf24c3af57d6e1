"""Monarch convolutions: exact self-projection, dense equivalence, closed-form MACs, ResNets."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from bench.measure import count_macs, count_params, measure_cost
from bench.method import MethodContext, NotApplicableError, Target
from methods.layers import set_module
from methods.layers.monarch_conv import MonarchConv2d, monarch_conv_weights
from methods.monarch import Monarch, MonarchScratch

# (C_in, C_out, k, nblocks, stride, padding): square, expanding, shrinking, 1x1,
# channel counts nblocks does not divide, strided
CONVS = [(16, 16, 3, 4, 1, 1), (12, 20, 3, 3, 2, 1), (20, 12, 3, 4, 1, 0), (10, 7, 1, 3, 1, 0),
         (13, 29, 3, 4, 1, 2), (8, 8, 5, 2, 2, 2), (6, 6, 3, 6, 1, 1)]


def dense_equivalent(layer: MonarchConv2d) -> nn.Conv2d:
    """The plain Conv2d computing the same map as a Monarch conv."""
    g = layer.geometry()
    conv = nn.Conv2d(layer.in_channels, layer.out_channels, layer.kernel_size,
                     bias=layer.bias is not None, **g).to(layer.first.weight.dtype)
    with torch.no_grad():
        conv.weight.copy_(layer.dense_weight())
        if layer.bias is not None:
            conv.bias.copy_(layer.bias)
    return conv


@pytest.mark.parametrize("cin,cout,k,b,stride,pad", CONVS)
def test_forward_equals_its_dense_kernel(cin, cout, k, b, stride, pad):
    torch.manual_seed(0)
    layer = MonarchConv2d(cin, cout, k, b, stride=stride, padding=pad)
    x = torch.randn(2, cin, 11, 11)
    with torch.no_grad():
        assert (layer(x) - dense_equivalent(layer)(x)).abs().max() < 1e-4


@pytest.mark.parametrize("cin,cout,k,b,stride,pad", CONVS)
def test_monarch_structured_conv_projects_onto_itself(cin, cout, k, b, stride, pad):
    torch.manual_seed(0)
    layer = MonarchConv2d(cin, cout, k, b, stride=stride, padding=pad)
    dense = dense_equivalent(layer)
    again = MonarchConv2d.from_conv(dense, b)
    with torch.no_grad():
        w = layer.dense_weight()
        assert float((again.dense_weight() - w).norm() / w.norm()) < 1e-5
        x = torch.randn(3, cin, 9, 9)
        assert (again(x) - dense(x)).abs().max() < 1e-4


@pytest.mark.parametrize("cin,cout,k,b,stride,pad", CONVS[:4])
def test_projection_beats_nearby_monarch_convs(cin, cout, k, b, stride, pad):
    torch.manual_seed(1)
    w = torch.randn(cout, cin, k, k, dtype=torch.float64)
    proj = MonarchConv2d.from_dense(w, b)
    with torch.no_grad():
        best = float((proj.dense_weight() - w).norm())
        for _ in range(5):
            other = copy.deepcopy(proj)
            for prm in (other.first.weight, other.second.weight):
                prm.add_(1e-2 * torch.randn_like(prm))
            assert best <= float((other.dense_weight() - w).norm()) + 1e-12
        assert best < float(w.norm())


@pytest.mark.parametrize("cin,cout,k,b,stride,pad", CONVS)
def test_macs_and_params_match_closed_form(cin, cout, k, b, stride, pad):
    layer = MonarchConv2d(cin, cout, k, b, stride=stride, padding=pad)
    out = layer(torch.zeros(1, cin, 10, 10))
    pixels = out.shape[-1] * out.shape[-2]
    assert count_macs(layer, (cin, 10, 10)) == pixels * monarch_conv_weights(cin, cout, k * k, b)
    assert count_params(layer) == monarch_conv_weights(cin, cout, k * k, b) + cout


def test_closed_form_shrinks_like_nblocks():
    # square channels that divide: (k*k + 1) / (nblocks * k*k) of dense
    for c, k, b in [(64, 3, 4), (32, 1, 2), (128, 3, 8)]:
        assert monarch_conv_weights(c, c, k * k, b) / (c * c * k * k) == pytest.approx(
            (k * k + 1) / (b * k * k))


def tiny_resnet() -> nn.Module:
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    return timm.create_model("resnet10t", pretrained=False, num_classes=10, in_chans=1,
                             channels=[8, 16, 32, 64], stem_width=8).eval()


def make_ctx(model: nn.Module, shape: tuple[int, ...]) -> MethodContext:
    empty = lambda: iter(())  # noqa: E731
    return MethodContext(device=torch.device("cpu"), generator=torch.Generator(), seed=0,
                         calibration_batches=empty, val_batches=empty,
                         measure=lambda m: measure_cost(m, shape),
                         dense_cost=measure_cost(model, shape), input_shape=shape)


SHAPE = (1, 16, 16)


def test_monarch_reaches_half_the_macs_of_a_small_resnet_with_conv_form():
    model = tiny_resnet()
    ctx = make_ctx(model, SHAPE)
    out = Monarch().compress(copy.deepcopy(model), Target("macs", 0.5), ctx).eval()
    assert ctx.info["budget_met"] and ctx.info["achieved_ratio"] <= 0.5
    assert measure_cost(out, SHAPE).macs <= 0.5 * ctx.dense_cost.macs
    convs = {p for p, m in out.named_modules() if isinstance(m, MonarchConv2d)}
    assert convs and "layer1.0.conv1" in convs
    assert isinstance(out.get_submodule("conv1.0"), nn.Conv2d)  # first conv dense
    assert isinstance(out.fc, nn.Linear)  # classifier dense
    # the model's MACs are the dense MACs minus each layer's closed-form saving
    pixels = {}
    hooks = [m.register_forward_hook(
        lambda mod, i, o, p=p: pixels.__setitem__(p, o.shape[-1] * o.shape[-2]))
        for p, m in out.named_modules() if isinstance(m, MonarchConv2d)]
    out(torch.zeros(1, *SHAPE))
    for h in hooks:
        h.remove()
    saved = 0
    for path in convs:
        m = out.get_submodule(path)
        dense_w = m.in_channels * m.out_channels * m.kernel_area
        saved += pixels[path] * (dense_w - monarch_conv_weights(
            m.in_channels, m.out_channels, m.kernel_area, m.nblocks))
    assert measure_cost(out, SHAPE).macs == ctx.dense_cost.macs - saved
    assert out(torch.randn(2, *SHAPE)).shape == (2, 10)


def test_resnet_of_monarch_convs_matches_its_dense_reconstruction():
    """Dense-equivalent reconstruction: a Monarch-structured network, made dense, is
    projected back exactly (full rank of every block pair), outputs within 1e-4."""
    model = tiny_resnet()
    ctx = make_ctx(model, SHAPE)
    monarch = Monarch().compress(copy.deepcopy(model), Target("macs", 0.5), ctx).eval()
    nb = ctx.info["nblocks"]
    dense = copy.deepcopy(monarch)
    for path, m in list(dense.named_modules()):
        if isinstance(m, MonarchConv2d):
            set_module(dense, path, dense_equivalent(m))
    x = torch.randn(4, *SHAPE)
    with torch.no_grad():
        ref = monarch(x)
        assert (dense(x) - ref).abs().max() < 1e-4
        ctx2 = make_ctx(model, SHAPE)
        again = Monarch({"max_nblocks": nb}).compress(dense, Target("macs", 0.5), ctx2).eval()
        assert ctx2.info["nblocks"] == nb
        assert max(ctx2.info["projection_rel_error"].values()) < 1e-5
        assert (again(x) - ref).abs().max() < 1e-4


def test_monarch_scratch_trains_conv_form_at_the_target():
    model = tiny_resnet()
    ctx = make_ctx(model, SHAPE)
    params = MonarchScratch.params_for_target(MonarchScratch.Params().model_dump(),
                                              {"macs": 0.25})
    method = MonarchScratch(params)
    prepared = method.prepare(copy.deepcopy(model), ctx)
    assert any(isinstance(m, MonarchConv2d) for m in prepared.modules())
    assert measure_cost(prepared, SHAPE).macs <= 0.25 * ctx.dense_cost.macs
    out = method.compress(prepared, Target("macs", 0.25), ctx)
    assert ctx.info["trained_for"] == {"macs": 0.25} and not ctx.info["reprojected"]
    assert out(torch.randn(2, *SHAPE)).shape == (2, 10)


def test_monarch_scratch_does_not_train_for_an_unreachable_target():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 32, 3, padding=1), nn.ReLU(), nn.Conv2d(32, 32, 3),
                          nn.ReLU(), nn.Flatten(), nn.Linear(32 * 6 * 6, 64), nn.ReLU(),
                          nn.Linear(64, 10))
    ctx = make_ctx(model, (1, 8, 8))
    params = MonarchScratch.params_for_target({"convs": False}, {"macs": 0.25})
    with pytest.raises(NotApplicableError, match=r"cannot reach macs<=0.25"):
        MonarchScratch(params).prepare(copy.deepcopy(model), ctx)
    # with convs the same target is reachable
    params = MonarchScratch.params_for_target({}, {"macs": 0.25})
    prepared = MonarchScratch(params).prepare(copy.deepcopy(model), ctx)
    assert measure_cost(prepared, (1, 8, 8)).macs <= 0.25 * ctx.dense_cost.macs
