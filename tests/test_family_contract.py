"""Every registered post-training method, through ``bench.compress``, on each architecture family.

Registry-driven like ``tests/test_method_contract.py``: the methods are
enumerated at collection time (``bench.method_names()``, skipping kind
"train", which needs the harness), so a new method is covered here without a
new test. Each family is a tiny timm model (32x32 inputs, a few channels,
depth 1-2): a plain ResNet, a depthwise + squeeze-excite MobileNetV3, ConvNeXt,
RegNet, a DeiT (ViT), an MLP-Mixer (token-mixing MLPs) and a Swin transformer
(windowed attention, patch merging).

Each call compresses to ``macs=0.5`` and ends one of two ways:
- ok: MACs within the budget, the dense model's output shape, finite outputs;
- refused: a ValueError (``bench.method.NotApplicableError`` is one) whose
  message is non-empty and names the method or one of the model's layers.
Either way the input model is untouched (state_dict and training flag).

A method is first called with no data; one refused for lack of data (its
message asks for ``data=``) is called again with a tiny synthetic DataBundle,
the family's builder (``build=``, the harness's protocol: keyword overrides of
the family's constructor) and one short training epoch. ``svd-accel`` runs with
``timing=False``: its per-layer timing sweep takes about 10 s per model here.
"""

from __future__ import annotations

import copy
from functools import partial

import pytest
import torch
from torch import nn

import bench
from bench import get_method, method_names
from bench.data import DataBundle, Split

SHAPE = (3, 32, 32)
NUM_CLASSES = 10
MACS = 0.5
# Settings that keep a method fast here without changing what it does.
FAST_PARAMS = {"svd-accel": {"timing": False}}
# Pairs that once failed inside a library and must now compress.
MUST_WORK = {("mixer", "prune-l1"), ("mixer", "prune-group"), ("mixer", "prune-random"),
             ("swin", "prune-l1"), ("resnet", "dense-small"), ("deit", "dense-small")}


def _timm(name: str, defaults: dict, **overrides) -> nn.Module:
    import timm

    return timm.create_model(name, pretrained=False, num_classes=NUM_CLASSES,
                             **{**defaults, **overrides})


def _mobilenetv3(**overrides) -> nn.Module:
    from timm.layers import get_act_layer
    from timm.models._efficientnet_builder import decode_arch_def
    from timm.models.mobilenetv3 import MobileNetV3

    arch = [["ds_r1_k3_s2_e1_c8_se0.25_nre"], ["ir_r1_k3_s2_e3_c16_se0.25"],
            ["ir_r1_k5_s1_e3_c24_se0.25"]]
    kwargs = {"stem_size": 8, "num_features": 64, **overrides}
    return MobileNetV3(decode_arch_def(arch), num_classes=NUM_CLASSES,
                       act_layer=get_act_layer("hard_swish"), **kwargs)


def _mixer(**overrides) -> nn.Module:
    from timm.models.mlp_mixer import MlpMixer

    # built from the class: mixer_s16_224 fixes patch_size, embed_dim and depth
    return MlpMixer(**{"num_classes": NUM_CLASSES, "img_size": 32, "patch_size": 8,
                       "embed_dim": 32, "num_blocks": 1, **overrides})


# family -> builder(**overrides) of a fresh tiny model
FAMILIES = {
    "resnet": partial(_timm, "resnet10t", {"channels": (8, 16, 32, 64), "stem_width": 8}),
    "mobilenetv3": _mobilenetv3,
    "convnext": partial(_timm, "convnext_atto", {"dims": (8, 16, 32, 64),
                                                 "depths": (1, 1, 1, 1)}),
    "regnet": partial(_timm, "regnetx_002", {"depth": 4, "w0": 8, "wa": 12.0, "wm": 1.5,
                                             "group_size": 8, "stem_width": 8}),
    "deit": partial(_timm, "deit_tiny_patch16_224", {"img_size": 32, "patch_size": 8,
                                                     "embed_dim": 32, "depth": 1,
                                                     "num_heads": 2}),
    "mixer": _mixer,
    "swin": partial(_timm, "swin_tiny_patch4_window7_224", {
        "img_size": 32, "patch_size": 4, "window_size": 4, "embed_dim": 16,
        "depths": (1, 1), "num_heads": (2, 4)}),
}
POST_METHODS = [n for n in method_names() if get_method(n).kind == "post"]


def _data() -> DataBundle:
    g = torch.Generator().manual_seed(0)

    def split(n: int) -> Split:
        return Split(torch.randn(n, *SHAPE, generator=g),
                     torch.randint(0, NUM_CLASSES, (n,), generator=g))

    return DataBundle("synthetic", split(32), split(32), split(16), NUM_CLASSES, SHAPE[0],
                      SHAPE[1], (0.0,) * 3, (1.0,) * 3)


def _compress(model: nn.Module, family: str, method: str):
    """bench.compress without data, then with data and a builder if it asks for data."""
    kw = {"macs": MACS, "example_input": torch.randn(2, *SHAPE),
          "method_params": FAST_PARAMS.get(method)}
    try:
        return bench.compress(model, method, **kw)
    except ValueError as e:
        if "data=" not in str(e):
            raise
    return bench.compress(model, method, data=_data(), build=FAMILIES[family],
                          train={"batch_size": 32, "augment": False}, **kw)


@pytest.mark.parametrize("method", POST_METHODS)
@pytest.mark.parametrize("family", list(FAMILIES))
def test_method_compresses_or_refuses_clearly(family, method):
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = FAMILIES[family]()  # left in train mode: compress must not switch it
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.randn(4, *SHAPE)
    with torch.no_grad():
        dense_out = copy.deepcopy(model).eval()(x)
    try:
        result = _compress(model, family, method)
    except ValueError as e:
        message = str(e)
        layers = [path for path, _ in model.named_modules() if path]
        assert message.strip(), (family, method)
        assert method in message or any(p in message for p in layers), message
        assert (family, method) not in MUST_WORK, message
        print(f"\n{family} x {method}: refused: {message}")
    else:
        if get_method(method).uses_target:
            assert result.macs_ratio <= MACS + 1e-9, (family, method, result.macs_ratio)
        with torch.no_grad():
            out = result.model.eval()(x)
        assert out.shape == dense_out.shape
        assert torch.isfinite(out).all()
        print(f"\n{family} x {method}: ok, MACs x{result.macs_ratio:.3f}")
    assert model.training, "the input model's training flag changed"
    after = model.state_dict()
    assert after.keys() == before.keys()
    assert all(torch.equal(before[k], after[k]) for k in before), "the input model changed"
