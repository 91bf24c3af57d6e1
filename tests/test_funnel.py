"""Funnel regularization: exact Tucker-2, gates that change nothing at init, a penalty with
the funnel shape, and a deployed model that equals the gated one and meets its budget."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from bench.data import load_dataset
from bench.measure import count_macs, measure_cost
from bench.method import MethodContext, Target
from bench.train import train
from methods.funnel import (
    GATED,
    Funnel,
    GatedTuckerConv2d,
    apply_drops,
    deploy,
    droppable_components,
    funnel_penalty,
    gate_model,
    gated_modules,
    select_to_budget,
)
from methods.layers import LowRankLinear, select_layers
from methods.layers.tucker import TuckerConv2d, tucker2, tucker_conv_macs

SHAPE = (1, 8, 8)


class SmallCNN(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 8, 3, padding=1)
        self.conv2 = nn.Conv2d(8, 16, 3, padding=1, stride=2)
        self.conv3 = nn.Conv2d(16, 16, 3, padding=1, bias=False)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Linear(16, 48)
        self.head = nn.Linear(48, 10)

    def forward(self, x):
        x = torch.relu(self.conv3(torch.relu(self.conv2(torch.relu(self.conv1(x))))))
        return self.head(torch.relu(self.fc1(self.pool(x).flatten(1))))


def make_ctx(model: nn.Module, train_fn=None) -> MethodContext:
    empty = lambda: iter(())  # noqa: E731
    return MethodContext(device=torch.device("cpu"), generator=torch.Generator(), seed=0,
                         calibration_batches=empty, val_batches=empty,
                         measure=lambda m: measure_cost(m, SHAPE),
                         dense_cost=measure_cost(model, SHAPE), input_shape=SHAPE,
                         train_fn=train_fn)


def scramble_gates(model: nn.Module, seed: int = 0) -> None:
    """Stand-in for a regularization phase: gates spread over [0, 2)."""
    gen = torch.Generator().manual_seed(seed)
    for mod in gated_modules(model).values():
        for mode, g, _ in mod.gates():
            mod.set_gates(mode, 2 * torch.rand(g.shape, generator=gen))


@pytest.mark.parametrize("conv", [nn.Conv2d(6, 10, 3, padding=1, stride=2),
                                  nn.Conv2d(12, 5, (3, 1), padding=(1, 0), dilation=2)])
def test_full_rank_tucker2_is_exact_and_three_convs_compute_it(conv):
    t = tucker2(conv.weight)
    assert (t.reconstruct() - conv.weight).abs().max() < 1e-5
    layer = TuckerConv2d.from_factors(conv, t.u_in, t.core, t.u_out, conv.bias.detach())
    x = torch.randn(2, conv.in_channels, 9, 9)
    assert (layer(x) - conv(x)).abs().max() < 1e-4
    out_px = conv(x)[0, 0].numel()
    assert count_macs(layer, (conv.in_channels, 9, 9)) == tucker_conv_macs(
        conv, t.u_in.shape[1], t.u_out.shape[1], 81, out_px)


def test_truncated_tucker2_keeps_leading_mode_components():
    torch.manual_seed(0)
    w = torch.randn(16, 8, 3, 3)
    t = tucker2(w, rank_in=3, rank_out=5)
    assert t.core.shape == (5, 3, 3, 3) and t.u_in.shape == (8, 3) and t.u_out.shape == (16, 5)
    assert torch.all(t.sv_in[:-1] >= t.sv_in[1:]) and torch.all(t.sv_out[:-1] >= t.sv_out[1:])
    eye = torch.eye(3)
    assert torch.allclose(t.u_in.T @ t.u_in, eye, atol=1e-5)
    assert (t.reconstruct() - w).norm() < w.norm()


def test_gated_model_at_init_is_the_dense_model():
    torch.manual_seed(0)
    model = SmallCNN().eval()
    x = torch.randn(4, *SHAPE)
    ref = model(x)
    gated = gate_model(model, select_layers(model), SHAPE)
    assert set(gated) == {"conv2", "conv3", "fc1"}  # first conv and classifier stay dense
    assert isinstance(gated["conv2"], GatedTuckerConv2d)
    assert (model(x) - ref).abs().max() < 1e-4


def test_funnel_penalty_pulls_small_gates_hardest_and_saturates():
    g = torch.tensor([0.05, 0.1, 1.0, 3.0], requires_grad=True)
    funnel_penalty(g, eps=0.05).backward()
    grad = g.grad
    assert grad[1] > grad[2] > grad[3] > 0  # funnel: strong near sqrt(eps/3), fading beyond
    with torch.no_grad():
        assert funnel_penalty(torch.tensor([100.0]), 0.05) == pytest.approx(1.0, abs=1e-5)
        assert funnel_penalty(torch.tensor([0.0]), 0.05) == 0


def test_regularizer_only_in_the_funnel_phase():
    model = SmallCNN()
    gate_model(model, select_layers(model), SHAPE)
    ctx = make_ctx(SmallCNN())
    method = Funnel({"lam": 0.5})
    ctx.phase = "funnel"
    reg = method.regularizer(model, ctx)
    n = sum(g.numel() for m in gated_modules(model).values() for _, g, _ in m.gates())
    assert reg is not None and float(reg.detach()) == pytest.approx(0.5 * n / (1 + 0.05), rel=1e-5)
    ctx.phase = "finetune"
    assert method.regularizer(model, ctx) is None


@pytest.mark.parametrize("metric,ratio,scale", [("macs", 0.5, 1.0), ("macs", 0.3, 10.0),
                                                ("params", 0.4, 1.0)])
def test_deployed_equals_gated_with_drops_and_meets_budget(metric, ratio, scale):
    torch.manual_seed(0)
    dense = SmallCNN().eval()
    ctx = make_ctx(dense)
    x = torch.randn(6, *SHAPE)
    gated_model = copy.deepcopy(dense)
    gated = gate_model(gated_model, select_layers(gated_model), SHAPE, gate_scale=scale)
    with torch.no_grad():
        assert (gated_model(x) - dense(x)).abs().max() < 1e-4
    scramble_gates(gated_model)

    layers = select_layers(dense)
    pos = {"conv2": 16, "conv3": 16, "fc1": 1}
    selected = sum(m.weight.numel() * (1 if metric == "params" else pos[p])
                   for p, m in layers.items())
    others = ctx.dense_cost.get(metric) - selected
    n = select_to_budget(gated_model, gated, Target(metric, ratio), ctx, "gate", others)
    assert n > 0
    with torch.no_grad():
        ref = gated_model(x)
        out = deploy(copy.deepcopy(gated_model), metric)
        assert (out(x) - ref).abs().max() < 1e-4
    assert not any(isinstance(m, GATED) for m in out.modules())
    assert any(isinstance(m, (TuckerConv2d, LowRankLinear)) for m in out.modules())
    assert not any("gate" in name for name, _ in out.named_parameters())
    assert measure_cost(out, SHAPE).get(metric) <= ratio * ctx.dense_cost.get(metric)
    # the globally smallest gates went, whichever layer they were in
    order = droppable_components(gated, "gate")
    assert max(c.score for c in order[:n]) <= min(c.score for c in order[n:])


def test_drops_keep_one_component_per_mode():
    model = SmallCNN()
    gated = gate_model(model, select_layers(model), SHAPE)
    order = droppable_components(gated, "gate")
    apply_drops(gated, order, len(order))
    for mod in gated.values():
        for name, buf in mod.named_buffers():
            if name.startswith("mask"):
                assert int(buf.sum()) == 1


def test_compress_end_to_end_with_the_harness_loop():
    """Real regularization on digits; the deployed model equals the gated one it came from."""
    data = load_dataset("digits")
    torch.manual_seed(0)
    dense = SmallCNN()
    train(dense, data, epochs=1, batch_size=64, optimizer="adamw", lr=3e-3, weight_decay=0.0,
          augment=False)
    dense.eval()
    snapshot: dict[str, nn.Module] = {}
    phases: list[str] = []

    def train_fn(model, epochs=None, method=None, phase="method", **kw):
        phases.append(phase)
        before = [g.detach().clone() for m in gated_modules(model).values()
                  for _, g, _ in m.gates()]
        stats = train(model, data, epochs=epochs, batch_size=64, optimizer="adamw", lr=3e-3,
                      weight_decay=0.0, augment=False, method=method, ctx=ctx, phase=phase)
        after = [g.detach() for m in gated_modules(model).values() for _, g, _ in m.gates()]
        assert any(not torch.equal(a, b) for a, b in zip(after, before))
        snapshot["gated"] = copy.deepcopy(model)
        return stats

    ctx = make_ctx(dense, train_fn)
    target = Target("macs", 0.4)
    out = Funnel({"reg_epochs": 1, "lam": 1e-2}).compress(copy.deepcopy(dense), target, ctx)
    assert phases == ["funnel"]
    assert ctx.info["budget_met"] and measure_cost(out, SHAPE).macs <= 0.4 * ctx.dense_cost.macs
    gated_model = snapshot["gated"].eval()
    gated = gated_modules(gated_model)
    apply_drops(gated, droppable_components(gated, "gate"), ctx.info["components_dropped"])
    x = data.normalize(data.test.x[:32])
    with torch.no_grad():
        assert (out.eval()(x) - gated_model(x)).abs().max() < 1e-4
    assert ctx.info["ranks"]["fc1"]["r"] <= ctx.info["full_ranks"]["fc1"]["r"]


def _budget_ctx(dense: nn.Module, budget: dict, train_size: int, calls: list) -> MethodContext:
    def train_fn(model, epochs=None, method=None, phase="method", **kw):
        calls.append({**kw, "epochs": epochs, "phase": phase})
        from bench.train import TrainStats

        steps = kw["steps"]
        spe = -(-train_size // kw["batch_size"])
        return TrainStats(epochs=steps / spe, steps=steps, batch_size=kw["batch_size"],
                          steps_per_epoch=spe, optimizer={
                              "name": kw["optimizer"], "lr": kw["lr"],
                              "weight_decay": kw["weight_decay"], "schedule": kw["schedule"],
                              "warmup_epochs": kw["warmup_epochs"]})

    ctx = make_ctx(dense, train_fn)
    ctx.budget, ctx.train_size = budget, train_size
    return ctx


def test_regularization_phase_is_part_of_the_finetune_budget_with_its_settings():
    """cifar.yaml trains with a 5-epoch warm-up: the phase must not inherit it."""
    from bench.ledger import build_ledger, finetune_steps_left, planned_phase
    from bench.suite import load_suite

    suite, _ = load_suite("cifar")
    budget = {"train": suite.train.model_dump(), "finetune": suite.finetune.model_dump()}
    assert budget["train"]["warmup_epochs"] == 5
    n = 45_000
    dense = SmallCNN()
    calls: list = []
    ctx = _budget_ctx(dense, budget, n, calls)
    Funnel().compress(copy.deepcopy(dense), Target("macs", 0.5), ctx)
    (call,) = calls
    spe = -(-n // suite.finetune.batch_size)
    assert call["phase"] == "funnel" and call["steps"] == round(7.5 * spe)  # half of 15 epochs
    assert call["warmup_epochs"] == 0 and call["lr"] == suite.finetune.lr
    assert call["schedule"] == "cosine" and call["weight_decay"] == suite.finetune.weight_decay
    (reg,) = ctx.ledger
    assert reg["phase"] == "regularize" and "declared" not in reg
    left = finetune_steps_left([reg], budget["finetune"], n)
    assert left == 15 * spe - reg["steps"]
    phases = [planned_phase("pretrain", budget["train"], n), reg,
              {**planned_phase("finetune", budget["finetune"], n), "steps": left}]
    assert build_ledger(phases, train=budget["train"], finetune=budget["finetune"], n_train=n,
                        params=Funnel().params.model_dump())["violation"] is None

    calls.clear()
    own = Funnel({"reg_epochs": 2, "reg_lr": 1e-3, "reg_schedule": "constant",
                  "reg_warmup_epochs": 0.5})
    ctx = _budget_ctx(dense, budget, n, calls)
    own.compress(copy.deepcopy(dense), Target("macs", 0.5), ctx)
    assert calls[0]["steps"] == 2 * spe and calls[0]["lr"] == 1e-3
    assert calls[0]["schedule"] == "constant" and calls[0]["warmup_epochs"] == 0.5
    (reg,) = ctx.ledger
    assert reg["declared"] == {"lr": "reg_lr", "schedule": "reg_schedule",
                               "warmup_epochs": "reg_warmup_epochs"}
    phases = [planned_phase("pretrain", budget["train"], n), reg,
              {**planned_phase("finetune", budget["finetune"], n), "steps": 13 * spe}]
    assert build_ledger(phases, train=budget["train"], finetune=budget["finetune"], n_train=n,
                        params=own.params.model_dump())["violation"] is None

    with pytest.raises(ValueError, match="reg_epochs 16.0 exceeds the suite's fine-tune budget"):
        Funnel({"reg_epochs": 16}).compress(copy.deepcopy(dense), Target("macs", 0.5),
                                            _budget_ctx(dense, budget, n, []))
