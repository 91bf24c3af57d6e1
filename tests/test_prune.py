"""Structured pruning: timm ResNet and ViT shrink, run, meet budgets, stay plain modules."""

from __future__ import annotations

import copy

import pytest
import timm
import torch
from torch import nn

from bench.measure import measure_cost
from bench.method import MethodContext, Target
from methods.prune import PruneGroup, PruneL1, PruneRandom


def make_ctx(model: nn.Module, shape: tuple[int, ...]) -> MethodContext:
    empty = lambda: iter(())  # noqa: E731
    return MethodContext(device=torch.device("cpu"), generator=torch.Generator(), seed=0,
                         calibration_batches=empty, val_batches=empty,
                         measure=lambda m: measure_cost(m, shape),
                         dense_cost=measure_cost(model, shape), input_shape=shape)


def resnet() -> nn.Module:
    torch.manual_seed(0)
    return timm.create_model("resnet10t", pretrained=False, num_classes=5, in_chans=3,
                             channels=(16, 32, 64, 128), stem_width=8).eval()


FAST = {"scan_steps": 4, "search_steps": 3}  # a coarser search keeps the tests quick


def vit(heads: int = 4, dim: int = 32) -> nn.Module:
    torch.manual_seed(0)
    return timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=5, in_chans=1,
                             img_size=8, patch_size=2, embed_dim=dim, depth=1,
                             num_heads=heads).eval()


def assert_plain(model: nn.Module) -> None:
    for m in model.modules():
        assert not m._forward_hooks and not m._forward_pre_hooks
        assert type(m).__module__.startswith(("torch.nn", "timm")), type(m)
    assert all(p.requires_grad for p in model.parameters())


def convs(model: nn.Module) -> dict[str, int]:
    return {p: m.out_channels for p, m in model.named_modules() if isinstance(m, nn.Conv2d)}


@pytest.mark.parametrize("method", [PruneL1, PruneGroup, PruneRandom])
def test_pruned_resnet_has_fewer_channels_and_meets_budget(method):
    shape = (3, 16, 16)
    model = resnet()
    ctx = make_ctx(model, shape)
    target = Target("macs", 0.5)
    out = method(FAST).compress(copy.deepcopy(model), target, ctx)
    cost = measure_cost(out, shape)
    assert cost.macs <= 0.5 * ctx.dense_cost.macs
    assert cost.macs > 0.25 * ctx.dense_cost.macs  # the search does not overshoot wildly
    before, after = convs(model), convs(out)
    assert sum(after.values()) < sum(before.values())
    assert all(after[p] <= before[p] for p in before)
    assert out.fc.out_features == 5  # the classifier keeps its classes
    assert out(torch.randn(2, *shape)).shape == (2, 5)
    assert_plain(out)
    assert 0 < ctx.info["pruning_ratio"] < 1


def test_round_to_gives_multiples():
    shape = (3, 16, 16)
    model = resnet()
    ctx = make_ctx(model, shape)
    method = PruneL1({"round_to": 8, **FAST})
    out = method.compress(copy.deepcopy(model), Target("params", 0.5), ctx)
    assert measure_cost(out, shape).params <= 0.5 * ctx.dense_cost.params
    before, after = convs(model), convs(out)
    pruned = [p for p in before if after[p] < before[p]]
    assert pruned and all(after[p] % 8 == 0 for p in pruned)


def test_pruned_vit_has_fewer_heads_and_meets_budget():
    shape = (1, 8, 8)
    model = vit(heads=4)
    ctx = make_ctx(model, shape)
    method = PruneGroup({"prune_heads": True, **FAST})
    out = method.compress(copy.deepcopy(model), Target("macs", 0.5), ctx)
    attn = out.blocks[0].attn
    assert attn.num_heads < 4
    assert attn.qkv.out_features == 3 * attn.num_heads * attn.head_dim
    assert measure_cost(out, shape).macs <= 0.5 * ctx.dense_cost.macs
    assert out(torch.randn(3, *shape)).shape == (3, 5)
    assert_plain(out)


def test_vit_head_dims_shrink_by_default():
    shape = (1, 8, 8)
    model = vit(heads=2, dim=64)
    ctx = make_ctx(model, shape)
    out = PruneL1(FAST).compress(copy.deepcopy(model), Target("params", 0.5), ctx)
    attn = out.blocks[0].attn
    assert attn.num_heads == 2 and attn.head_dim < 32
    assert measure_cost(out, shape).params <= 0.5 * ctx.dense_cost.params
    assert out(torch.randn(2, *shape)).shape == (2, 5)


def test_two_head_micro_vit_keeps_a_head_at_a_tight_budget():
    shape = (1, 8, 8)
    model = vit(heads=2, dim=32)
    ctx = make_ctx(model, shape)
    out = PruneRandom({"prune_heads": True, **FAST}).compress(copy.deepcopy(model),
                                                     Target("macs", 0.125), ctx)
    assert out.blocks[0].attn.num_heads >= 1
    assert out(torch.randn(2, *shape)).shape == (2, 5)
    assert measure_cost(out, shape).macs <= 0.125 * ctx.dense_cost.macs


@pytest.mark.parametrize("embed_dim", [32, 16])  # 16 patches: more channels, or as many
def test_token_mixing_mlps_are_left_unpruned(embed_dim):
    """The dependency graph takes a Mixer's token-mixing Linears (fed x.transpose(1, 2)) for
    channel layers; their groups are skipped instead of crashing inside Torch-Pruning."""
    from timm.models.mlp_mixer import MlpMixer

    from methods.prune import PruneParams, prune_once, unprunable_layers

    torch.manual_seed(0)
    model = MlpMixer(num_classes=5, img_size=32, patch_size=8, embed_dim=embed_dim,
                     num_blocks=1).eval()
    skip, cause = unprunable_layers(model, (3, 32, 32))
    assert "blocks.0.mlp_tokens.fc1" in cause and "blocks.0.mlp_tokens.fc2" in skip
    for method in (PruneL1, PruneGroup, PruneRandom):
        pruned = prune_once(copy.deepcopy(model), 0.5, method.importance, (3, 32, 32),
                            PruneParams(), skip=skip)
        tokens = pruned.blocks[0].mlp_tokens
        assert tokens.fc1.in_features == 16 and tokens.fc2.out_features == 16
        assert pruned.blocks[0].mlp_channels.fc1.out_features < 4 * embed_dim
        assert pruned(torch.zeros(2, 3, 32, 32)).shape == (2, 5)


def test_a_pruned_model_that_still_breaks_is_refused_with_a_value_error():
    """A layer fed a transposed-then-reshaped tensor escapes the checks: the pruned copy's
    forward fails, and that is a NotApplicableError (a ValueError) naming the method."""
    import bench

    class Toy(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b, self.head = nn.Linear(8, 8), nn.Linear(8, 8), nn.Linear(8, 5)

        def forward(self, x):
            h = self.a(x)
            t = h.transpose(1, 2).reshape(h.shape[0], h.shape[2], h.shape[1])
            return self.head((h + self.b(t)).mean(1))

    with pytest.raises(ValueError, match="prune-l1: Torch-Pruning's dependency graph cannot"):
        bench.compress(Toy(), "prune-l1", macs=0.5, example_input=torch.zeros(1, 8, 8),
                       method_params=FAST)
