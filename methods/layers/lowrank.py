"""Factorized layers that really are two layers: the saving shows up in compute.

LowRankLinear(in->out, rank r) = Linear(in->r, no bias) then Linear(r->out):
r(in+out) MACs per token instead of in*out. LowRankConv2d = k x k Conv(in->r,
no bias, same stride/padding/dilation) then 1x1 Conv(r->out).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


class LowRankLinear(nn.Module):
    def __init__(self, in_features: int, out_features: int, rank: int, bias: bool = True):
        super().__init__()
        self.in_features, self.out_features, self.rank = in_features, out_features, rank
        self.first = nn.Linear(in_features, rank, bias=False)
        self.second = nn.Linear(rank, out_features, bias=bias)

    def forward(self, x: Tensor) -> Tensor:
        return self.second(self.first(x))

    @classmethod
    def from_factors(cls, v: Tensor, u: Tensor, bias: Tensor | None) -> LowRankLinear:
        """W ~ u @ v with v: (r, in), u: (out, r)."""
        layer = cls(v.shape[1], u.shape[0], v.shape[0], bias=bias is not None)
        with torch.no_grad():
            layer.first.weight.copy_(v)
            layer.second.weight.copy_(u)
            if bias is not None:
                layer.second.bias.copy_(bias)
        return layer

    def extra_repr(self) -> str:
        return f"{self.in_features}->{self.rank}->{self.out_features}"


class LowRankConv2d(nn.Module):
    def __init__(self, conv: nn.Conv2d, rank: int):
        super().__init__()
        if conv.groups != 1:
            raise ValueError("grouped/depthwise convolutions are not factorized")
        self.rank = rank
        self.first = nn.Conv2d(conv.in_channels, rank, conv.kernel_size, stride=conv.stride,
                               padding=conv.padding, dilation=conv.dilation, bias=False,
                               padding_mode=conv.padding_mode)
        self.second = nn.Conv2d(rank, conv.out_channels, 1, bias=conv.bias is not None)

    def forward(self, x: Tensor) -> Tensor:
        return self.second(self.first(x))

    @classmethod
    def from_factors(cls, conv: nn.Conv2d, v: Tensor, u: Tensor,
                     bias: Tensor | None) -> LowRankConv2d:
        """Kernel (out, in*k*k) ~ u @ v with v: (r, in*k*k), u: (out, r)."""
        layer = cls(conv, v.shape[0])
        with torch.no_grad():
            layer.first.weight.copy_(v.reshape(layer.first.weight.shape))
            layer.second.weight.copy_(u.reshape(layer.second.weight.shape))
            if bias is not None:
                layer.second.bias.copy_(bias)
        return layer


def weight_matrix(layer: nn.Linear | nn.Conv2d) -> Tensor:
    """The layer's weight as a matrix (out, in) or (out, in*k*k)."""
    return layer.weight.detach().reshape(layer.weight.shape[0], -1)


def full_rank(layer: nn.Linear | nn.Conv2d) -> int:
    w = layer.weight
    return min(w.shape[0], w[0].numel())


def factorized_params(layer: nn.Linear | nn.Conv2d, rank: int) -> int:
    """Weights of the factorized pair (bias excluded: it is the same either way)."""
    out = layer.weight.shape[0]
    fan_in = layer.weight[0].numel()
    return rank * (fan_in + out)


def dense_params(layer: nn.Linear | nn.Conv2d) -> int:
    return layer.weight.numel()


def truncated_svd(matrix: Tensor, rank: int) -> tuple[Tensor, Tensor]:
    """Best rank-r factors (u @ v) of a matrix, splitting sqrt(S) between them."""
    u, s, vh = torch.linalg.svd(matrix.double(), full_matrices=False)
    root = s[:rank].sqrt()
    return (vh[:rank] * root[:, None]).to(matrix.dtype), (u[:, :rank] * root).to(matrix.dtype)


def factorize(layer: nn.Linear | nn.Conv2d, rank: int) -> nn.Module:
    """Replace a dense layer by its rank-r truncated SVD as two real layers."""
    v, u = truncated_svd(weight_matrix(layer), rank)
    bias = None if layer.bias is None else layer.bias.detach()
    if isinstance(layer, nn.Linear):
        out = LowRankLinear.from_factors(v, u, bias)
    else:
        out = LowRankConv2d.from_factors(layer, v, u, bias)
    return out.to(layer.weight.device)
