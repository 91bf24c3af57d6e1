"""SVD factorization: exact at full rank, closed-form MACs, budgets met."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from bench.measure import count_macs, measure_cost
from bench.method import Cost, MethodContext, Target
from methods.layers import LowRankConv2d, LowRankLinear, factorize, full_rank
from methods.svd import SVD


class SmallCNN(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 8, 3, padding=1)
        self.conv2 = nn.Conv2d(8, 16, 3, padding=1, stride=2)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Linear(16, 32)
        self.head = nn.Linear(32, 10)

    def forward(self, x):
        x = torch.relu(self.conv2(torch.relu(self.conv1(x))))
        return self.head(torch.relu(self.fc1(self.pool(x).flatten(1))))


def make_ctx(model: nn.Module, shape=(1, 8, 8)) -> MethodContext:
    empty = lambda: iter(())  # noqa: E731
    return MethodContext(device=torch.device("cpu"), generator=torch.Generator(), seed=0,
                         calibration_batches=empty, val_batches=empty,
                         measure=lambda m: measure_cost(m, shape),
                         dense_cost=measure_cost(model, shape), input_shape=shape)


@pytest.mark.parametrize("layer", [nn.Linear(20, 12), nn.Conv2d(4, 6, 3, padding=1, stride=2)])
def test_full_rank_factorization_reproduces_the_layer(layer):
    x = torch.randn(5, 20) if isinstance(layer, nn.Linear) else torch.randn(5, 4, 9, 9)
    fact = factorize(layer, full_rank(layer))
    assert isinstance(fact, (LowRankLinear, LowRankConv2d))
    assert (fact(x) - layer(x)).abs().max() < 1e-4


def test_full_rank_svd_model_matches_dense_outputs():
    torch.manual_seed(0)
    model = SmallCNN().eval()
    x = torch.randn(4, 1, 8, 8)
    ref = model(x)
    from methods.layers import select_layers, set_module

    for path, layer in select_layers(model, skip_first_conv=False,
                                     skip_classifier=False).items():
        set_module(model, path, factorize(layer, full_rank(layer)))
    assert (model(x) - ref).abs().max() < 1e-4


@pytest.mark.parametrize("m,n,r", [(64, 32, 4), (100, 10, 7), (33, 17, 1)])
def test_factorized_linear_macs_closed_form(m, n, r):
    layer = LowRankLinear(m, n, r)
    assert count_macs(layer, (m,)) == r * (m + n)
    assert count_macs(nn.Linear(m, n), (m,)) == m * n


def test_factorized_conv_macs_closed_form():
    conv = nn.Conv2d(8, 16, 3, padding=1)
    layer = LowRankConv2d(conv, 4)
    hw = 10 * 10
    assert count_macs(layer, (8, 10, 10)) == hw * (4 * 8 * 9 + 16 * 4)


@pytest.mark.parametrize("selection", ["local", "global", "energy"])
@pytest.mark.parametrize("target", [Target("macs", 0.5), Target("params", 0.3)])
def test_svd_meets_budget_with_plain_layers(selection, target):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 128),
                          nn.ReLU(), nn.Linear(128, 10))
    ctx = make_ctx(model)
    out = SVD({"rank_selection": selection}).compress(model, target, ctx)
    cost: Cost = measure_cost(out, (1, 8, 8))
    assert cost.get(target.metric) <= target.ratio * ctx.dense_cost.get(target.metric)
    assert any(isinstance(m, LowRankLinear) for m in out.modules())
    for m in out.modules():
        assert not m._forward_hooks and not m._forward_pre_hooks
    assert out(torch.randn(2, 1, 8, 8)).shape == (2, 10)
