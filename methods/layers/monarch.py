"""Monarch matrices (Dao et al., ICML 2022): two block-diagonal factors and a fixed permutation.

M = P^T B2 P B1 for a Linear(in -> out) with ``nblocks`` = b blocks per factor:

- the input is zero-padded to b * p (p = ceil(in / b)) and split into b blocks;
- B1 maps each input block i (size p) to q intermediate values, q = min(p, s);
- the reshape-transpose permutation sends intermediate value f = i * q + t
  (block i, position t) to second-factor block j = f mod b, position r = f // b;
- B2 maps each second block j (q values) to s = ceil(out / b) outputs; the
  padded output is truncated to ``out``.

Every (output block j, input block i) submatrix of M is therefore a sum of
outer products, one per intermediate value routed from i to j: it has rank
floor(q/b) or ceil(q/b), and those ranks use disjoint parameters. The
Frobenius-optimal projection of a dense W onto this set is thus one truncated
SVD per block pair (``MonarchLinear.from_dense``); a Monarch matrix projects
onto itself exactly (up to float error).

Cost per token: b * q * (p + s) multiply-accumulates (two ``torch.bmm``, both
seen by ``torch.utils.flop_counter``), about (in + out) / (b * max(in, out)) of
dense. q = min(p, s) follows the authors' public layer; b = 1 is a plain
two-layer product and never cheaper than dense.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def monarch_shape(in_features: int, out_features: int, nblocks: int) -> tuple[int, int, int]:
    """Block sizes (p, q, s): input block, intermediate per block, output block."""
    if nblocks < 1:
        raise ValueError(f"nblocks must be >= 1, got {nblocks}")
    p = math.ceil(in_features / nblocks)
    s = math.ceil(out_features / nblocks)
    return p, min(p, s), s


def monarch_weights(in_features: int, out_features: int, nblocks: int) -> int:
    """Weights of a MonarchLinear (bias excluded): b * q * (p + s)."""
    p, q, s = monarch_shape(in_features, out_features, nblocks)
    return nblocks * q * (p + s)


def _routing(nblocks: int, q: int) -> tuple[Tensor, Tensor, Tensor]:
    """For each (input block i, intermediate t): target block j, slot r, rank index k.

    Flat index f = i*q + t goes to block j = f mod b at slot r = f // b. Within
    block i the t routed to one j are spaced b apart, so k = t // b numbers them.
    """
    i = torch.arange(nblocks)[:, None]
    t = torch.arange(q)[None, :]
    f = i * q + t
    j, r = f % nblocks, f // nblocks
    k = (t // nblocks).expand_as(f)
    return j, r, k


def assemble_block_pairs(blocks1: Tensor, blocks2: Tensor) -> Tensor:
    """(out block j, in block i) submatrices (b, b, s, P) of P^T B2 P B1.

    ``blocks1``: (b, q, P), block i maps P inputs to q intermediate values;
    ``blocks2``: (b, s, q), block j maps its q routed values to s outputs.
    """
    b, q = blocks1.shape[0], blocks1.shape[1]
    j, r, k = _routing(b, q)
    # column of B2 that each (i, t) feeds: blocks2[j(i,t), :, r(i,t)] -> (b, q, s)
    left = blocks2[j, :, r]
    onehot = F.one_hot(j, b).to(left.dtype)  # (i, t, j)
    return torch.einsum("its,itp,itj->jisp", left, blocks1, onehot)


def project_block_pairs(pairs: Tensor, q: int) -> tuple[Tensor, Tensor]:
    """Frobenius-optimal factors (blocks1 (b, q, P), blocks2 (b, s, q)) for block pairs.

    ``pairs`` (b, b, s, P) indexed (j, i): the intermediate values routed from
    input block i to output block j own disjoint parameters and form a rank-n_ij
    product, so the best fit is each pair's own truncated SVD (Eckart-Young),
    with sqrt of the singular values on each side.
    """
    b, s = pairs.shape[0], pairs.shape[2]
    u, sv, vh = torch.linalg.svd(pairs.double(), full_matrices=False)
    root = sv.sqrt()
    us = u * root[..., None, :]  # (j, i, s, m) columns scaled
    vs = vh * root[..., :, None]  # (j, i, m, P) rows scaled
    j, r, k = _routing(b, q)
    i = torch.arange(b)[:, None].expand_as(j)
    blocks1 = vs[j, i, k]  # (i, t, P)
    blocks2 = torch.zeros(b, s, q, dtype=torch.float64, device=pairs.device)
    blocks2[j, :, r] = us[j, i, :, k]  # (i, t, s): column r of blocks2[j]
    return blocks1, blocks2


class MonarchLinear(nn.Module):
    """Linear(in -> out) with a Monarch weight; forward is two batched matmuls."""

    def __init__(self, in_features: int, out_features: int, nblocks: int, bias: bool = True):
        super().__init__()
        self.in_features, self.out_features, self.nblocks = in_features, out_features, nblocks
        p, q, s = monarch_shape(in_features, out_features, nblocks)
        self.p, self.q, self.s = p, q, s
        self.blocks1 = nn.Parameter(torch.empty(nblocks, q, p))  # B1: block i maps p -> q
        self.blocks2 = nn.Parameter(torch.empty(nblocks, s, q))  # B2: block j maps q -> s
        self.bias = nn.Parameter(torch.empty(out_features)) if bias else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Variance like nn.Linear's default: B1 keeps it, B2 scales as a fan-in-q Linear."""
        with torch.no_grad():
            self.blocks1.uniform_(-math.sqrt(3.0 / self.p), math.sqrt(3.0 / self.p))
            self.blocks2.uniform_(-1.0 / math.sqrt(self.q), 1.0 / math.sqrt(self.q))
            if self.bias is not None:
                bound = 1.0 / math.sqrt(self.in_features)
                self.bias.uniform_(-bound, bound)

    def forward(self, x: Tensor) -> Tensor:
        lead = x.shape[:-1]
        b, p, q, s = self.nblocks, self.p, self.q, self.s
        x = x.reshape(-1, self.in_features)
        n = x.shape[0]
        if b * p != self.in_features:
            x = F.pad(x, (0, b * p - self.in_features))
        h = torch.bmm(x.reshape(n, b, p).transpose(0, 1), self.blocks1.transpose(1, 2))
        # h: (b, n, q) indexed by (i, t); route f = i*q + t to (j = f mod b, r = f // b)
        h = h.transpose(0, 1).reshape(n, q, b).permute(2, 0, 1)
        y = torch.bmm(h, self.blocks2.transpose(1, 2))  # (b, n, s)
        y = y.transpose(0, 1).reshape(n, b * s)[:, : self.out_features]
        if self.bias is not None:
            y = y + self.bias
        return y.reshape(*lead, self.out_features)

    def block_pairs(self) -> Tensor:
        """The (out block j, in block i) submatrices of the padded weight: (b, b, s, p)."""
        return assemble_block_pairs(self.blocks1, self.blocks2)

    def dense_matrix(self) -> Tensor:
        """The (out, in) weight this layer applies, built from its blocks (bias excluded)."""
        b, p, s = self.nblocks, self.p, self.s
        pairs = self.block_pairs()  # (j, i, s, p)
        full = pairs.permute(0, 2, 1, 3).reshape(b * s, b * p)
        return full[: self.out_features, : self.in_features]

    @classmethod
    @torch.no_grad()
    def from_dense(cls, weight: Tensor, nblocks: int, bias: Tensor | None = None) -> MonarchLinear:
        """Frobenius-optimal Monarch approximation of ``weight`` (out, in).

        One truncated SVD per block pair (batched), to that pair's rank. Padding
        rows/columns are zero in the padded weight; their singular vectors then
        carry zero singular values, so the padding never steals rank.
        """
        out_f, in_f = weight.shape
        layer = cls(in_f, out_f, nblocks, bias=bias is not None)
        layer = layer.to(device=weight.device, dtype=weight.dtype)
        b, p, q, s = nblocks, layer.p, layer.q, layer.s
        padded = weight.new_zeros(b * s, b * p, dtype=torch.float64)
        padded[:out_f, :in_f] = weight.double()
        blocks1, blocks2 = project_block_pairs(padded.reshape(b, s, b, p).permute(0, 2, 1, 3), q)
        layer.blocks1.copy_(blocks1.to(weight.dtype))
        layer.blocks2.copy_(blocks2.to(weight.dtype))
        if bias is not None:
            layer.bias.copy_(bias)
        return layer

    @classmethod
    def from_linear(cls, linear: nn.Linear, nblocks: int) -> MonarchLinear:
        bias = None if linear.bias is None else linear.bias.detach()
        return cls.from_dense(linear.weight.detach(), nblocks, bias)

    def extra_repr(self) -> str:
        return (f"{self.in_features}->{self.out_features}, nblocks={self.nblocks}, "
                f"blocks=({self.p}->{self.q}->{self.s}), bias={self.bias is not None}")
