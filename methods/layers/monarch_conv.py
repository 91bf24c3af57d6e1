"""Monarch convolutions: the Monarch factorization over channels (our extension of the paper).

Dao et al. define Monarch matrices for Linear layers only. A Conv2d
(C_in -> C_out, k x k) becomes, with ``nblocks`` = b:

- a grouped k x k conv (groups = b) mapping each input channel block i
  (p = ceil(C_in / b) channels, zero-padded) to q = min(p, s) intermediate
  channels: block-diagonal L over channels, each block carrying the k x k taps;
- the Monarch reshape-transpose permutation of the b*q intermediate channels
  (a channel shuffle: channel f = i*q + t goes to block f mod b, slot f // b);
- a grouped 1x1 conv (groups = b) mapping each block's q routed channels to
  s = ceil(C_out / b) outputs: block-diagonal R; outputs truncated to C_out.

Spatially it stays a k x k conv with the original stride, padding and
dilation. The equivalent dense kernel, reshaped to (C_out, C_in*k*k) with the
columns of each input channel's taps together, is a Monarch matrix whose input
blocks are p*k*k wide: each (output block j, input block i) submatrix
(s x p*k*k) is a sum of one outer product per intermediate channel routed from
i to j, with disjoint parameters. The Frobenius-optimal projection of a dense
kernel is therefore one truncated SVD per block pair (the Linear case of
methods.layers.monarch with P = p*k*k instead of p), and a Monarch conv's own
kernel projects onto itself exactly.

Cost per output pixel: b*q*(p*k*k + s) multiply-accumulates (two grouped
convs, both counted by torch.utils.flop_counter), against C_in*C_out*k*k dense.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from methods.layers.monarch import assemble_block_pairs, monarch_shape, project_block_pairs


def monarch_conv_weights(in_channels: int, out_channels: int, kernel_area: int,
                         nblocks: int) -> int:
    """Weights of a MonarchConv2d (bias excluded): b*q*(p*k*k + s); MACs per output pixel."""
    p, q, s = monarch_shape(in_channels, out_channels, nblocks)
    return nblocks * q * (p * kernel_area + s)


def _pair(v: int | tuple[int, ...]) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else (int(v[0]), int(v[1]))


class MonarchConv2d(nn.Module):
    """Conv2d(C_in -> C_out, k x k) as grouped k x k conv, channel shuffle, grouped 1x1 conv."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int | tuple[int, int],
                 nblocks: int, stride: int | tuple[int, int] = 1,
                 padding: int | tuple[int, int] | str = 0, dilation: int | tuple[int, int] = 1,
                 bias: bool = True, padding_mode: str = "zeros"):
        super().__init__()
        self.in_channels, self.out_channels, self.nblocks = in_channels, out_channels, nblocks
        self.kernel_size = _pair(kernel_size)
        p, q, s = monarch_shape(in_channels, out_channels, nblocks)
        self.p, self.q, self.s = p, q, s
        b = nblocks
        self.first = nn.Conv2d(b * p, b * q, self.kernel_size, stride=stride, padding=padding,
                               dilation=dilation, groups=b, bias=False,
                               padding_mode=padding_mode)
        self.second = nn.Conv2d(b * q, b * s, 1, groups=b, bias=False)
        self.bias = nn.Parameter(torch.empty(out_channels)) if bias else None
        self.reset_parameters()

    @property
    def kernel_area(self) -> int:
        return self.kernel_size[0] * self.kernel_size[1]

    def reset_parameters(self) -> None:
        """As MonarchLinear: L keeps the input's variance, R scales like a fan-in-q layer."""
        fan1 = self.p * self.kernel_area
        with torch.no_grad():
            self.first.weight.uniform_(-math.sqrt(3.0 / fan1), math.sqrt(3.0 / fan1))
            self.second.weight.uniform_(-1.0 / math.sqrt(self.q), 1.0 / math.sqrt(self.q))
            if self.bias is not None:
                bound = 1.0 / math.sqrt(self.in_channels * self.kernel_area)
                self.bias.uniform_(-bound, bound)

    def forward(self, x: Tensor) -> Tensor:
        b, p, q, s = self.nblocks, self.p, self.q, self.s
        if b * p != self.in_channels:
            x = F.pad(x, (0, 0, 0, 0, 0, b * p - self.in_channels))
        h = self.first(x)  # channel i*q + t: block i, intermediate t
        n, _, hh, ww = h.shape
        # route f = i*q + t to block j = f mod b, slot r = f // b (channel j*q + r)
        h = h.reshape(n, q, b, hh, ww).transpose(1, 2).reshape(n, b * q, hh, ww)
        y = self.second(h)
        if b * s != self.out_channels:
            y = y[:, : self.out_channels]
        if self.bias is not None:
            y = y + self.bias.view(1, -1, 1, 1)
        return y

    def dense_weight(self) -> Tensor:
        """The dense (C_out, C_in, kh, kw) kernel this layer applies (bias excluded)."""
        b, p, q, s = self.nblocks, self.p, self.q, self.s
        kh, kw = self.kernel_size
        blocks1 = self.first.weight.reshape(b, q, p * kh * kw)
        blocks2 = self.second.weight.reshape(b, s, q)
        pairs = assemble_block_pairs(blocks1, blocks2)  # (j, i, s, p*kh*kw)
        full = pairs.permute(0, 2, 1, 3).reshape(b * s, b * p, kh, kw)
        return full[: self.out_channels, : self.in_channels]

    @classmethod
    @torch.no_grad()
    def from_dense(cls, weight: Tensor, nblocks: int, bias: Tensor | None = None,
                   stride: int | tuple[int, int] = 1, padding: int | tuple[int, int] | str = 0,
                   dilation: int | tuple[int, int] = 1,
                   padding_mode: str = "zeros") -> MonarchConv2d:
        """Frobenius-optimal Monarch conv for a dense kernel (C_out, C_in, kh, kw)."""
        c_out, c_in, kh, kw = weight.shape
        layer = cls(c_in, c_out, (kh, kw), nblocks, stride, padding, dilation,
                    bias is not None, padding_mode)
        layer = layer.to(device=weight.device, dtype=weight.dtype)
        b, p, q, s = nblocks, layer.p, layer.q, layer.s
        padded = weight.new_zeros(b * s, b * p, kh, kw, dtype=torch.float64)
        padded[:c_out, :c_in] = weight.double()
        pairs = padded.reshape(b, s, b, p * kh * kw).permute(0, 2, 1, 3)  # (j, i, s, P)
        blocks1, blocks2 = project_block_pairs(pairs, q)
        layer.first.weight.copy_(blocks1.reshape(b * q, p, kh, kw).to(weight.dtype))
        layer.second.weight.copy_(blocks2.reshape(b * s, q, 1, 1).to(weight.dtype))
        if bias is not None:
            layer.bias.copy_(bias)
        return layer

    @classmethod
    def from_conv(cls, conv: nn.Conv2d, nblocks: int) -> MonarchConv2d:
        if conv.groups != 1:
            raise ValueError("grouped/depthwise convolutions have no Monarch form here")
        bias = None if conv.bias is None else conv.bias.detach()
        return cls.from_dense(conv.weight.detach(), nblocks, bias, **conv_geometry(conv))

    def geometry(self) -> dict:
        return conv_geometry(self.first)

    def extra_repr(self) -> str:
        return (f"{self.in_channels}->{self.out_channels}, kernel={self.kernel_size}, "
                f"nblocks={self.nblocks}, blocks=({self.p}->{self.q}->{self.s})")


def conv_geometry(conv: nn.Conv2d) -> dict:
    """What a Monarch conv must copy from a dense conv to compute the same map."""
    return {"stride": conv.stride, "padding": conv.padding, "dilation": conv.dilation,
            "padding_mode": conv.padding_mode}
