"""Per-layer-type breakdown: op categories, and a factorized model's two factor matmuls."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from bench.measure.breakdown import CATEGORIES, categorize, profile_breakdown
from methods.layers.lowrank import LowRankLinear


def test_categories_of_op_names():
    assert categorize("aten::addmm") == categorize("aten::mm") == "matmul_conv"
    assert categorize("aten::mkldnn_convolution") == categorize("aten::_convolution") \
        == "matmul_conv"
    assert categorize("aten::_scaled_dot_product_flash_attention_for_cpu") == "matmul_conv"
    assert categorize("aten::native_layer_norm") == categorize("aten::batch_norm") == "norm"
    assert categorize("aten::relu_") == categorize("aten::clamp_min") == "activation"
    assert categorize("aten::gelu") == categorize("aten::_softmax") == "activation"
    assert categorize("aten::permute") == categorize("aten::copy_") == "reshape"
    assert categorize("aten::_unsafe_view") == categorize("aten::contiguous") == "reshape"
    assert categorize("aten::add") == categorize("aten::max_pool2d") == "other"


def test_record_shape_and_categories_sum_to_total():
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                          nn.Flatten(), nn.Linear(8 * 8 * 8, 10))
    before = torch.get_num_threads()
    b = profile_breakdown(model.train(), (3, 8, 8), threads=1, calls=3, warmup=1)
    assert torch.get_num_threads() == before and b.threads == 1 and not model.training
    rec = b.record()
    assert list(rec) == [*CATEGORIES, "total_ms"]
    for cat in ("matmul_conv", "norm", "activation", "reshape"):
        assert rec[cat] > 0, cat
    assert sum(rec[c] for c in CATEGORIES) == pytest.approx(rec["total_ms"], rel=1e-6)
    with pytest.raises(ValueError, match="calls >= 1"):
        profile_breakdown(model, (3, 8, 8), calls=0)


def test_factorized_model_lists_both_factor_matmuls_and_its_shares_sum_to_one():
    # Only what the profile's structure fixes is asserted. The profiled total is not
    # compared with a separate time_model latency, nor is the matmul share held to a
    # threshold: over 20 runs of this model on a shared 2-core machine the profiled
    # total read 0.72x to 1.53x the mean latency timed right after it (9 of 20 off
    # by more than 15%), and the matmul share ranged from 0.75 to 0.95.
    model = nn.Sequential(LowRankLinear(1024, 1024, 256)).eval()
    b = profile_breakdown(model, (128, 1024), threads=1, calls=5, warmup=2)
    assert b.calls == 5 and b.threads == 1
    assert b.ops["aten::linear"]["count"] == 2  # one per factor
    matmuls = {k: v for k, v in b.ops.items() if k in ("aten::mm", "aten::addmm")}
    assert sum(v["count"] for v in matmuls.values()) == 2  # first factor (no bias), second
    assert all(v["self_ms"] > 0 for v in matmuls.values())
    assert all(categorize(k) == "matmul_conv" for k in matmuls)
    rec = b.record()
    assert rec["matmul_conv"] >= sum(v["self_ms"] for v in matmuls.values()) * 0.999
    assert rec["norm"] == rec["activation"] == 0.0  # no norm or activation layer to list
    # every op's self time is in exactly one category, and the categories are the total
    assert sum(v["self_ms"] for v in b.ops.values()) == pytest.approx(
        sum(rec[c] for c in CATEGORIES), rel=1e-6)
    shares = {c: rec[c] / rec["total_ms"] for c in CATEGORIES}
    assert sum(shares.values()) == pytest.approx(1.0, rel=1e-6)
