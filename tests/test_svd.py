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


class GroupedCNN(nn.Module):
    """First conv, a depthwise conv, a grouped conv, a dense conv, a hidden Linear, a head."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(1, 16, 3, padding=1)
        self.dw = nn.Conv2d(16, 16, 3, padding=1, groups=16)
        self.grouped = nn.Conv2d(16, 32, 3, padding=1, groups=4)
        self.conv = nn.Conv2d(32, 32, 3, padding=1)
        self.fc = nn.Linear(32, 64)
        self.head = nn.Linear(64, 10)

    def forward(self, x):
        for m in (self.stem, self.dw, self.grouped, self.conv):
            x = torch.relu(m(x))
        return self.head(torch.relu(self.fc(x.mean((2, 3)))))


def test_default_selection_skips_first_conv_classifier_and_grouped():
    from methods.layers import select_layers

    assert set(select_layers(GroupedCNN())) == {"conv", "fc"}
    assert set(select_layers(GroupedCNN(), skip_first_conv=False,
                             skip_classifier=False)) == {"stem", "conv", "fc", "head"}
    assert set(select_layers(GroupedCNN(), include=["c*"])) == {"conv"}
    assert set(select_layers(GroupedCNN(), exclude=["conv"])) == {"fc"}


@pytest.mark.parametrize("selection", ["local", "global", "energy"])
@pytest.mark.parametrize("target", [Target("macs", 0.6), Target("params", 0.5)])
def test_svd_on_cnn_meets_budget_and_leaves_skipped_layers(selection, target):
    torch.manual_seed(0)
    model = GroupedCNN()
    ctx = make_ctx(model)
    out = SVD({"rank_selection": selection}).compress(model, target, ctx)
    cost = measure_cost(out, (1, 8, 8))
    assert cost.get(target.metric) <= target.ratio * ctx.dense_cost.get(target.metric)
    assert type(out.stem) is nn.Conv2d and type(out.head) is nn.Linear
    assert type(out.dw) is nn.Conv2d and out.dw.groups == 16
    assert type(out.grouped) is nn.Conv2d and out.grouped.groups == 4
    assert isinstance(out.conv, LowRankConv2d)
    for m in out.modules():
        assert not m._forward_hooks and not m._forward_pre_hooks
    assert ctx.info["rank_selection"] == selection


def test_include_exclude_patterns_limit_what_is_factorized():
    torch.manual_seed(0)
    model = GroupedCNN()
    out = SVD({"include": ["fc"]}).compress(model, Target("params", 0.95), make_ctx(model))
    assert isinstance(out.fc, LowRankLinear) and type(out.conv) is nn.Conv2d
    model = GroupedCNN()
    out = SVD({"exclude": ["fc"]}).compress(model, Target("params", 0.95), make_ctx(model))
    assert isinstance(out.conv, LowRankConv2d) and type(out.fc) is nn.Linear


def test_layer_not_cheaper_when_factorized_stays_dense():
    torch.manual_seed(0)
    # Linear(2->2) costs 4 dense and 1*(2+2)=4 at rank 1: never worth it.
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 2),
                          nn.ReLU(), nn.Linear(2, 2), nn.ReLU(), nn.Linear(2, 10))
    ctx = make_ctx(model)
    out = SVD({"rank_selection": "local"}).compress(model, Target("macs", 0.9), ctx)
    assert type(out[5]) is nn.Linear
    assert ctx.info["ranks"]["5"] is None
    for m in out.modules():
        if isinstance(m, LowRankLinear):
            assert m.rank * (m.in_features + m.out_features) < m.in_features * m.out_features


def test_loose_budget_keeps_everything_dense():
    model = GroupedCNN()
    out = SVD().compress(model, Target("macs", 1.0), make_ctx(model))
    assert not any(isinstance(m, (LowRankLinear, LowRankConv2d)) for m in out.modules())


def test_global_selection_uses_one_threshold_across_layers():
    from methods.layers import select_layers, weight_matrix

    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 96), nn.ReLU(), nn.Linear(96, 96),
                          nn.ReLU(), nn.Linear(96, 96), nn.ReLU(), nn.Linear(96, 10))
    with torch.no_grad():  # give the layers very different spectra
        model[3].weight.mul_(torch.logspace(0, -3, 96)[:, None])
    norm = {p: (lambda s: s / s[0])(torch.linalg.svdvals(weight_matrix(m).double()))
            for p, m in select_layers(model).items()}
    ctx = make_ctx(model)
    SVD({"rank_selection": "global"}).compress(model, Target("params", 0.4), ctx)
    ranks = {p: r for p, r in ctx.info["ranks"].items() if r is not None}
    assert len(set(ranks.values())) > 1  # not a uniform fraction
    kept_min = min(float(norm[p][r - 1]) for p, r in ranks.items())
    dropped_max = max(float(norm[p][r]) for p, r in ranks.items() if r < len(norm[p]))
    assert kept_min >= dropped_max - 1e-9


def test_choose_ranks_returns_largest_feasible_assignment():
    from methods.layers.ranks import LayerSpectrum, choose_ranks, model_cost, ranks_for_knob

    spectra = [LayerSpectrum("a", torch.linspace(1, 0.01, 32), 64, 32, 1),
               LayerSpectrum("b", torch.linspace(1, 0.5, 16), 16, 40, 4)]
    dense = sum(sp.dense_cost("macs") for sp in spectra) + 100
    for selection in ("local", "global", "energy"):
        for ratio in (0.3, 0.5, 0.8):
            budget = ratio * dense
            ranks = choose_ranks(spectra, selection, "macs", dense, budget)
            cost = model_cost(spectra, ranks, "macs", dense)
            assert cost <= budget
            # no knob on a fine grid gives a feasible model that keeps more
            for knob in torch.linspace(0, 1, 501).tolist():
                raw = ranks_for_knob(spectra, selection, knob)
                cand = {p: (r if sp.saving(r, "macs") > 0 else None)
                        for sp, (p, r) in zip(spectra, raw.items())}
                c = model_cost(spectra, cand, "macs", dense)
                assert c > budget or c <= cost
