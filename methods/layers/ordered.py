"""A factorized layer U V^T whose rank components are ordered and can be cut at runtime.

Used by methods that train a low-rank model in which every prefix of rank
components is itself a good model (Maestro's ordered decomposition). The
factors are stored at the layer's full rank for the whole of training:
``kept_rank`` (a buffer, so it travels in ``state_dict``) says how many leading
components survive progressive shrinking, so shrinking never changes a
parameter's shape and a checkpoint always loads into a freshly prepared model.

Three ranks, from most to least permanent:

- ``kept_rank`` (buffer): the prefix that survived shrinking;
- ``rank_limit`` (attribute): a deploy-time cut, e.g. while searching ranks for
  a budget; applies in training and evaluation;
- ``od_rank`` (attribute): the ordered-dropout sample of this forward; applies
  only in training mode, so evaluation never sees a sampled sub-network.

The forward runs the cheaper of two exact forms of the same function for the
batch at hand: the two thin layers, or the dense weight ``U V^T`` rebuilt from
the factors then one dense layer (a training-time convenience; deployed models
are plain layers built with :meth:`OrderedFactorized.deploy`, factorized only
where ``r (in + out) < in * out``).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from methods.layers.lowrank import LowRankConv2d, LowRankLinear, weight_matrix


class OrderedFactorized(nn.Module):
    """W = U V^T over ordered rank components; V: (r, fan_in), U: (out, r)."""

    def __init__(self, layer: nn.Linear | nn.Conv2d):
        super().__init__()
        if isinstance(layer, nn.Conv2d):
            if layer.groups != 1:
                raise ValueError("grouped/depthwise convolutions are not factorized")
            if layer.padding_mode != "zeros":
                raise ValueError("only zero-padded convolutions are factorized")
            self.is_conv = True
            self.in_channels, self.out_channels = layer.in_channels, layer.out_channels
            self.kernel_size = tuple(layer.kernel_size)
            self.stride, self.padding = layer.stride, layer.padding
            self.dilation = layer.dilation
        elif isinstance(layer, nn.Linear):
            self.is_conv = False
        else:
            raise TypeError(f"cannot factorize {type(layer).__name__}")
        w = weight_matrix(layer)
        self.fan_out, self.fan_in = int(w.shape[0]), int(w.shape[1])
        self.full_rank = min(self.fan_out, self.fan_in)
        u, s, vh = torch.linalg.svd(w.double().cpu(), full_matrices=False)
        root = s.sqrt()
        dtype, device = layer.weight.dtype, layer.weight.device
        self.v = nn.Parameter((vh * root[:, None]).to(dtype=dtype, device=device))
        self.u = nn.Parameter((u * root).to(dtype=dtype, device=device))
        self.bias = None if layer.bias is None else nn.Parameter(layer.bias.detach().clone())
        self.register_buffer("kept_rank", torch.tensor(self.full_rank, dtype=torch.long))
        self.rank_limit: int | None = None
        self.od_rank: int | None = None

    # -- ranks -------------------------------------------------------------
    @property
    def kept(self) -> int:
        return int(self.kept_rank)

    def effective_rank(self) -> int:
        r = self.kept
        if self.rank_limit is not None:
            r = min(r, self.rank_limit)
        if self.training and self.od_rank is not None:
            r = min(r, self.od_rank)
        return max(1, r)

    def factorized_is_cheaper(self, rank: int) -> bool:
        """Whether two thin layers at ``rank`` cost less than the dense layer."""
        return rank * (self.fan_in + self.fan_out) < self.fan_in * self.fan_out

    def weight_cost(self, rank: int) -> int:
        """Weights of the cheaper deployable form at ``rank`` (bias excluded)."""
        return min(rank * (self.fan_in + self.fan_out), self.fan_in * self.fan_out)

    # -- training-time terms ----------------------------------------------
    def importance(self) -> Tensor:
        """||V_b|| x ||U_b|| for each kept component b."""
        k = self.kept
        return self.v[:k].detach().norm(dim=1) * self.u[:, :k].detach().norm(dim=0)

    def hierarchical_group_lasso(self) -> Tensor:
        """sum_b sqrt(sum_{j>=b} ||V_j||^2) + sqrt(sum_{j>=b} ||U_j||^2) over kept b."""
        k = self.kept
        v2 = self.v[:k].pow(2).sum(dim=1)
        u2 = self.u[:, :k].pow(2).sum(dim=0)
        tail_v = v2.flip(0).cumsum(0).flip(0)
        tail_u = u2.flip(0).cumsum(0).flip(0)
        # clamp: d sqrt / dx is infinite at 0
        return tail_v.clamp_min(1e-24).sqrt().sum() + tail_u.clamp_min(1e-24).sqrt().sum()

    # -- forward -----------------------------------------------------------
    def _thin_is_faster(self, x: Tensor, r: int) -> bool:
        """Two thin layers vs rebuilding U_r V_r^T (out*r*in MACs) then one dense layer."""
        if self.is_conv:
            n = x.shape[0] * x.shape[-2] * x.shape[-1] // (self.stride[0] * self.stride[1])
        else:
            n = x.numel() // self.fan_in
        thin = n * r * (self.fan_in + self.fan_out)
        return thin <= n * self.fan_in * self.fan_out + self.fan_out * r * self.fan_in

    def forward(self, x: Tensor) -> Tensor:
        r = self.effective_rank()
        v, u = self.v[:r], self.u[:, :r]
        if self._thin_is_faster(x, r):
            if not self.is_conv:
                return F.linear(F.linear(x, v), u, self.bias)
            h = F.conv2d(x, v.reshape(r, self.in_channels, *self.kernel_size),
                         stride=self.stride, padding=self.padding, dilation=self.dilation)
            return F.conv2d(h, u.reshape(self.out_channels, r, 1, 1), self.bias)
        w = u @ v
        if not self.is_conv:
            return F.linear(x, w, self.bias)
        return F.conv2d(x, w.reshape(self.out_channels, self.in_channels, *self.kernel_size),
                        self.bias, stride=self.stride, padding=self.padding,
                        dilation=self.dilation)

    # -- deployment --------------------------------------------------------
    def _template_conv(self) -> nn.Conv2d:
        return nn.Conv2d(self.in_channels, self.out_channels, self.kernel_size,
                         stride=self.stride, padding=self.padding, dilation=self.dilation,
                         bias=self.bias is not None, device="meta")

    @torch.no_grad()
    def deploy(self, rank: int | None = None) -> nn.Module:
        """Plain layers for the first ``rank`` components (default: the effective rank).

        LowRankLinear/LowRankConv2d when that is cheaper than dense, otherwise a
        dense Linear/Conv2d holding U_r V_r^T.
        """
        r = max(1, min(self.kept if rank is None else rank, self.kept))
        v, u = self.v[:r].detach().clone(), self.u[:, :r].detach().clone()
        bias = None if self.bias is None else self.bias.detach().clone()
        device = self.v.device
        if self.factorized_is_cheaper(r):
            if self.is_conv:
                return LowRankConv2d.from_factors(self._template_conv(), v, u, bias).to(device)
            return LowRankLinear.from_factors(v, u, bias).to(device)
        w = u @ v
        if self.is_conv:
            dense: nn.Module = nn.Conv2d(self.in_channels, self.out_channels, self.kernel_size,
                                         stride=self.stride, padding=self.padding,
                                         dilation=self.dilation, bias=bias is not None)
            dense.weight.copy_(w.reshape(dense.weight.shape))
        else:
            dense = nn.Linear(self.fan_in, self.fan_out, bias=bias is not None)
            dense.weight.copy_(w)
        if bias is not None:
            dense.bias.copy_(bias)
        return dense.to(device)

    def extra_repr(self) -> str:
        kind = "conv" if self.is_conv else "linear"
        return f"{kind} {self.fan_in}->{self.fan_out}, kept_rank={self.kept}/{self.full_rank}"


def rank_for_fraction(full: int, p: float) -> int:
    """ceil(p * full), at least 1."""
    return max(1, min(full, math.ceil(p * full - 1e-9)))


__all__ = ["OrderedFactorized", "rank_for_fraction"]
