"""Build models by name: small built-ins, or any timm model with pretrained=False."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from bench.registry import Registry, unknown_message

Builder = Callable[..., nn.Module]
BUILTIN_MODELS: Registry[Builder] = Registry("model")
register_model = BUILTIN_MODELS.decorator


class MLP(nn.Module):
    """Flatten -> [Linear -> ReLU] x len(hidden) -> Linear classifier."""

    def __init__(self, in_features: int, num_classes: int, hidden: tuple[int, ...] = (256, 128)):
        super().__init__()
        layers: list[nn.Module] = [nn.Flatten()]
        width = in_features
        for h in hidden:
            layers += [nn.Linear(width, h), nn.ReLU(inplace=True)]
            width = h
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


@register_model("mlp")
def build_mlp(num_classes: int, in_chans: int, img_size: int,
              hidden: list[int] | tuple[int, ...] = (256, 128)) -> nn.Module:
    return MLP(in_chans * img_size * img_size, num_classes, tuple(hidden))


def is_known_model(name: str) -> bool:
    if name in BUILTIN_MODELS:
        return True
    import timm

    return timm.is_model(name)


def model_names_message(name: str) -> str:
    import timm

    candidates = BUILTIN_MODELS.names() + timm.list_models()
    msg = unknown_message("model", name, candidates)
    # timm has ~1,300 names: keep the suggestion, shorten the list
    head, _, _ = msg.partition(" Available:")
    builtins = ", ".join(BUILTIN_MODELS.names())
    return f"{head} Available: the built-ins {builtins} or any name in timm.list_models()"


def adapt_stem_for_small_images(model: nn.Module) -> nn.Module:
    """The usual CIFAR stem: first conv 3x3 stride 1, and no max-pool after it.

    An ImageNet stem (7x7 stride-2 conv + stride-2 max-pool) shrinks a 32x32 input
    to 8x8 before the first block; the CIFAR ResNets of the literature keep the
    full 32x32 (28x28) there. For timm ResNets (``resnet18``, ``resnet10t`` with
    its deep stem, ``resnet*d``, SE/ResNeXt variants) the first Conv2d (``conv1``
    or ``conv1.0``) becomes 3x3 stride 1 with the same channels, and the stem's
    ``maxpool`` becomes an Identity. Other CNNs get the same first-conv change;
    only a max-pool registered as ``maxpool`` / ``stem.pool`` is dropped. ViTs
    are refused: give them ``img_size``/``patch_size`` kwargs instead.
    """
    first_conv_path = None
    for path, module in model.named_modules():
        if isinstance(module, nn.Conv2d):
            first_conv_path = path
            break
    if first_conv_path is None:
        return model
    conv: nn.Conv2d = model.get_submodule(first_conv_path)
    if "patch_embed" in first_conv_path or (
            conv.kernel_size == conv.stride and conv.kernel_size[0] > 2):
        raise ValueError(
            f"stem: cifar is for CNN stems; {type(model).__name__}'s first conv "
            f"'{first_conv_path}' is a patch embedding. For a ViT on small images set "
            "kwargs img_size/patch_size instead (e.g. patch_size: 4 for 32x32).")
    new = nn.Conv2d(conv.in_channels, conv.out_channels, kernel_size=3, stride=1, padding=1,
                    bias=conv.bias is not None)
    _set_submodule(model, first_conv_path, new)
    for path in ("maxpool", "stem.pool"):
        try:
            module = model.get_submodule(path)
        except AttributeError:
            continue
        if isinstance(module, nn.MaxPool2d):
            _set_submodule(model, path, nn.Identity())
    return model


def _set_submodule(root: nn.Module, path: str, new: nn.Module) -> None:
    parent_path, _, attr = path.rpartition(".")
    parent = root.get_submodule(parent_path) if parent_path else root
    setattr(parent, attr, new)


def build_model(name: str, num_classes: int, in_chans: int, img_size: int,
                kwargs: dict[str, Any] | None = None, stem: str | None = None,
                checkpoint: str | Path | None = None) -> nn.Module:
    """A fresh model for the dataset's shape. Pretrained weights only from a local file."""
    kwargs = {k: v for k, v in (kwargs or {}).items() if v is not None}
    if name in BUILTIN_MODELS:
        model = BUILTIN_MODELS.get(name)(num_classes=num_classes, in_chans=in_chans,
                                         img_size=img_size, **kwargs)
    else:
        import timm

        if not timm.is_model(name):
            raise ValueError(model_names_message(name))
        try:
            model = timm.create_model(name, pretrained=False, num_classes=num_classes,
                                      in_chans=in_chans, **{"img_size": img_size, **kwargs})
        except TypeError:  # this family has no img_size argument (CNNs)
            model = timm.create_model(name, pretrained=False, num_classes=num_classes,
                                      in_chans=in_chans, **kwargs)
    if stem == "cifar":
        model = adapt_stem_for_small_images(model)
    elif stem not in (None, "default"):
        raise ValueError(f"Unknown stem '{stem}'. Allowed: default, cifar")
    if checkpoint:
        state = torch.load(checkpoint, map_location="cpu", weights_only=True)
        model.load_state_dict(state)
    return model
