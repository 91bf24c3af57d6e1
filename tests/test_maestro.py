"""Maestro (LoD): ordered layer, ordered dropout, shrinking, nested budgets, PCA recovery."""

from __future__ import annotations

import copy
import json
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from bench.data import load_dataset
from bench.measure import measure_cost
from bench.method import MethodContext, Target
from bench.train import evaluate, train
from methods.layers import LowRankConv2d, LowRankLinear
from methods.layers.ordered import OrderedFactorized
from methods.maestro import Maestro, ordered_layers


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Small tensors: one thread is faster, and far faster on a busy machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


PLAIN = (nn.Linear, nn.Conv2d, LowRankLinear, LowRankConv2d, nn.ReLU, nn.Flatten,
         nn.Sequential, nn.BatchNorm2d, nn.AdaptiveAvgPool2d)


def make_ctx(model: nn.Module | None, shape=(1, 8, 8), data=None) -> MethodContext:
    if data is None:
        empty = lambda: iter(())  # noqa: E731
        cal = val = empty
    else:
        cal = lambda: data.batches("train", 64, shuffle=True,  # noqa: E731
                                   generator=torch.Generator().manual_seed(0))
        val = lambda: data.batches("val", 256)  # noqa: E731
    return MethodContext(device=torch.device("cpu"), generator=torch.Generator(), seed=0,
                         calibration_batches=cal, val_batches=val,
                         measure=lambda m: measure_cost(m, shape),
                         dense_cost=None if model is None else measure_cost(model, shape),
                         input_shape=shape)


@pytest.mark.parametrize("layer", [nn.Linear(20, 12), nn.Linear(6, 30),
                                   nn.Conv2d(4, 6, 3, padding=1, stride=2)])
def test_ordered_layer_is_exact_at_full_rank_and_deploys_prefixes(layer):
    x = torch.randn(5, layer.weight.shape[1]) if isinstance(layer, nn.Linear) \
        else torch.randn(5, 4, 9, 9)
    od = OrderedFactorized(layer)
    assert (od(x) - layer(x)).abs().max() < 1e-4
    od.eval()
    for r in (1, 2, od.full_rank):
        od.rank_limit = r
        deployed = od.deploy(r)
        assert (deployed(x) - od(x)).abs().max() < 1e-4
        if od.factorized_is_cheaper(r):
            assert isinstance(deployed, (LowRankLinear, LowRankConv2d)) and deployed.rank == r
        else:
            assert type(deployed) is type(layer)
    od.rank_limit = None
    od.od_rank = 1
    assert (od(x) - layer(x)).abs().max() < 1e-4  # eval mode ignores the dropout sample
    od.train()
    assert od.effective_rank() == 1


def test_shrinking_keeps_a_prefix_and_state_dict_shapes():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))
    m = Maestro({"epsilon": 1e-3})
    ctx = make_ctx(None)
    model = m.prepare(model, ctx)
    layer = ordered_layers(model)["1"]
    with torch.no_grad():  # components 20.. negligible, 10 negligible but followed by 11..19
        layer.v[20:] *= 1e-6
        layer.u[:, 20:] *= 1e-6
        layer.v[10] *= 1e-6
        layer.u[:, 10] *= 1e-6
    shapes = {k: v.shape for k, v in model.state_dict().items()}
    ctx.phase, ctx.epoch = "train", 0
    m.on_epoch_end(model, ctx)
    assert layer.kept == 20  # only the trailing run is cut
    assert ctx.info["ranks_per_epoch"][0]["ranks"] == {"1": 20}
    fresh = m.prepare(nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(),
                                    nn.Linear(32, 10)), make_ctx(None))
    fresh.load_state_dict(model.state_dict())
    assert ordered_layers(fresh)["1"].kept == 20
    assert {k: v.shape for k, v in fresh.state_dict().items()} == shapes


class ReversedCalls(nn.Module):
    """Calls its layers in the reverse of their registration order."""

    def __init__(self):
        super().__init__()
        self.a = nn.Linear(6, 6)
        self.b = nn.Linear(6, 6)
        self.c = nn.Linear(6, 6)
        self.head = nn.Linear(6, 3)

    def forward(self, x):
        return self.head(self.a(self.b(self.c(x))))


def test_ordered_dropout_samples_each_pair_once_per_cycle_whatever_the_call_order():
    model = ReversedCalls()
    m = Maestro()
    ctx = make_ctx(None, shape=(6,))
    model = m.prepare(model, ctx)
    seen: list[dict[str, int]] = []
    step: dict[str, int] = {}
    for path, layer in ordered_layers(model).items():
        layer.register_forward_hook(
            lambda mod, i, o, path=path: step.__setitem__(path, mod.effective_rank()))
    ctx.phase = "train"
    model.train()
    for _ in range(3 * 6):  # 3 layers x ranks 1..6
        step.clear()
        m.before_step(model, ctx)
        model(torch.randn(2, 6))
        seen.append(dict(step))
    cuts = []
    for s in seen:
        cut = [(p, r) for p, r in s.items() if r < 6]
        assert len(cut) <= 1  # every other layer runs at full rank
        cuts += cut
    assert sorted(cuts) == sorted((p, r) for p in ("a", "b", "c") for r in range(1, 6))
    assert sum(1 for s in seen if all(r == 6 for r in s.values())) == 3
    ctx.phase = "finetune"
    m.before_step(model, ctx)
    assert all(layer.od_rank is None for layer in ordered_layers(model).values())
    assert m.regularizer(model, ctx) is None


def test_group_lasso_is_hierarchical():
    od = OrderedFactorized(nn.Linear(3, 2))
    with torch.no_grad():
        od.v.copy_(torch.tensor([[3.0, 0.0, 0.0], [0.0, 4.0, 0.0]]))
        od.u.copy_(torch.tensor([[1.0, 0.0], [0.0, 2.0]]))
    # b=0: sqrt(9+16) + sqrt(1+4); b=1: sqrt(16) + sqrt(4)
    expected = 5.0 + math.sqrt(5.0) + 4.0 + 2.0
    assert abs(float(od.hierarchical_group_lasso().detach()) - expected) < 1e-5


@pytest.fixture(scope="module")
def trained_mlp():
    data = load_dataset("digits", {}, None)
    torch.manual_seed(0)
    from bench.models import build_model

    dense = build_model("mlp", 10, 1, 8, kwargs={"hidden": [128, 128]})
    dense_cost = measure_cost(dense, data.input_shape)
    m = Maestro()
    ctx = make_ctx(None, data=data)
    ctx.dense_cost = dense_cost
    model = m.prepare(dense, ctx)
    train(model, data, epochs=8, batch_size=64, optimizer="adamw", lr=3e-3,
          weight_decay=5e-4, augment=False, method=m, ctx=ctx, phase="train")
    return data, m, model, dense_cost, ctx


def test_nested_budgets_are_met_with_plain_layers_and_accuracy_degrades_gracefully(trained_mlp):
    data, m, model, dense_cost, train_ctx = trained_mlp
    assert len(train_ctx.info["ranks_per_epoch"]) == 8
    accs, ranks = [], []
    for ratio in (0.5, 0.25, 0.15, 0.1):
        ctx = make_ctx(None, data=data)
        ctx.dense_cost = dense_cost
        out = m.compress(copy.deepcopy(model), Target("macs", ratio), ctx)
        cost = measure_cost(out, data.input_shape)
        assert cost.macs <= ratio * dense_cost.macs
        assert all(isinstance(x, PLAIN) or type(x).__name__ == "MLP" for x in out.modules())
        assert not any(x._forward_hooks or x._forward_pre_hooks for x in out.modules())
        accs.append(evaluate(out, data, "val")["top1"])
        ranks.append({p: (r or ctx.info["kept_ranks"][p]) for p, r in ctx.info["ranks"].items()})
        json.dumps(ctx.info)  # the record must be serialisable
    assert accs[0] > 0.9
    for hi, lo in zip(accs, accs[1:]):
        assert lo <= hi + 0.02  # non-increasing within noise
    for big, small in zip(ranks, ranks[1:]):  # one greedy path: each model nests in the last
        assert all(small[p] <= big[p] for p in big)


def test_linear_autoencoder_with_lod_recovers_ordered_principal_subspace():
    torch.manual_seed(0)
    d, n = 8, 4096
    variances = torch.tensor([9.0, 5.0, 2.5, 1.0, 0.5, 0.25, 0.12, 0.06])
    basis, _ = torch.linalg.qr(torch.randn(d, d))
    x = (torch.randn(n, d) * variances.sqrt()) @ basis.T
    model = nn.Sequential(nn.Linear(d, d, bias=False))
    m = Maestro({"skip_classifier": False, "lam": 1e-6})
    ctx = make_ctx(None, shape=(d,))
    model = m.prepare(model, ctx)
    layer = ordered_layers(model)["0"]
    assert layer.full_rank == d
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    ctx.phase = "train"
    gen = torch.Generator().manual_seed(0)
    for step in range(1500):
        if step == 1000:
            for g in opt.param_groups:
                g["lr"] = 2e-3
        batch = x[torch.randint(0, n, (256,), generator=gen)]
        m.before_step(model, ctx)
        loss = F.mse_loss(model(batch), batch, reduction="sum") / len(batch)
        loss = loss + m.regularizer(model, ctx)
        opt.zero_grad()
        loss.backward()
        opt.step()
    u = layer.u.detach()
    for k in (1, 2, 3):
        q, _ = torch.linalg.qr(u[:, :k])
        cosines = torch.linalg.svdvals(q.T @ basis[:, :k])
        angle = math.degrees(math.acos(float(cosines.min().clamp(max=1.0))))
        assert angle < 5.0, (k, angle)
    # ordered by variance: the variance each component carries decreases
    proj = x @ layer.v.detach().T  # (n, d) codes
    carried = proj.var(0) * u.pow(2).sum(0)
    assert bool((carried[:3].diff() < 0).all())
    assert torch.allclose(carried[:3], variances[:3], rtol=0.15)


def test_runner_trains_maestro_once_for_all_targets(tiny_suite, write_suite, tmp_path,
                                                     monkeypatch, capsys):
    from bench.cli import main

    calls = {"prepare": 0, "train_epochs": 0}
    prepare, on_epoch_end = Maestro.prepare, Maestro.on_epoch_end

    def counting_prepare(self, model, ctx):
        calls["prepare"] += 1
        return prepare(self, model, ctx)

    def counting_epoch_end(self, model, ctx):
        calls["train_epochs"] += ctx.phase == "train"
        return on_epoch_end(self, model, ctx)

    monkeypatch.setattr(Maestro, "prepare", counting_prepare)
    monkeypatch.setattr(Maestro, "on_epoch_end", counting_epoch_end)
    tiny_suite["methods"] = [{"name": "maestro"}]
    tiny_suite["targets"] = [{"macs": 0.5}, {"macs": 0.25}]
    path, results = write_suite(tiny_suite), tmp_path / "results"
    assert main(["run", str(path), "--results", str(results)]) == 0
    assert calls == {"prepare": 1, "train_epochs": tiny_suite["train"]["epochs"]}
    records = [json.loads(p.read_text()) for p in (results / "cells").glob("*.json")]
    assert len(records) == 2 and all(r["status"] == "ok" for r in records)
    for r in records:
        assert r["metrics"]["budget"]["met"]
        assert len(r["method_info"]["ranks_per_epoch"]) == tiny_suite["train"]["epochs"]

    tiny_suite["targets"].append({"params": 0.4})  # a new target reuses the checkpoint
    capsys.readouterr()
    assert main(["run", str(write_suite(tiny_suite)), "--results", str(results)]) == 0
    assert "cached trained model" in capsys.readouterr().out
    assert calls == {"prepare": 2, "train_epochs": tiny_suite["train"]["epochs"]}


class BNNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 8, 3, padding=1)
        self.conv2 = nn.Conv2d(8, 32, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(32)
        self.conv3 = nn.Conv2d(32, 32, 3, padding=1, stride=2)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Linear(32, 10)

    def forward(self, x):
        x = torch.relu(self.bn(self.conv2(torch.relu(self.conv1(x)))))
        return self.head(self.pool(torch.relu(self.conv3(x))).flatten(1))


@pytest.mark.parametrize("target", [Target("macs", 0.4), Target("params", 0.3)])
def test_convnet_with_batchnorm_deploys_factorized_convs_within_budget(target):
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    xs, ys = torch.randn(96, 1, 8, 8, generator=gen), torch.randint(0, 10, (96,), generator=gen)
    batches = lambda: iter([(xs[i:i + 32], ys[i:i + 32]) for i in (0, 32, 64)])  # noqa: E731
    dense = BNNet()
    ctx = make_ctx(dense)
    ctx.calibration_batches = ctx.val_batches = batches
    m = Maestro()
    model = m.prepare(dense, ctx)
    assert set(ordered_layers(model)) == {"conv2", "conv3"}  # first conv, classifier stay
    ref = copy.deepcopy(model)
    out = m.compress(model, target, ctx)
    assert measure_cost(out, (1, 8, 8)).get(target.metric) <= \
        target.ratio * ctx.dense_cost.get(target.metric)
    assert any(isinstance(x, LowRankConv2d) for x in out.modules())
    assert not any(isinstance(x, OrderedFactorized) for x in out.modules())
    out.eval()
    ranks = ctx.info["ranks"]
    for path, layer in ordered_layers(ref).items():  # deployed = the ordered layer's prefix
        layer.rank_limit = ranks[path] or layer.kept
    for bn_out, bn_ref in zip([out.bn], [ref.bn]):  # same recalibrated statistics
        bn_ref.load_state_dict(bn_out.state_dict())
    ref.eval()
    assert (out(xs) - ref(xs)).abs().max() < 1e-4


def compress_all(model, m, data, dense_cost, ratios):
    """Each target in order, as the runner does (later targets resume the cached path)."""
    rows = []
    for ratio in ratios:
        ctx = make_ctx(None, data=data)
        ctx.dense_cost = dense_cost
        out = m.compress(copy.deepcopy(model), Target("macs", ratio), ctx)
        rows.append((out, ctx.info))
    return rows


def test_fast_search_meets_budgets_within_one_epoch_of_passes_and_is_deterministic(trained_mlp):
    from methods import maestro_search

    data, m, model, dense_cost, _ = trained_mlp
    ratios = (0.5, 0.25, 0.125)
    runs = []
    for _ in range(2):  # a fresh process each time: nothing cached
        maestro_search._SEARCHES.clear()
        runs.append(compress_all(model, Maestro(), data, dense_cost, ratios))
    for ratio, (out, info) in zip(ratios, runs[0]):
        assert measure_cost(out, data.input_shape).macs <= ratio * dense_cost.macs
        assert info["search"]["mode"] == "fast" and info["search_s"] >= 0
    assert [info for _, info in runs[0]] == [
        {**info, "search_s": runs[0][i][1]["search_s"]} for i, (_, info) in enumerate(runs[1])]
    forward = sum(info["search_forward_images"] for _, info in runs[0])
    backward = sum(info["search_backward_images"] for _, info in runs[0])
    assert forward == runs[0][-1][1]["search"]["path_forward_images"]  # later targets resumed
    assert 0 < forward <= len(data.train) and 0 < backward <= len(data.train)

    maestro_search._SEARCHES.clear()
    exhaustive = compress_all(model, Maestro({"search": "exhaustive"}), data, dense_cost, ratios)
    assert sum(info["search_forward_images"] for _, info in exhaustive) > 4 * forward
    for (fast, _), (slow, _) in zip(runs[0], exhaustive):  # same accuracy within a few samples
        assert evaluate(fast, data, "val")["top1"] >= evaluate(slow, data, "val")["top1"] - 0.05


def test_taylor_effects_are_the_loss_derivatives_of_each_component():
    from methods.maestro_search import FastSearch

    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(1)
    xs, ys = torch.randn(40, 1, 6, 6, generator=gen), torch.randint(0, 10, (40,), generator=gen)
    batches = lambda: iter([(xs[:20], ys[:20]), (xs[20:], ys[20:])])  # noqa: E731
    model = nn.Sequential(nn.Conv2d(1, 6, 3), nn.Conv2d(6, 8, 3, padding=1), nn.ReLU(),
                          nn.Flatten(), nn.Linear(8 * 16, 12), nn.ReLU(), nn.Linear(12, 10))
    ctx = make_ctx(model, shape=(1, 6, 6))
    ctx.calibration_batches = ctx.val_batches = batches
    m = Maestro()
    model = m.prepare(model, ctx).eval()
    layers = ordered_layers(model)
    assert set(layers) == {"1", "4"}
    search = FastSearch(model, layers, "macs", ctx, m.params, list(batches()))
    search.reanchor()
    assert search.forward_images == search.backward_images == 40

    def loss() -> float:
        with torch.no_grad():
            return float(F.cross_entropy(model(xs), ys))

    base, eps = loss(), 1e-3
    assert abs(search.anchor_loss - base) < 1e-5
    for path, layer in layers.items():
        curve = search.curves[path]
        for b in (0, layer.full_rank - 1):  # d loss / d (scale of component b) = mean_n a_nb
            with torch.no_grad():
                layer.u[:, b] *= 1 + eps
            slope = (loss() - base) / eps
            with torch.no_grad():
                layer.u[:, b] /= 1 + eps
            first_order = curve[b] - curve[b + 1]  # -mean(a_nb) + second-order terms
            assert abs(slope + first_order) < 0.05 * abs(slope) + 1e-3, (path, b, slope)
