"""Per-layer-type breakdown: a factorized model's time is in its two factor matmuls."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from bench.measure.breakdown import CATEGORIES, categorize, profile_breakdown
from bench.measure.latency import time_model
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


def test_factorized_model_lists_both_factor_matmuls_and_sums_to_its_latency():
    # batch 1 of 128 tokens: the two factor matmuls dominate, so profiler overhead is small
    model = nn.Sequential(LowRankLinear(1024, 1024, 256)).eval()
    shape = (128, 1024)

    def measure() -> tuple:
        # the latency measured the same way: mean over as many calls, same threads and batch
        b = profile_breakdown(model, shape, threads=1, calls=5, warmup=2)
        lat = time_model(model, shape, 1, threads=1, warmup=2, min_runs=5, min_seconds=0.0)
        return b, lat.summary()["mean_ms"]

    def close(b, latency_ms) -> bool:
        return abs(b.total_ms - latency_ms) <= 0.15 * latency_ms

    b, latency_ms = measure()
    if not close(b, latency_ms):  # a shared machine: one more try
        b, latency_ms = measure()
    matmuls = {k: v for k, v in b.ops.items() if k in ("aten::mm", "aten::addmm")}
    assert sum(v["count"] for v in matmuls.values()) == 2  # first factor (no bias), second
    assert all(v["self_ms"] > 0 for v in matmuls.values())
    rec = b.record()
    assert rec["matmul_conv"] >= sum(v["self_ms"] for v in matmuls.values()) * 0.999
    assert rec["matmul_conv"] > 0.7 * rec["total_ms"]
    assert close(b, latency_ms), (b.total_ms, latency_ms)
