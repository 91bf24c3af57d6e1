"""LoRITa: low-rank induced training through linear layer composition.

Zhang, Alkhouri, Wang, "Structure-Preserving Network Compression Via Low-Rank
Induced Training Through Linear Layers Composition" (arXiv 2405.03089).

Training: every Linear(in->out) is over-parameterized as (N-1) Linear(in->in,
no bias) followed by Linear(in->out, bias), and every k x k Conv(in->out) as
Conv k x k (in->out, no bias) followed by (N-1) Conv 1x1 (out->out), bias on
the last, with no nonlinearity in between. The network computes the same
function class; weight decay on the N factors acts as a penalty on the
product that favours low rank (a Schatten-2/N quasi-norm), so the merged
weights' singular values decay faster than with N = 1.

Compression: the factors are multiplied back into one plain layer per
original layer (a conv kernel reshaped to (out, in*k*k) and left-multiplied by
the 1x1 matrices), then the same truncated SVD to a budget as the ``svd``
method (methods.svd.decompose_to_budget), deployed as LowRankLinear /
LowRankConv2d so the saving is real.

Our choices, where the paper or its code differs:
- The optimizer, learning rate, schedule and weight decay are the suite's (the
  harness owns training), so LoRITa is compared under the same budget and the
  same weight decay as every method. The weight decay is a declared parameter
  (``weight_decay``, default None = the suite's; the authors' CIFAR runs used
  1e-3 with SGD): a suite that sets it shows the value in the method's params
  and the cell's budget ledger. Under AdamW that decay is decoupled, not the L2
  penalty of the paper's SGD.
- Initialisation: the last Linear factor (or the first, k x k conv factor)
  inherits the model's own initial weight of that layer and bias; the added
  in->in / 1x1 factors get PyTorch's default init, as in the authors' code.
  That makes the merged product small at init, and this small init is part of
  the low-rank bias: with ``init="orthogonal"`` (our option) the merged weight
  starts with exactly the plain init's singular values, trains faster under
  plain SGD in networks without normalisation, but its spectrum stays close to
  the full-rank init in short trainings (see benchmarks/lorita_rank.py).
- The layers trained in N-factor form are the layers that will be truncated:
  the ``svd`` selection (include/exclude patterns, grouped/depthwise convs
  never). By default that leaves the first conv and the classifier plain in
  training and dense in deployment; the paper over-parameterizes them too
  (``skip_first_conv: false, skip_classifier: false`` does so and then also
  truncates them). Reason: they are not truncated by default, and a factorized
  patch embedding and head lengthened the initial loss plateau of our small
  ViT. The authors also offer iterative rank searches with retraining; we
  offer only local, global and energy selection.
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field
from torch import Tensor, nn

from bench import Method, MethodContext, Target, register_method
from methods.layers import select_layers, set_module, weight_matrix
from methods.layers.ranks import RankRule, effective_rank
from methods.layers.selection import LayerSelection
from methods.svd import svd_to_budget

FactorInit = Literal["orthogonal", "default"]


def init_factor(weight: Tensor, init: FactorInit) -> None:
    """Initialise an added square factor (in->in Linear or out->out 1x1 conv)."""
    if init == "orthogonal":
        with torch.no_grad():
            nn.init.orthogonal_(weight)
    elif init != "default":
        raise ValueError(f"Unknown factor init '{init}'. Allowed: orthogonal, default")


class LoRITaLinear(nn.Module):
    """y = W_N ... W_2 W_1 x + b: (N-1) in->in maps, then in->out with the bias."""

    def __init__(self, layer: nn.Linear, n: int, init: FactorInit = "default"):
        super().__init__()
        if n < 2:
            raise ValueError("LoRITaLinear needs N >= 2 factors")
        d_in = layer.in_features
        last = nn.Linear(d_in, layer.out_features, bias=layer.bias is not None)
        with torch.no_grad():
            last.weight.copy_(layer.weight)
            if layer.bias is not None:
                last.bias.copy_(layer.bias)
        self.factors = nn.ModuleList(
            [nn.Linear(d_in, d_in, bias=False) for _ in range(n - 1)] + [last])
        for f in self.factors[:-1]:
            init_factor(f.weight, init)
        self.to(layer.weight.device, layer.weight.dtype)

    def forward(self, x: Tensor) -> Tensor:
        for f in self.factors:
            x = f(x)
        return x

    @torch.no_grad()
    def merged(self) -> nn.Linear:
        """The one plain Linear computing the same map."""
        w = self.factors[0].weight.double()
        for f in self.factors[1:]:
            w = f.weight.double() @ w
        last: nn.Linear = self.factors[-1]
        out = nn.Linear(w.shape[1], w.shape[0], bias=last.bias is not None)
        out.to(last.weight.device, last.weight.dtype)
        out.weight.copy_(w.to(last.weight.dtype))
        if last.bias is not None:
            out.bias.copy_(last.bias)
        return out


class LoRITaConv2d(nn.Module):
    """k x k Conv (in->out, no bias) then (N-1) Conv 1x1 (out->out), bias on the last."""

    def __init__(self, conv: nn.Conv2d, n: int, init: FactorInit = "default"):
        super().__init__()
        if n < 2:
            raise ValueError("LoRITaConv2d needs N >= 2 factors")
        if conv.groups != 1:
            raise ValueError("grouped/depthwise convolutions are not over-parameterized")
        first = nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size,
                          stride=conv.stride, padding=conv.padding, dilation=conv.dilation,
                          bias=False, padding_mode=conv.padding_mode)
        with torch.no_grad():
            first.weight.copy_(conv.weight)
        c = conv.out_channels
        pointwise = [nn.Conv2d(c, c, 1, bias=(i == n - 2 and conv.bias is not None))
                     for i in range(n - 1)]
        for f in pointwise:
            init_factor(f.weight, init)
        if conv.bias is not None:
            with torch.no_grad():
                pointwise[-1].bias.copy_(conv.bias)
        self.factors = nn.ModuleList([first, *pointwise])
        self.to(conv.weight.device, conv.weight.dtype)

    def forward(self, x: Tensor) -> Tensor:
        for f in self.factors:
            x = f(x)
        return x

    @torch.no_grad()
    def merged(self) -> nn.Conv2d:
        """The one plain k x k Conv computing the same map."""
        first: nn.Conv2d = self.factors[0]
        w = first.weight.double().reshape(first.out_channels, -1)
        for f in self.factors[1:]:
            w = f.weight.double().reshape(f.out_channels, f.in_channels) @ w
        last: nn.Conv2d = self.factors[-1]
        out = nn.Conv2d(first.in_channels, first.out_channels, first.kernel_size,
                        stride=first.stride, padding=first.padding, dilation=first.dilation,
                        bias=last.bias is not None, padding_mode=first.padding_mode)
        out.to(first.weight.device, first.weight.dtype)
        out.weight.copy_(w.reshape(out.weight.shape).to(first.weight.dtype))
        if last.bias is not None:
            out.bias.copy_(last.bias)
        return out


OVERPARAMETERIZED = (LoRITaLinear, LoRITaConv2d)


def overparameterize(model: nn.Module, n: int, include: list[str] | None = None,
                     exclude: list[str] | None = None, init: FactorInit = "default",
                     skip_first_conv: bool = False,
                     skip_classifier: bool = False) -> nn.Module:
    """Replace every Linear/Conv2d (groups 1) by its N-factor form, in place.

    Structure depends only on the model's architecture and ``n``, so a state_dict
    saved after training loads into ``overparameterize(fresh_model, n)``.
    """
    if n <= 1:
        return model
    layers = select_layers(model, include, exclude, skip_first_conv, skip_classifier)
    for path, layer in layers.items():
        cls = LoRITaLinear if isinstance(layer, nn.Linear) else LoRITaConv2d
        new = cls(layer, n, init)
        set_module(model, path, new)
    return model


def merge_factors(model: nn.Module) -> nn.Module:
    """Multiply every over-parameterized layer back into one plain layer, in place."""
    for path, module in list(model.named_modules()):
        if isinstance(module, OVERPARAMETERIZED):
            set_module(model, path, module.merged())
    return model


def merged_effective_ranks(model: nn.Module, energy: float = 0.99) -> dict[str, int]:
    """Effective rank (singular values holding ``energy``) of each layer's merged weight."""
    out: dict[str, int] = {}
    for path, module in model.named_modules():
        if isinstance(module, OVERPARAMETERIZED):
            module = module.merged()
        elif not isinstance(module, (nn.Linear, nn.Conv2d)) or getattr(module, "groups", 1) != 1:
            continue
        if any(path.startswith(p + ".") for p in out):  # a factor inside a merged layer
            continue
        s = torch.linalg.svdvals(weight_matrix(module).double().cpu())
        out[path] = effective_rank(s, energy)
    return out


class LoRITaParams(LayerSelection):
    """The layer selection applies twice: the layers factorized in training are exactly
    the layers truncated later."""

    N: int = Field(default=2, ge=1, le=8, description="linear factors per layer during training "
                   "(1 = plain training)")
    weight_decay: float | None = Field(
        default=None, ge=0.0, description="weight decay of LoRITa's own training; None: the "
        "suite's (the authors' CIFAR runs used 1e-3 with SGD)")
    init: FactorInit = Field(
        default="default", description="init of the added square factors: default "
        "(PyTorch's, as the authors) or orthogonal (merged weight starts as the plain init)")
    rank_selection: RankRule = Field(
        default="auto", description="auto (local unless another rule has a clearly lower "
        "validation loss before fine-tuning), local, global or energy (as in svd)")


@register_method
class LoRITa(Method):
    """Train with N-factor linear compositions and weight decay, merge, truncated SVD."""

    name = "lorita"
    kind = "train"
    Params = LoRITaParams
    description = "low-rank induced training (N linear factors + weight decay), then SVD"

    def prepare(self, model: nn.Module, ctx: MethodContext) -> nn.Module:
        p: LoRITaParams = self.params
        return overparameterize(model, p.N, p.include or None, p.exclude or None, p.init,
                                p.skip_first_conv, p.skip_classifier)

    declares = {"weight_decay": "weight_decay"}

    def weight_decay(self, default: float) -> float:
        wd = self.params.weight_decay
        return default if wd is None else wd

    def uncompressed(self, model: nn.Module, ctx: MethodContext) -> nn.Module:
        """The trained model with its factors merged: plain layers, full rank."""
        model = merge_factors(model)
        ctx.record("effective_rank_99", merged_effective_ranks(model))
        return model

    def compress(self, model: nn.Module, target: Target, ctx: MethodContext) -> nn.Module:
        p: LoRITaParams = self.params
        return svd_to_budget(self.uncompressed(model, ctx), target, ctx, p.select,
                             p.rank_selection)
