"""The budget ledger: steps counted by the loop, phases checked against the suite's budget."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from bench.data import load_dataset
from bench.ledger import (
    budget_steps,
    build_ledger,
    count_optimizer_steps,
    finetune_steps_left,
    planned_phase,
)
from bench.measure import measure_cost
from bench.method import MethodContext
from bench.suite import TrainBudget
from bench.train import train

TRAIN = TrainBudget(epochs=3, batch_size=100, optimizer="adamw", lr=2e-3, weight_decay=5e-4,
                    augment=False).model_dump()
FINETUNE = TrainBudget(epochs=2, batch_size=100, optimizer="adamw", lr=5e-4, weight_decay=5e-4,
                       augment=False).model_dump()
N_TRAIN = 1050  # 11 steps per epoch at batch 100


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


def tiny() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 10))


def ledger(*phases: dict, params: dict | None = None, **kw) -> dict:
    return build_ledger(list(phases), train=TRAIN, finetune=FINETUNE, n_train=N_TRAIN,
                        params=params or {}, **kw)


def test_train_counts_steps_and_reports_the_settings_it_used(digits):
    spe = math.ceil(len(digits.train) / 64)
    stats = train(tiny(), digits, epochs=2, batch_size=64, optimizer="adamw", lr=1e-3,
                  weight_decay=0.01, schedule="constant", warmup_epochs=1, augment=False)
    assert stats.steps == 2 * spe and stats.epochs == 2 and stats.steps_per_epoch == spe
    assert stats.optimizer == {"name": "adamw", "lr": 1e-3, "weight_decay": 0.01,
                               "schedule": "constant", "warmup_epochs": 1}
    part = train(tiny(), digits, epochs=5, steps=spe + 3, batch_size=64, optimizer="sgd",
                 lr=1e-2, weight_decay=0.0, augment=False)
    assert part.steps == spe + 3 and part.epochs == pytest.approx((spe + 3) / spe)
    assert len(part.history) == 2  # the second epoch stopped after 3 steps


def test_the_harness_loop_steps_are_what_the_process_hook_counts(digits):
    with count_optimizer_steps() as counter:
        stats = train(tiny(), digits, epochs=1, batch_size=128, optimizer="adam", lr=1e-3,
                      weight_decay=0.0, augment=False)
        opt = torch.optim.SGD(tiny().parameters(), lr=0.1)
        opt.step()
    assert counter.steps == stats.steps + 1
    opt.step()  # the hook is gone once the block ends
    assert counter.steps == stats.steps + 1


def test_a_post_method_row_is_pretrain_plus_finetune():
    out = ledger(planned_phase("pretrain", TRAIN, N_TRAIN),
                 planned_phase("finetune", FINETUNE, N_TRAIN))
    assert out["budget_steps"] == budget_steps(TRAIN, FINETUNE, N_TRAIN) == 5 * 11
    assert out["total_steps"] == 55 and out["violation"] is None
    assert [p["phase"] for p in out["phases"]] == ["pretrain", "finetune"]


def test_training_from_scratch_replaces_the_pretrain_it_did_not_start_from():
    out = ledger(planned_phase("pretrain", TRAIN, N_TRAIN),
                 planned_phase("method_train", TRAIN, N_TRAIN),
                 planned_phase("finetune", FINETUNE, N_TRAIN))
    assert [p["phase"] for p in out["phases"]] == ["method_train", "finetune"]
    assert out["total_steps"] == 55 and out["violation"] is None


def test_a_regularization_phase_comes_out_of_the_finetune_budget():
    reg = {**planned_phase("regularize", FINETUNE, N_TRAIN), "steps": 7, "epochs": 7 / 11}
    phases = [planned_phase("pretrain", TRAIN, N_TRAIN), reg]
    left = finetune_steps_left(phases, FINETUNE, N_TRAIN)
    assert left == 22 - 7
    fair = ledger(*phases, {**planned_phase("finetune", FINETUNE, N_TRAIN), "steps": left})
    assert fair["total_steps"] == 55 and fair["violation"] is None
    longer = ledger(*phases, planned_phase("finetune", FINETUNE, N_TRAIN))
    assert longer["total_steps"] == 62
    assert "62 optimizer steps in all, the suite's budget is 55" in longer["violation"]


def test_a_changed_setting_must_be_declared_by_a_parameter_holding_its_value():
    pre = planned_phase("method_train", TRAIN, N_TRAIN)
    pre["optimizer"]["weight_decay"] = 0.1
    ft = planned_phase("finetune", FINETUNE, N_TRAIN)
    undeclared = ledger(pre, ft)
    assert "method_train: weight_decay 0.1 instead of the suite's 0.0005, not declared" in \
        undeclared["violation"]
    declared = {**pre, "declared": {"weight_decay": "weight_decay"}}
    assert ledger(declared, ft, params={"weight_decay": 0.1})["violation"] is None
    wrong = ledger(declared, ft, params={"weight_decay": None})  # None: the suite's value
    assert "but parameter 'weight_decay' is None" in wrong["violation"]
    missing = ledger(declared, ft, params={})
    assert "which is not a parameter" in missing["violation"]
    # a declared parameter left at None (the suite's value) with the suite's value is fine
    plain = {**planned_phase("method_train", TRAIN, N_TRAIN),
             "declared": {"weight_decay": "weight_decay"}}
    assert ledger(plain, ft, params={"weight_decay": None})["violation"] is None


def test_steps_outside_the_loop_are_a_violation():
    out = ledger(planned_phase("pretrain", TRAIN, N_TRAIN),
                 planned_phase("finetune", FINETUNE, N_TRAIN), unaccounted_steps=4)
    assert out["total_steps"] == 59
    assert "4 optimizer steps outside the harness's training loop" in out["violation"]


def test_context_train_uses_the_charged_budget_and_ledgers_the_phase(digits):
    calls: list[dict] = []

    def train_fn(model, epochs=None, method=None, phase="method", **kw):
        calls.append({**kw, "epochs": epochs})
        return train(model, digits, phase=phase, epochs=epochs, **kw)

    budget = {"train": {**TRAIN, "batch_size": 128}, "finetune": {**FINETUNE, "batch_size": 128}}
    ctx = MethodContext(device=torch.device("cpu"), generator=torch.Generator(), seed=0,
                        calibration_batches=lambda: iter(()), val_batches=lambda: iter(()),
                        measure=lambda m: measure_cost(m, (1, 8, 8)), train_fn=train_fn,
                        budget=budget, train_size=len(digits.train))
    spe = ctx.steps_per_epoch("finetune")
    assert spe == math.ceil(len(digits.train) / 128)
    assert ctx.budget_steps("train") == 3 * spe
    ctx.train(tiny(), phase="funnel", steps=5, declared={"lr": "reg_lr"}, lr=1e-2)
    assert calls[-1]["lr"] == 1e-2 and calls[-1]["weight_decay"] == FINETUNE["weight_decay"]
    ctx.train(tiny(), phase="train")
    assert calls[-1]["lr"] == TRAIN["lr"] and calls[-1]["epochs"] == TRAIN["epochs"]
    reg, scratch = ctx.ledger
    assert reg["phase"] == "regularize" and reg["steps"] == 5
    assert reg["optimizer"]["lr"] == 1e-2 and reg["declared"] == {"lr": "reg_lr"}
    assert scratch["phase"] == "method_train" and scratch["steps"] == 3 * spe
