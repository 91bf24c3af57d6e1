"""Saving and reloading compressed models: identical outputs, no pickled modules."""

from __future__ import annotations

import copy
import json

import pytest
import timm
import torch
from torch import nn

from bench.serialize import ArchitectureError, describe, load_model, save_model
from methods.accel import merge_linear_chains
from methods.layers import LowRankLinear, factorize, full_rank, select_layers, set_module
from methods.prune import PruneParams, prune_once


def build_vit() -> nn.Module:
    torch.manual_seed(0)
    return timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=5, in_chans=1,
                             img_size=8, patch_size=2, embed_dim=32, depth=1, num_heads=4)


def build_resnet() -> nn.Module:
    torch.manual_seed(0)
    return timm.create_model("resnet10t", pretrained=False, num_classes=5, in_chans=3,
                             channels=(16, 32, 64, 128), stem_width=8)


def roundtrip(model: nn.Module, build, x: torch.Tensor, tmp_path) -> nn.Module:
    model.eval()
    path = save_model(model, tmp_path / "m.pt", meta={"what": "test"})
    again = load_model(path, build)
    with torch.no_grad():
        assert torch.equal(again(x), model(x))
    assert describe(again) == describe(model)
    return again


def test_pruned_vit_roundtrip(tmp_path):
    model = prune_once(build_vit(), 0.5, "l1", (1, 8, 8), PruneParams(prune_heads=True))
    again = roundtrip(model, build_vit, torch.randn(3, 1, 8, 8), tmp_path)
    assert again.blocks[0].attn.num_heads == model.blocks[0].attn.num_heads < 4
    assert again.cls_token.shape == model.cls_token.shape


def test_pruned_resnet_roundtrip(tmp_path):
    model = prune_once(build_resnet(), 0.4, "group", (3, 16, 16), PruneParams())
    again = roundtrip(model, build_resnet, torch.randn(2, 3, 16, 16), tmp_path)
    assert again.layer1[0].conv1.out_channels < 16


def test_factorized_and_merged_roundtrip(tmp_path):
    model = build_vit()
    for path, layer in select_layers(model).items():
        set_module(model, path, factorize(layer, max(1, full_rank(layer) // 4)))
    roundtrip(model, build_vit, torch.randn(2, 1, 8, 8), tmp_path)

    def build_mlp() -> nn.Module:
        torch.manual_seed(0)
        return nn.Sequential(nn.Flatten(), nn.Linear(16, 32), nn.Linear(32, 24), nn.ReLU(),
                             nn.Linear(24, 4))

    mlp = build_mlp()
    set_module(mlp, "1", factorize(mlp[1], 4))
    assert merge_linear_chains(mlp) == 1
    again = roundtrip(mlp, build_mlp, torch.randn(5, 16), tmp_path)
    assert isinstance(again[1], LowRankLinear) and isinstance(again[2], nn.Identity)


def test_file_is_weights_only_and_refuses_foreign_classes(tmp_path):
    model = build_vit()
    path = save_model(model, tmp_path / "m.pt")
    payload = torch.load(path, weights_only=True)  # no pickled modules inside
    arch = json.loads(payload["architecture"])
    arch["modules"]["head"]["class"] = "os:system"
    payload["architecture"] = json.dumps(arch)
    torch.save(payload, path)
    with pytest.raises(ArchitectureError):
        load_model(path, build_vit)
    assert copy.deepcopy(model)  # the source model is untouched
