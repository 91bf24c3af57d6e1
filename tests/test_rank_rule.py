"""rank_selection auto: the default rule (local) unless another is clearly better on
validation loss before fine-tuning, by a paired per-sample comparison."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn

from bench.data import load_dataset
from bench.measure import measure_cost
from bench.method import MethodContext, Target
from bench.train import train
from methods.layers.ranks import DEFAULT_RULE, RULES, pick_rank_rule, val_losses
from methods.lorita import LoRITa
from methods.svd import SVD

SHAPE = (1, 8, 8)
CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def data():
    return load_dataset("digits")


@pytest.fixture(scope="module")
def trained(data) -> nn.Module:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 96), nn.ReLU(), nn.Linear(96, 96),
                          nn.ReLU(), nn.Linear(96, 96), nn.ReLU(), nn.Linear(96, 10))
    train(model, data, epochs=4, batch_size=64, optimizer="adamw", lr=3e-3,
          weight_decay=0.0, augment=False)
    return model


def make_ctx(model: nn.Module, data, with_val: bool = True) -> MethodContext:
    empty = lambda: iter(())  # noqa: E731
    val = (lambda: data.batches("val", 128)) if with_val else empty
    return MethodContext(device=CPU, generator=torch.Generator(), seed=0,
                         calibration_batches=empty, val_batches=val,
                         measure=lambda m: measure_cost(m, SHAPE),
                         dense_cost=measure_cost(model, SHAPE), input_shape=SHAPE)


# -- pick_rank_rule on fake builds: models whose losses we control --------------------

def toy_val(n: int = 200, noise: float = 1.0, seed: int = 0) -> list[tuple[torch.Tensor,
                                                                          torch.Tensor]]:
    """Inputs: one-hot of the label plus noise; batches of 64, always the same."""
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % 10
    x = nn.functional.one_hot(y, 10).float() + noise * torch.randn(n, 10, generator=g)
    return [(x[i:i + 64], y[i:i + 64]) for i in range(0, n, 64)]


def scaled(scale: float) -> nn.Module:
    """logits = scale * x: the same argmax (top-1) at every positive scale, a loss that
    falls as the scale grows while the model is mostly right."""
    m = nn.Linear(10, 10, bias=False)
    with torch.no_grad():
        m.weight.copy_(scale * torch.eye(10))
    return m


def toy_ctx(batches) -> MethodContext:
    return MethodContext(device=CPU, generator=torch.Generator(), seed=0,
                         calibration_batches=lambda: iter(()),
                         val_batches=lambda: iter(batches),
                         measure=lambda m: measure_cost(m, (10,)), input_shape=(10,))


def fake_build(models: dict[str, nn.Module]):
    calls: list[str] = []

    def build(rule):
        calls.append(rule)
        return models[rule], {"ranks": {"layer": rule}}

    build.calls = calls
    return build


def losses_of(model: nn.Module, batches) -> torch.Tensor:
    return val_losses(model, iter(batches), CPU)[1]


def test_auto_picks_a_rule_clearly_better_by_loss():
    batches = toy_val(noise=0.3)
    models = {"local": scaled(0.5), "global": scaled(4.0), "energy": scaled(1.0)}
    assert {val_losses(m, iter(batches), CPU)[0] for m in models.values()} == {
        val_losses(models["local"], iter(batches), CPU)[0]}  # top-1 cannot separate them
    ctx = toy_ctx(batches)
    out = pick_rank_rule("auto", fake_build(models), ctx)
    choice = ctx.info["rank_rule_choice"]
    assert out is models["global"] and choice["chosen"] == "global"
    assert ctx.info["ranks"] == {"layer": "global"}  # the chosen rule's facts
    d = losses_of(models["local"], batches) - losses_of(models["global"], batches)
    assert choice["paired"]["rule"] == "global" and choice["paired"]["vs"] == "local"
    assert choice["paired"]["n"] == 200
    assert choice["paired"]["difference"] == pytest.approx(float(d.mean()), abs=1e-6)
    assert choice["paired"]["se"] == pytest.approx(float(d.std() / math.sqrt(len(d))), abs=1e-6)
    assert choice["basis"].startswith("lowest validation loss before fine-tuning")
    assert "vs local" in choice["basis"] and "+-" in choice["basis"]


def test_auto_keeps_the_default_when_the_rules_are_identical():
    batches = toy_val()
    same = scaled(1.0)
    ctx = toy_ctx(batches)
    out = pick_rank_rule("auto", fake_build(dict.fromkeys(RULES, same)), ctx)
    choice = ctx.info["rank_rule_choice"]
    assert out is same and choice["chosen"] == DEFAULT_RULE == "local"
    assert choice["default"] == "local"
    assert choice["basis"].startswith("within noise of the default local")
    assert choice["basis"].endswith("default kept")
    assert choice["paired"]["difference"] == 0.0 and choice["paired"]["se"] == 0.0


def test_auto_keeps_the_default_on_a_tiny_validation_set():
    # one sample: global's loss is far lower, but there is no estimate of the noise
    batches = toy_val(n=1, noise=0.0)
    models = {"local": scaled(0.1), "global": scaled(5.0), "energy": scaled(0.2)}
    ctx = toy_ctx(batches)
    pick_rank_rule("auto", fake_build(models), ctx)
    choice = ctx.info["rank_rule_choice"]
    assert choice["rules"]["global"]["val_loss"] < 0.5 * choice["rules"]["local"]["val_loss"]
    assert choice["chosen"] == "local"
    assert choice["basis"].startswith("within noise of the default local")
    assert choice["paired"]["n"] == 1 and choice["paired"]["se"] is None


def test_auto_keeps_the_default_when_the_gain_is_significant_but_tiny():
    # noiseless inputs: every sample has the same loss, so the standard error is 0 and
    # only the relative margin (1%) stands between global and the choice
    batches = toy_val(noise=0.0)
    models = {"local": scaled(1.0), "global": scaled(1.01), "energy": scaled(0.5)}
    local, glob = (float(losses_of(models[r], batches).mean()) for r in ("local", "global"))
    assert 0 < local - glob < 0.01 * local
    ctx = toy_ctx(batches)
    pick_rank_rule("auto", fake_build(models), ctx)
    choice = ctx.info["rank_rule_choice"]
    assert choice["chosen"] == "local" and choice["paired"]["rule"] == "global"
    assert choice["paired"]["se"] == 0.0 and choice["paired"]["difference"] > 0
    assert choice["basis"].startswith("within noise of the default local")


def test_auto_keeps_the_default_when_it_is_clearly_best():
    batches = toy_val(noise=0.3)
    models = {"local": scaled(4.0), "global": scaled(0.5), "energy": scaled(1.0)}
    ctx = toy_ctx(batches)
    out = pick_rank_rule("auto", fake_build(models), ctx)
    choice = ctx.info["rank_rule_choice"]
    assert out is models["local"] and choice["chosen"] == "local"
    assert choice["paired"]["rule"] == "energy" and choice["paired"]["difference"] < 0
    assert choice["basis"].startswith("the default local has the lowest validation loss")


def nan_model() -> nn.Module:
    m = scaled(1.0)
    with torch.no_grad():
        m.weight[0, 0] = float("nan")
    return m


def test_a_non_finite_loss_loses():
    batches = toy_val(noise=0.3)
    models = {"local": scaled(0.5), "global": nan_model(), "energy": scaled(4.0)}
    ctx = toy_ctx(batches)
    pick_rank_rule("auto", fake_build(models), ctx)
    choice = ctx.info["rank_rule_choice"]
    assert choice["chosen"] == "energy" and choice["rules"]["global"]["val_loss"] is None
    # a non-finite default loses too: the lowest finite loss is taken
    models = {"local": nan_model(), "global": scaled(0.5), "energy": scaled(1.0)}
    ctx = toy_ctx(batches)
    pick_rank_rule("auto", fake_build(models), ctx)
    choice = ctx.info["rank_rule_choice"]
    assert choice["chosen"] == "energy" and "not finite" in choice["basis"]
    # none finite: the default
    ctx = toy_ctx(batches)
    pick_rank_rule("auto", fake_build(dict.fromkeys(RULES, nan_model())), ctx)
    assert ctx.info["rank_rule_choice"]["chosen"] == "local"
    assert "no rule has a finite validation loss" in ctx.info["rank_rule_choice"]["basis"]


def test_unpaired_validation_batches_keep_the_default():
    batches = toy_val(noise=0.3)
    calls = iter([batches, batches[::-1], batches])  # the second call yields another order
    ctx = toy_ctx(batches)
    ctx.val_batches = lambda: iter(next(calls, batches))
    models = {"local": scaled(0.5), "global": scaled(4.0), "energy": scaled(1.0)}
    pick_rank_rule("auto", fake_build(models), ctx)
    assert ctx.info["rank_rule_choice"]["chosen"] == "local"
    assert "cannot be paired" in ctx.info["rank_rule_choice"]["basis"]


def test_an_explicit_rule_builds_only_that_rule():
    build = fake_build(dict.fromkeys(RULES, scaled(1.0)))
    ctx = toy_ctx(toy_val())
    pick_rank_rule("energy", build, ctx)
    assert build.calls == ["energy"]
    assert ctx.info["rank_rule_choice"] == {"chosen": "energy", "basis": "set in the suite"}


# -- through the methods, on a trained model ----------------------------------------

@pytest.mark.parametrize("ratio", [0.1, 0.2])
def test_svd_auto_records_every_rule_and_decides_by_paired_loss(trained, data, ratio):
    target = Target("macs", ratio)
    by_rule = {}
    for rule in RULES:
        ctx = make_ctx(trained, data)
        out = SVD({"rank_selection": rule}).compress(copy.deepcopy(trained), target, ctx)
        by_rule[rule] = (val_losses(out, data.batches("val", 128), CPU), ctx.info["ranks"])
        assert ctx.info["rank_rule_choice"] == {"chosen": rule, "basis": "set in the suite"}
        assert ctx.info["rank_selection"] == rule  # an explicit rule is honoured
    ctx = make_ctx(trained, data)
    out = SVD().compress(copy.deepcopy(trained), target, ctx)
    choice = ctx.info["rank_rule_choice"]
    assert set(choice) == {"chosen", "default", "rules", "paired", "basis"}
    assert choice["default"] == "local"
    for rule in RULES:
        (top1, loss, _), _ = by_rule[rule]
        assert choice["rules"][rule]["val_top1"] == pytest.approx(top1)
        assert choice["rules"][rule]["val_loss"] == pytest.approx(float(loss.mean()), abs=1e-5)
    # the decision, recomputed here: the lowest-loss other rule against local, paired
    local = by_rule["local"][0][1]
    rival = min(("global", "energy"), key=lambda r: float(by_rule[r][0][1].mean()))
    d = local - by_rule[rival][0][1]
    mean, se = float(d.mean()), float(d.std() / math.sqrt(len(d)))
    assert choice["paired"]["rule"] == rival
    assert choice["paired"]["difference"] == pytest.approx(mean, abs=1e-5)
    assert choice["paired"]["se"] == pytest.approx(se, abs=1e-5)
    expected = rival if mean > max(2 * se, 0.01 * float(local.mean())) else "local"
    assert choice["chosen"] == expected and ctx.info["rank_selection"] == expected
    assert ctx.info["ranks"] == by_rule[expected][1]
    if ratio == 0.2:  # here a rule is clearly better than local (about 4 se)
        assert expected != "local" and choice["basis"].startswith("lowest validation loss")
    assert measure_cost(out, SHAPE).macs <= ratio * ctx.dense_cost.macs


def test_auto_without_validation_data_falls_back_to_local(trained, data):
    ctx = make_ctx(trained, data, with_val=False)
    SVD().compress(copy.deepcopy(trained), Target("macs", 0.25), ctx)
    assert ctx.info["rank_rule_choice"]["chosen"] == "local"
    assert ctx.info["rank_rule_choice"]["basis"].startswith("no validation data")
    assert ctx.info["rank_selection"] == "local"


def test_lorita_uses_the_same_rule_choice(trained, data):
    method = LoRITa({"N": 1})
    ctx = make_ctx(trained, data)
    method.compress(copy.deepcopy(trained), Target("macs", 0.1), ctx)
    choice = ctx.info["rank_rule_choice"]
    assert set(choice["rules"]) == set(RULES) and choice["chosen"] in RULES
    assert choice["default"] == "local" and choice["basis"]
    ctx = make_ctx(trained, data)
    LoRITa({"N": 1, "rank_selection": "energy"}).compress(copy.deepcopy(trained),
                                                          Target("macs", 0.1), ctx)
    assert ctx.info["rank_selection"] == "energy"
