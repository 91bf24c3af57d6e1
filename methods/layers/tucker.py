"""Tucker-2 decomposition of a conv kernel over its two channel modes (HOSVD).

A kernel W (out, in, k, k) is written as W = core x_0 U_out x_1 U_in with
orthonormal U_out (out, R2), U_in (in, R1) and core (R2, R1, k, k), and
deployed as three real convs: 1x1 in->R1, k x k core R1->R2 (the original
stride/padding/dilation), 1x1 R2->out (the original bias). MACs per output
pixel: in*R1*(H_in W_in / H_out W_out) + k*k*R1*R2 + R2*out.

Implementation: plain ``torch.linalg`` rather than tensorly. Tucker-2 by HOSVD
is two SVDs of unfoldings and one contraction (a dozen lines); tensorly's
``partial_tucker`` adds HOOI iterations, which only matter for a truncated
fit, whereas funnel regularization decomposes at full rank (exact) and lets
the gates choose the ranks. tensorly's PyTorch backend is also a process-wide
setting (``tl.set_backend``) that would leak into other methods run in the same
process. The mode singular values are returned too: they order the components.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn


@dataclass
class Tucker2:
    """Factors of W ~ core x_0 u_out x_1 u_in, with the mode singular values (descending)."""

    u_in: Tensor  # (in, R1)
    core: Tensor  # (R2, R1, k, k)
    u_out: Tensor  # (out, R2)
    sv_in: Tensor  # (R1,)
    sv_out: Tensor  # (R2,)

    def reconstruct(self) -> Tensor:
        return torch.einsum("rskl,or,is->oikl", self.core, self.u_out, self.u_in)


def _mode_basis(unfolded: Tensor, rank: int) -> tuple[Tensor, Tensor]:
    u, s, _ = torch.linalg.svd(unfolded, full_matrices=False)
    return u[:, :rank], s[:rank]


def tucker2(kernel: Tensor, rank_in: int | None = None, rank_out: int | None = None) -> Tucker2:
    """HOSVD over the out and in modes; ``None`` ranks keep the full mode rank (exact)."""
    out_c, in_c = kernel.shape[:2]
    w = kernel.detach().double()
    full_out = min(out_c, w[0].numel())
    full_in = min(in_c, out_c * w[0, 0].numel())
    u_out, sv_out = _mode_basis(w.reshape(out_c, -1), rank_out or full_out)
    u_in, sv_in = _mode_basis(w.transpose(0, 1).reshape(in_c, -1), rank_in or full_in)
    core = torch.einsum("oikl,or,is->rskl", w, u_out, u_in)
    dt = kernel.dtype
    return Tucker2(u_in.to(dt), core.to(dt), u_out.to(dt), sv_in.to(dt), sv_out.to(dt))


class TuckerConv2d(nn.Module):
    """Conv 1x1 (in->R1) -> Conv k x k (R1->R2) -> Conv 1x1 (R2->out, bias)."""

    def __init__(self, conv: nn.Conv2d, rank_in: int, rank_out: int):
        super().__init__()
        if conv.groups != 1:
            raise ValueError("grouped/depthwise convolutions are not decomposed")
        self.rank_in, self.rank_out = rank_in, rank_out
        self.first = nn.Conv2d(conv.in_channels, rank_in, 1, bias=False)
        self.core = nn.Conv2d(rank_in, rank_out, conv.kernel_size, stride=conv.stride,
                              padding=conv.padding, dilation=conv.dilation, bias=False,
                              padding_mode=conv.padding_mode)
        self.last = nn.Conv2d(rank_out, conv.out_channels, 1, bias=conv.bias is not None)

    def forward(self, x: Tensor) -> Tensor:
        return self.last(self.core(self.first(x)))

    @classmethod
    @torch.no_grad()
    def from_factors(cls, conv: nn.Conv2d, u_in: Tensor, core: Tensor, u_out: Tensor,
                     bias: Tensor | None) -> TuckerConv2d:
        layer = cls(conv, u_in.shape[1], u_out.shape[1]).to(device=core.device, dtype=core.dtype)
        layer.first.weight.copy_(u_in.T[:, :, None, None])
        layer.core.weight.copy_(core)
        layer.last.weight.copy_(u_out[:, :, None, None])
        if bias is not None:
            layer.last.bias.copy_(bias)
        return layer

    def extra_repr(self) -> str:
        return f"ranks=({self.rank_in}, {self.rank_out})"


def tucker_conv_macs(conv: nn.Conv2d, rank_in: int, rank_out: int, in_pixels: int,
                     out_pixels: int) -> int:
    """Closed-form MACs per sample of the three-conv form (bias excluded)."""
    k = conv.weight[0, 0].numel()
    return (conv.in_channels * rank_in * in_pixels + k * rank_in * rank_out * out_pixels
            + rank_out * conv.out_channels * out_pixels)


def tucker_conv_params(conv: nn.Conv2d, rank_in: int, rank_out: int) -> int:
    """Weights of the three-conv form (bias excluded)."""
    k = conv.weight[0, 0].numel()
    return conv.in_channels * rank_in + k * rank_in * rank_out + rank_out * conv.out_channels
