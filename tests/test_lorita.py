"""LoRITa: exact merge of the N factors, reload after prepare, budgets met with plain layers."""

from __future__ import annotations

import copy

import pytest
import timm
import torch
from torch import nn

from bench.measure import measure_cost
from bench.method import MethodContext, Target
from methods.layers import LowRankConv2d, LowRankLinear
from methods.lorita import (
    LoRITa,
    LoRITaConv2d,
    LoRITaLinear,
    merge_factors,
    merged_effective_ranks,
    overparameterize,
)

PLAIN = (nn.Linear, nn.Conv2d, LowRankLinear, LowRankConv2d)


class ResCNN(nn.Module):
    """Stem conv, one residual block with BN and a strided 1x1 shortcut, a head."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(1, 8, 3, padding=1)
        self.conv1 = nn.Conv2d(8, 16, 3, padding=1, stride=2, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.conv2 = nn.Conv2d(16, 16, 3, padding=1)
        self.shortcut = nn.Conv2d(8, 16, 1, stride=2)
        self.dw = nn.Conv2d(16, 16, 3, padding=1, groups=16)
        self.head = nn.Linear(16, 10)

    def forward(self, x):
        x = torch.relu(self.stem(x))
        y = self.conv2(torch.relu(self.bn1(self.conv1(x)))) + self.shortcut(x)
        y = self.dw(torch.relu(y))
        return self.head(y.mean((2, 3)))


def mlp() -> nn.Module:
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 48), nn.ReLU(), nn.Linear(48, 32),
                         nn.ReLU(), nn.Linear(32, 10))


def vit() -> nn.Module:
    return timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=10,
                             in_chans=1, img_size=8, patch_size=2, embed_dim=32, depth=1,
                             num_heads=2)


def make_ctx(model: nn.Module, shape=(1, 8, 8)) -> MethodContext:
    empty = lambda: iter(())  # noqa: E731
    return MethodContext(device=torch.device("cpu"), generator=torch.Generator(), seed=0,
                         calibration_batches=empty, val_batches=empty,
                         measure=lambda m: measure_cost(m, shape),
                         dense_cost=measure_cost(model, shape), input_shape=shape)


def randomize(model: nn.Module) -> None:
    """Move weights off their init so the test is not trivially about identity factors."""
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=g))


def plain_only(model: nn.Module) -> None:
    for m in model.modules():
        assert not isinstance(m, (LoRITaLinear, LoRITaConv2d))
        assert not m._forward_hooks and not m._forward_pre_hooks
    for name, p in model.named_parameters():
        owner = model.get_submodule(name.rpartition(".")[0])
        assert isinstance(owner, (*PLAIN, nn.LayerNorm, nn.BatchNorm2d)) or p.ndim <= 3, name


@pytest.mark.parametrize("builder", [mlp, ResCNN, vit], ids=["mlp", "rescnn", "vit"])
@pytest.mark.parametrize("n", [2, 3])
def test_merge_equals_overparameterized_network(builder, n):
    torch.manual_seed(0)
    model = overparameterize(builder(), n)
    randomize(model)
    model.eval()
    kinds = [type(m) for m in model.modules()]
    assert LoRITaLinear in kinds
    if builder is ResCNN:
        assert LoRITaConv2d in kinds
        assert isinstance(model.dw, nn.Conv2d)  # depthwise stays as it is
        assert len(model.conv1.factors) == n and model.conv1.factors[1].kernel_size == (1, 1)
    if builder is vit:
        blk = model.blocks[0]
        for layer in (blk.attn.qkv, blk.attn.proj, blk.mlp.fc1, blk.mlp.fc2, model.head):
            assert isinstance(layer, LoRITaLinear) and len(layer.factors) == n
            assert all(f.in_features == layer.factors[0].in_features for f in layer.factors)
    x = torch.randn(4, 1, 8, 8)
    with torch.no_grad():
        ref = model(x)
        merged = merge_factors(copy.deepcopy(model))
        out = merged(x)
    plain_only(merged)
    assert (out - ref).abs().max() < 1e-4
    assert measure_cost(merged, (1, 8, 8)) == measure_cost(builder(), (1, 8, 8))


def test_factor_layout_follows_the_paper():
    lin = LoRITaLinear(nn.Linear(5, 7), 3)
    assert [(f.in_features, f.out_features, f.bias is not None) for f in lin.factors] == [
        (5, 5, False), (5, 5, False), (5, 7, True)]
    conv = LoRITaConv2d(nn.Conv2d(3, 6, 3, stride=2, padding=1), 3)
    assert [(f.in_channels, f.out_channels, f.kernel_size, f.bias is not None)
            for f in conv.factors] == [(3, 6, (3, 3), False), (6, 6, (1, 1), False),
                                       (6, 6, (1, 1), True)]
    assert conv.factors[0].stride == (2, 2)


def test_prepare_is_deterministic_for_checkpoint_reload():
    method = LoRITa({"N": 3})
    torch.manual_seed(0)
    trained = method.prepare(ResCNN(), make_ctx(ResCNN()))
    randomize(trained)
    torch.manual_seed(123)  # a different seed: the structure must not depend on it
    fresh = method.prepare(ResCNN(), make_ctx(ResCNN()))
    fresh.load_state_dict(trained.state_dict())  # strict: same keys and shapes
    x = torch.randn(2, 1, 8, 8)
    trained.eval(), fresh.eval()
    assert torch.equal(fresh(x), trained(x))


def test_prepare_factorizes_what_compress_truncates():
    ctx = make_ctx(ResCNN())
    model = LoRITa({"N": 2}).prepare(ResCNN(), ctx)
    assert type(model.stem) is nn.Conv2d and type(model.head) is nn.Linear
    assert isinstance(model.conv1, LoRITaConv2d) and isinstance(model.shortcut, LoRITaConv2d)
    paper = LoRITa({"N": 2, "skip_first_conv": False, "skip_classifier": False})
    model = paper.prepare(ResCNN(), ctx)
    assert isinstance(model.stem, LoRITaConv2d) and isinstance(model.head, LoRITaLinear)
    model = LoRITa({"N": 2, "exclude": ["conv2"]}).prepare(ResCNN(), ctx)
    assert type(model.conv2) is nn.Conv2d and isinstance(model.conv1, LoRITaConv2d)


def test_weight_decay_is_the_suites_unless_declared():
    assert LoRITa().weight_decay(5e-4) == 5e-4
    assert LoRITa().params.weight_decay is None
    assert LoRITa({"weight_decay": 0.01}).weight_decay(5e-4) == 0.01
    assert LoRITa.declares == {"weight_decay": "weight_decay"}


@pytest.mark.parametrize("builder", [mlp, ResCNN, vit], ids=["mlp", "rescnn", "vit"])
@pytest.mark.parametrize("target", [Target("macs", 0.5), Target("params", 0.4)])
def test_compress_meets_budget_with_plain_layers(builder, target):
    torch.manual_seed(0)
    dense = builder()
    ctx = make_ctx(dense)
    method = LoRITa({"N": 2, "rank_selection": "global"})
    model = method.prepare(builder(), ctx)
    randomize(model)
    out = method.compress(model, target, ctx)
    plain_only(out)
    cost = measure_cost(out, (1, 8, 8))
    assert cost.get(target.metric) <= target.ratio * ctx.dense_cost.get(target.metric)
    assert any(isinstance(m, (LowRankLinear, LowRankConv2d)) for m in out.modules())
    assert set(ctx.info["effective_rank_99"]) and set(ctx.info["ranks"])
    # first conv and classifier are merged but stay dense by default
    head = out.get_submodule("head") if builder is not mlp else out[-1]
    assert type(head) is nn.Linear
    assert out(torch.randn(2, 1, 8, 8)).shape == (2, 10)


def test_uncompressed_is_the_merged_network():
    torch.manual_seed(0)
    method = LoRITa({"N": 3})
    model = method.prepare(mlp(), make_ctx(mlp()))
    randomize(model)
    model.eval()
    x = torch.randn(3, 1, 8, 8)
    with torch.no_grad():
        ref = model(x)
        out = method.uncompressed(copy.deepcopy(model), make_ctx(mlp()))(x)
    assert (out - ref).abs().max() < 1e-4


def test_effective_rank_of_a_known_low_rank_product():
    torch.manual_seed(0)
    model = overparameterize(mlp(), 2)
    layer: LoRITaLinear = model[1]
    with torch.no_grad():
        layer.factors[0].weight.zero_()
        layer.factors[0].weight[:3, :3] = torch.eye(3)  # rank-3 product
    assert merged_effective_ranks(model)["1"] <= 3


@pytest.mark.parametrize("n", [2, 3])
def test_orthogonal_init_keeps_the_plain_init_spectrum(n):
    torch.manual_seed(0)
    layer, conv = nn.Linear(24, 16), nn.Conv2d(4, 8, 3)
    for plain, fact in ((layer, LoRITaLinear(layer, n, init="orthogonal")),
                        (conv, LoRITaConv2d(conv, n, init="orthogonal"))):
        s_plain = torch.linalg.svdvals(plain.weight.detach().reshape(plain.weight.shape[0], -1))
        merged = fact.merged().weight.detach()
        s_merged = torch.linalg.svdvals(merged.reshape(merged.shape[0], -1))
        assert torch.allclose(s_plain, s_merged, atol=1e-5)
    default = LoRITaLinear(layer, n, init="default").merged().weight.detach()
    assert torch.linalg.matrix_norm(default) < torch.linalg.matrix_norm(layer.weight) * 0.9
