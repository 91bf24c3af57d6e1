"""rank_selection auto: the rule whose compressed model scores best on validation."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from bench.data import load_dataset
from bench.measure import measure_cost
from bench.method import MethodContext, Target
from bench.train import train
from methods.layers.ranks import RULES, val_scores
from methods.lorita import LoRITa
from methods.svd import SVD

SHAPE = (1, 8, 8)


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
    return MethodContext(device=torch.device("cpu"), generator=torch.Generator(), seed=0,
                         calibration_batches=empty, val_batches=val,
                         measure=lambda m: measure_cost(m, SHAPE),
                         dense_cost=measure_cost(model, SHAPE), input_shape=SHAPE)


def test_auto_picks_the_rule_with_the_best_validation_accuracy(trained, data):
    target = Target("macs", 0.1)
    by_rule = {}
    for rule in RULES:
        ctx = make_ctx(trained, data)
        out = SVD({"rank_selection": rule}).compress(copy.deepcopy(trained), target, ctx)
        by_rule[rule] = (val_scores(out, data.batches("val", 128), torch.device("cpu")),
                         ctx.info["ranks"])
        assert ctx.info["rank_rule_choice"] == {"chosen": rule, "basis": "set in the suite"}
        assert ctx.info["rank_selection"] == rule  # an explicit rule is honoured
    assert len({round(v[0][0], 6) for v in by_rule.values()}) > 1  # the rules do differ here
    best = max(RULES, key=lambda r: (by_rule[r][0][0], -by_rule[r][0][1], -RULES.index(r)))
    ctx = make_ctx(trained, data)
    out = SVD().compress(copy.deepcopy(trained), target, ctx)
    choice = ctx.info["rank_rule_choice"]
    assert choice["chosen"] == best and ctx.info["rank_selection"] == best
    assert ctx.info["ranks"] == by_rule[best][1]
    for rule in RULES:
        assert choice["rules"][rule]["val_top1"] == pytest.approx(by_rule[rule][0][0])
    assert measure_cost(out, SHAPE).macs <= 0.1 * ctx.dense_cost.macs


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
    ctx = make_ctx(trained, data)
    LoRITa({"N": 1, "rank_selection": "energy"}).compress(copy.deepcopy(trained),
                                                          Target("macs", 0.1), ctx)
    assert ctx.info["rank_selection"] == "energy"
