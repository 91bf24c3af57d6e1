"""Measurements: closed-form MAC checks for both counters, latency statistics, memory, size."""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bench.measure import environment, measure_deployable, summarize, time_model
from bench.measure.counting import count_params, flop_counter_macs, fvcore_macs, mac_report
from bench.measure.latency import Latency, percentile
from bench.measure.memory import PeakRSS
from bench.measure.size import safetensors_bytes, tensor_bytes
from bench.method import Cost, Target
from bench.suite import LatencySpec
from methods.layers.lowrank import LowRankConv2d, LowRankLinear


def both(model: nn.Module, shape: tuple[int, ...]) -> tuple[int, int]:
    return flop_counter_macs(model, shape)["macs"], fvcore_macs(model, shape)["macs"]


def test_cnn_counters_agree_on_matmul_like_ops():
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8),
                          nn.ReLU(), nn.Conv2d(8, 16, 3, stride=2, padding=1),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 10))
    report = mac_report(model, (3, 16, 16))
    assert report["macs_fvcore_matmul"] == report["macs"]
    assert report["macs_fvcore_by_op"]["batch_norm"] > 0  # fvcore's extra: norms
    assert report["macs_fvcore"] > report["macs"]


def assert_close(value: float, expected: float, rel: float = 0.01) -> None:
    assert abs(value - expected) <= rel * expected, (value, expected)


def conv_out(size: int, k: int, stride: int, pad: int) -> int:
    return (size + 2 * pad - k) // stride + 1


# -- closed-form MACs --------------------------------------------------------------

def test_linear_macs():
    for macs in both(nn.Linear(96, 40), (96,)):
        assert_close(macs, 96 * 40)


def test_linear_macs_per_token():
    # (tokens, features) input: MACs scale with the tokens of one sample
    for macs in both(nn.Linear(32, 24, bias=False), (7, 32)):
        assert_close(macs, 7 * 32 * 24)


def test_conv2d_macs():
    conv = nn.Conv2d(6, 10, kernel_size=3, stride=2, padding=1)
    ho = conv_out(15, 3, 2, 1)
    for macs in both(conv, (6, 15, 15)):
        assert_close(macs, ho * ho * 10 * 6 * 9)


def test_grouped_conv_macs():
    conv = nn.Conv2d(8, 8, kernel_size=3, padding=1, groups=8)
    for macs in both(conv, (8, 10, 10)):
        assert_close(macs, 10 * 10 * 8 * 9)


def test_factorized_linear_macs():
    m, n, r = 120, 80, 9
    for macs in both(LowRankLinear(m, n, r), (m,)):
        assert_close(macs, r * (m + n))


def test_factorized_conv_macs():
    cin, cout, k, r = 12, 20, 3, 5
    layer = LowRankConv2d(nn.Conv2d(cin, cout, k, stride=2, padding=1), r)
    ho = conv_out(16, k, 2, 1)
    # k x k conv in -> r, then 1x1 conv r -> out, both at the output resolution
    expected = ho * ho * (cin * k * k * r + r * cout)
    for macs in both(layer, (cin, 16, 16)):
        assert_close(macs, expected)


class BlockDiagonalBmm(nn.Module):
    """Monarch-like: block-diagonal (b blocks p->q), a transpose permutation, blocks q->s."""

    def __init__(self, nblocks: int, p: int, q: int, s: int):
        super().__init__()
        self.b, self.p = nblocks, p
        self.w1 = nn.Parameter(torch.randn(nblocks, p, q))
        self.w2 = nn.Parameter(torch.randn(nblocks, q, s))

    def forward(self, x: Tensor) -> Tensor:
        batch = x.shape[0]
        h = x.reshape(batch, self.b, self.p).transpose(0, 1)  # (b, B, p)
        h = torch.bmm(h, self.w1)  # (b, B, q)
        q = h.shape[-1]
        h = h.transpose(0, 1).reshape(batch, q, self.b).permute(2, 0, 1)  # permutation
        h = torch.bmm(h.contiguous(), self.w2)  # (b, B, s)
        return h.transpose(0, 1).reshape(batch, -1)


def test_monarch_bmm_macs():
    b, p, q, s = 4, 16, 8, 12
    for macs in both(BlockDiagonalBmm(b, p, q, s), (b * p,)):
        assert_close(macs, b * q * (p + s))


def test_tucker2_macs():
    cin, r1, r2, cout, k, size = 16, 6, 5, 24, 3, 12
    model = nn.Sequential(nn.Conv2d(cin, r1, 1, bias=False),
                          nn.Conv2d(r1, r2, k, stride=2, padding=1, bias=False),
                          nn.Conv2d(r2, cout, 1))
    ho = conv_out(size, k, 2, 1)
    expected = size * size * cin * r1 + ho * ho * k * k * r1 * r2 + ho * ho * r2 * cout
    for macs in both(model, (cin, size, size)):
        assert_close(macs, expected)


class Attention(nn.Module):
    """qkv projection, scaled_dot_product_attention, output projection."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        b, n, d = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, k, v)
        return self.proj(out.transpose(1, 2).reshape(b, n, d))


def test_attention_macs():
    n, d, h = 17, 48, 4
    # projections 4*n*d^2; QK^T and AV: 2 * h * n * n * (d/h)
    expected = 4 * n * d * d + 2 * n * n * d
    fc, fv = both(Attention(d, h), (n, d))
    assert_close(fc, expected)
    assert_close(fv, expected)


def test_sdpa_alone_counted_by_both():
    class Sdpa(nn.Module):
        def forward(self, x: Tensor) -> Tensor:
            return F.scaled_dot_product_attention(x, x, x)

    heads, n, dh = 3, 10, 8
    for macs in both(Sdpa(), (heads, n, dh)):
        assert_close(macs, heads * n * n * 2 * dh)


# -- a timm ViT ----------------------------------------------------------------------

@pytest.fixture(scope="module")
def vit() -> nn.Module:
    timm = pytest.importorskip("timm")
    return timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=10,
                             in_chans=1, img_size=8, patch_size=2, embed_dim=64, depth=2,
                             num_heads=2)


def test_vit_macs_include_attention_and_counters_agree(vit):
    report = mac_report(vit, (1, 8, 8))
    tokens, dim, depth, classes = 16 + 1, 64, 2, 10
    patch = 16 * 1 * 2 * 2 * dim
    per_block = 4 * tokens * dim * dim + 2 * tokens * dim * 4 * dim  # attn proj + mlp
    attention = 2 * tokens * tokens * dim
    expected = patch + depth * (per_block + attention) + dim * classes
    assert_close(report["macs"], expected)
    assert abs(report["macs_fvcore_rel_diff"]) <= 0.02
    # restricted to the same op kinds, the two independent counters agree exactly
    assert report["macs_fvcore_matmul"] == report["macs"]
    assert report["macs_fvcore_by_op"]["scaled_dot_product_attention"] == depth * attention
    assert_close(report["macs_fvcore"], report["macs"], rel=0.02)
    for counter in ("flop_counter", "fvcore"):
        missed = report["uncounted_ops"][counter]
        assert not any("attention" in op for op in missed), (counter, missed)
    assert "aten::gelu" in report["uncounted_ops"]["fvcore"]
    assert "aten::gelu" in report["uncounted_ops"]["flop_counter"]
    # attention is attributed (by both counters) to the module that calls it
    own = report["macs_by_layer"]["blocks.0.attn"]
    assert own["macs"] == own["macs_fvcore"] == attention


def test_per_layer_macs_sum_to_total(vit):
    report = mac_report(vit, (1, 8, 8))
    layers = report["macs_by_layer"].values()
    assert sum(v["macs"] for v in layers) == report["macs"]
    assert sum(v["macs_fvcore"] for v in layers) == report["macs_fvcore"]


# -- latency ---------------------------------------------------------------------------

def test_summary_statistics_from_raw_samples():
    rng = np.random.default_rng(0)
    samples = list(rng.lognormal(1.0, 0.3, size=101))
    s = summarize(samples)
    assert s["n"] == 101
    assert s["median_ms"] == pytest.approx(float(np.median(samples)))
    assert s["p90_ms"] == pytest.approx(float(np.percentile(samples, 90)))
    iqr = np.percentile(samples, 75) - np.percentile(samples, 25)
    assert s["iqr_ms"] == pytest.approx(float(iqr))
    assert s["std_ms"] == pytest.approx(float(np.std(samples, ddof=1)))
    assert s["cv"] == pytest.approx(float(np.std(samples, ddof=1) / np.mean(samples)))
    assert s["min_ms"] == min(samples) and s["max_ms"] == max(samples)
    assert percentile([4.0, 1.0, 3.0, 2.0], 50) == 2.5
    assert percentile([5.0], 90) == 5.0
    lat = Latency("cpu", 8, 1, samples_ms=[1.0, 2.0, 3.0, 4.0])
    out = lat.summary()
    assert out["median_ms"] == 2.5 and out["throughput_per_s"] == pytest.approx(8 / 2.5e-3)
    assert "samples_ms" not in out
    with pytest.raises(ValueError):
        summarize([])


class Sleeper(nn.Module):
    """Takes a known time per call; records whether it ran in eval and inference mode."""

    def __init__(self, seconds: float):
        super().__init__()
        self.seconds = seconds
        self.lin = nn.Linear(4, 4)
        self.seen: list[tuple[bool, bool]] = []

    def forward(self, x: Tensor) -> Tensor:
        self.seen.append((self.training, torch.is_inference_mode_enabled()))
        time.sleep(self.seconds)
        return self.lin(x)


def test_timing_meets_min_runs_and_min_seconds():
    model = Sleeper(0.002).train()
    lat = time_model(model, (4,), 2, warmup=3, min_runs=5, min_seconds=0.08, threads=1)
    assert lat.summary()["n"] == len(lat.samples_ms) >= 5
    assert sum(lat.samples_ms) >= 80 * 0.9  # the duration floor, not just the count
    assert lat.median_ms >= 2.0
    assert all(not training and inference for training, inference in model.seen)
    assert len(model.seen) == 3 + len(lat.samples_ms)  # warm-up calls are not samples
    lat = time_model(Sleeper(0.0), (4,), 1, warmup=0, min_runs=12, min_seconds=0.0)
    assert len(lat.samples_ms) == 12
    lat = time_model(Sleeper(0.0), (4,), 1, warmup=0, min_runs=50, min_seconds=10.0, max_runs=7)
    assert len(lat.samples_ms) == 7


def test_threads_fixed_recorded_and_restored():
    before = torch.get_num_threads()
    lat = time_model(nn.Linear(8, 8), (8,), 4, threads=1, warmup=1, min_runs=3, min_seconds=0)
    assert lat.threads == 1 and lat.summary()["threads"] == 1
    assert torch.get_num_threads() == before


def test_variants_are_separate_measurements():
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Flatten(),
                          nn.Linear(8 * 6 * 6, 5))
    spec = LatencySpec(batch_sizes=(4,), warmup=1, min_runs=3, min_seconds=0.0,
                       channels_last=True, compile=True, compile_backend="eager", cuda="off")
    out = measure_deployable(model, (3, 6, 6), spec, Cost(params=10**6, macs=10**6),
                             Target("macs", 0.5))
    lat = out["latency"]
    assert set(lat) >= {"cpu", "cpu_channels_last", "cpu_compile", "cuda"}
    assert lat["cpu"]["b4"]["variant"] == "eager"
    assert lat["cpu_channels_last"]["b4"]["variant"] == "channels_last"
    assert lat["cpu_compile"]["b4"]["variant"] == "compile-eager"
    assert lat["cpu_compile"]["b4"]["compile_s"] > 0
    assert lat["cuda"] is None and out["cuda_status"].startswith("n/a")
    # the caller's model is untouched by the variants
    assert model[0].weight.is_contiguous()


def test_measure_deployable_record(vit):
    spec = LatencySpec(batch_sizes=(1, 8), warmup=1, min_runs=3, min_seconds=0.0, cuda="off")
    dense = Cost(params=200_000, macs=4_000_000)
    out = measure_deployable(vit, (1, 8, 8), spec, dense, Target("macs", 0.5))
    for key in ("params", "macs", "flops", "params_ratio", "macs_ratio", "dense_params",
                "dense_macs", "budget", "macs_fvcore", "uncounted_ops", "macs_by_layer",
                "size_bytes", "cpu_peak_rss_mb_approx"):
        assert key in out, key
    assert out["flops"] == 2 * out["macs"] and out["macs_ratio"] == out["macs"] / 4_000_000
    assert out["budget"]["met"] == (out["macs_ratio"] <= 0.5)
    b8 = out["latency"]["cpu"]["b8"]
    assert b8["threads"] == 1 and b8["batch_size"] == 8 and b8["n"] >= 3
    assert b8["p25_ms"] <= b8["median_ms"] <= b8["p90_ms"] <= b8["max_ms"]
    assert out["size_bytes"] > 4 * out["params"]
    assert out["cpu_peak_rss_mb_approx"] is not None and "rss_method" in b8


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_cuda_timing_with_events_and_peak_memory():
    lat = time_model(nn.Linear(256, 256), (256,), 64, device="cuda", warmup=3, min_runs=10,
                     min_seconds=0.0)
    s = lat.summary()
    assert s["timer"] == "cuda_events" and s["n"] >= 10 and s["median_ms"] > 0
    assert s["cuda_peak_mem_mb"] > 0


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_measure_deployable_times_cuda(vit):
    spec = LatencySpec(batch_sizes=(1, 64), warmup=3, min_runs=10, min_seconds=0.0)
    out = measure_deployable(vit, (1, 8, 8), spec, Cost(params=1, macs=1), None)
    assert out["cuda_status"] == "measured" and out["cuda_peak_mem_mb"] > 0
    for b in ("b1", "b64"):
        s = out["latency"]["cuda"][b]
        assert s["timer"] == "cuda_events" and s["median_ms"] > 0 and s["device"] == "cuda"


# -- memory, size, provenance ------------------------------------------------------------

def test_peak_rss_sees_a_large_allocation():
    with PeakRSS() as rss:
        block = torch.ones(32 * 2**20 // 4 * 2)  # 64 MiB, touched
        del block
    if rss.method != "vmhwm-reset":
        pytest.skip("the peak RSS cannot be reset on this system")
    assert rss.delta_mb is not None and rss.delta_mb >= 48


def test_peak_rss_of_timed_runs_sees_activations():
    model = nn.Sequential(nn.Linear(64, 4096), nn.ReLU(), nn.Linear(4096, 64))
    lat = time_model(model, (64,), 256, warmup=2, min_runs=3, min_seconds=0.0,
                     track_memory=True).summary()
    quick = time_model(model, (64,), 2, warmup=1, min_runs=2, min_seconds=0.0).summary()
    assert "cpu_peak_rss_delta_mb_approx" not in quick  # only when asked for
    if lat["rss_method"] != "vmhwm-reset":
        pytest.skip("the peak RSS cannot be reset on this system")
    activation_mb = 256 * 4096 * 4 / 2**20  # one (256, 4096) float32 hidden layer: 4 MiB
    assert activation_mb * 0.75 <= lat["cpu_peak_rss_delta_mb_approx"] <= 10 * activation_mb


def test_safetensors_size():
    model = nn.Sequential(nn.Linear(100, 50), nn.BatchNorm1d(50))
    raw = (100 * 50 + 50 + 4 * 50) * 4 + 8  # weights, bias, BN affine+stats, int64 counter
    assert tensor_bytes(model) == raw
    size = safetensors_bytes(model)
    assert raw < size < raw + 4096  # raw bytes plus a small JSON header
    emb = nn.Embedding(1000, 16)
    head = nn.Linear(16, 1000, bias=False)
    head.weight = emb.weight  # tied: stored once
    assert safetensors_bytes(nn.Sequential(emb, head)) < 1000 * 16 * 4 + 4096


def test_environment_provenance():
    env = environment("abc123")
    for key in ("python", "torch", "timm", "fvcore", "cpu", "cpu_count", "torch_threads",
                "git_commit", "gpu"):
        assert key in env, key
    assert env["suite_hash"] == "abc123" and env["torch"] == torch.__version__


def test_selfcheck_runs_and_reports(capsys):
    from bench.measure import selfcheck

    assert selfcheck.main(["--model", "mlp", "--repeats", "2", "--batches", "4",
                           "--min-runs", "3", "--min-seconds", "0.01", "--warmup", "1"]) == 0
    out = capsys.readouterr().out
    assert "CV of median" in out and "ours / autorange" in out


def test_selfcheck_a_a_prints_speedup_with_interval(capsys):
    from bench.measure import selfcheck

    assert selfcheck.main(["--model", "mlp", "--batches", "1", "--rounds", "6", "--calls", "2",
                           "--warmup", "1", "--aa-only"]) == 0
    out = capsys.readouterr().out
    assert "A/A b1: speedup" in out and "over 6 rounds" in out and "blocked_autorange" not in out


def test_measure_deployable_with_reference_adds_paired_and_breakdown():
    dense = nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 10))
    small = nn.Sequential(LowRankLinear(32, 64, 4), nn.ReLU(), nn.Linear(64, 10))
    spec = LatencySpec(batch_sizes=(1, 4), warmup=1, min_runs=3, min_seconds=0.0, cuda="off")
    cost = Cost(params=count_params(dense), macs=32 * 64 + 64 * 10)
    plain = measure_deployable(small, (32,), spec, cost, Target("macs", 0.5))
    assert "latency_paired" not in plain and "latency_breakdown" not in plain
    out = measure_deployable(small, (32,), spec, cost, Target("macs", 0.5), reference=dense)
    assert set(out["latency_paired"]) == {"cpu"} and set(out["latency"]["cpu"]) == {"b1", "b4"}
    for key in ("b1", "b4"):
        e = out["latency_paired"]["cpu"][key]
        assert set(e) == {"model", "reference", "speedup", "load_avg", "threads"}
        assert e["threads"] == 1 and e["speedup"]["rounds"] >= 2
        assert e["speedup"]["ci_low"] <= e["speedup"]["median"] <= e["speedup"]["ci_high"]
    bd = out["latency_breakdown"]
    assert set(bd) == {"model", "reference"}
    assert bd["model"]["matmul_conv"] > 0 and bd["reference"]["total_ms"] > 0
    assert set(bd["model"]) == {"matmul_conv", "norm", "activation", "reshape", "other",
                                "total_ms"}
    # the caller's models stay where they were, in the mode they were in
    assert dense.training and small.training
