"""Gated full-rank decompositions for funnel regularization (methods/funnel.py).

A Linear as its full SVD and a Conv2d as its full Tucker-2, each with a
learnable gate per rank component and a mask; both compute exactly the
original layer until gates move or components are masked, and deploy to plain
layers with the gates folded in (or one dense layer where that is cheaper).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from methods.layers.lowrank import LowRankLinear, truncated_svd
from methods.layers.tucker import (
    TuckerConv2d,
    tucker2,
    tucker_conv_macs,
    tucker_conv_params,
)


def funnel_penalty(gates: Tensor, eps: float) -> Tensor:
    """sum f(g), f(g) = g^2 / (g^2 + eps): smooth, saturating sparsity penalty."""
    sq = gates * gates
    return (sq / (sq + eps)).sum()


class GatedLinear(nn.Module):
    """Linear as its full SVD, in->r (no bias) then r->out, with a gate per component."""

    def __init__(self, layer: nn.Linear, tokens: int = 1, gate_scale: float = 1.0):
        super().__init__()
        w = layer.weight.detach()
        r = min(w.shape)
        v, u = truncated_svd(w, r)
        s = torch.linalg.svdvals(w.double())
        self.in_features, self.out_features, self.tokens = w.shape[1], w.shape[0], tokens
        self.first = nn.Linear(self.in_features, r, bias=False)
        self.second = nn.Linear(r, self.out_features, bias=layer.bias is not None)
        with torch.no_grad():
            self.first.weight.copy_(v)
            self.second.weight.copy_(u)
            if layer.bias is not None:
                self.second.bias.copy_(layer.bias)
        self.gate_scale = gate_scale
        self.gate_raw = nn.Parameter(torch.full((r,), 1.0 / gate_scale, dtype=w.dtype))
        self.register_buffer("mask", torch.ones(r, dtype=w.dtype))
        self.register_buffer("sv", (s / s[0].clamp_min(1e-30)).to(w.dtype))
        self.to(w.device)

    @property
    def gate(self) -> Tensor:
        return self.gate_scale * self.gate_raw

    def forward(self, x: Tensor) -> Tensor:
        return self.second(self.first(x) * (self.gate * self.mask))

    def gates(self) -> list[tuple[str, Tensor, Tensor]]:
        """(mode, gate values, normalised singular values) per rank mode."""
        return [("r", self.gate, self.sv)]

    @torch.no_grad()
    def set_gates(self, mode: str, values: Tensor) -> None:
        self.gate_raw.copy_(values / self.gate_scale)

    def dense_cost(self, metric: str) -> int:
        w = self.in_features * self.out_features
        return w if metric == "params" else w * self.tokens

    def cost(self, kept: dict[str, int], metric: str) -> int:
        """Weights (or MACs per sample) of the cheaper deployable form at ``kept`` ranks."""
        w = kept["r"] * (self.in_features + self.out_features)
        return min(w if metric == "params" else w * self.tokens, self.dense_cost(metric))

    @torch.no_grad()
    def deploy(self, metric: str) -> nn.Module:
        keep = self.mask.nonzero().flatten()
        v = self.first.weight[keep] * self.gate[keep, None]
        u = self.second.weight[:, keep]
        bias = None if self.second.bias is None else self.second.bias.detach()
        if len(keep) * (self.in_features + self.out_features) < self.in_features * (
                self.out_features):
            return LowRankLinear.from_factors(v, u, bias)
        dense = nn.Linear(self.in_features, self.out_features, bias=bias is not None)
        dense = dense.to(device=v.device, dtype=v.dtype)
        dense.weight.copy_(u @ v)
        if bias is not None:
            dense.bias.copy_(bias)
        return dense


class GatedTuckerConv2d(nn.Module):
    """Conv as its full Tucker-2 (1x1 in->R1, core, 1x1 R2->out) with gates on R1 and R2."""

    def __init__(self, conv: nn.Conv2d, in_pixels: int = 1, out_pixels: int = 1,
                 gate_scale: float = 1.0):
        super().__init__()
        t = tucker2(conv.weight)
        bias = None if conv.bias is None else conv.bias.detach()
        self.body = TuckerConv2d.from_factors(conv, t.u_in, t.core, t.u_out, bias)
        self.geometry = dict(in_channels=conv.in_channels, out_channels=conv.out_channels,
                             kernel_size=conv.kernel_size, stride=conv.stride,
                             padding=conv.padding, dilation=conv.dilation,
                             padding_mode=conv.padding_mode, bias=conv.bias is not None)
        self.in_pixels, self.out_pixels = in_pixels, out_pixels
        dt = conv.weight.dtype
        r1, r2 = t.u_in.shape[1], t.u_out.shape[1]
        self.gate_scale = gate_scale
        init = 1.0 / gate_scale
        self.gate_in_raw = nn.Parameter(torch.full((r1,), init, dtype=dt,
                                                   device=conv.weight.device))
        self.gate_out_raw = nn.Parameter(torch.full((r2,), init, dtype=dt,
                                                    device=conv.weight.device))
        self.register_buffer("mask_in", torch.ones_like(self.gate_in_raw.detach()))
        self.register_buffer("mask_out", torch.ones_like(self.gate_out_raw.detach()))
        self.register_buffer("sv_in", t.sv_in / t.sv_in[0].clamp_min(1e-30))
        self.register_buffer("sv_out", t.sv_out / t.sv_out[0].clamp_min(1e-30))

    @property
    def gate_in(self) -> Tensor:
        return self.gate_scale * self.gate_in_raw

    @property
    def gate_out(self) -> Tensor:
        return self.gate_scale * self.gate_out_raw

    @torch.no_grad()
    def set_gates(self, mode: str, values: Tensor) -> None:
        getattr(self, f"gate_{mode}_raw").copy_(values / self.gate_scale)

    def forward(self, x: Tensor) -> Tensor:
        h = self.body.first(x) * (self.gate_in * self.mask_in)[:, None, None]
        h = self.body.core(h) * (self.gate_out * self.mask_out)[:, None, None]
        return self.body.last(h)

    def gates(self) -> list[tuple[str, Tensor, Tensor]]:
        return [("in", self.gate_in, self.sv_in), ("out", self.gate_out, self.sv_out)]

    def _template(self) -> nn.Conv2d:
        return nn.Conv2d(**self.geometry, device="meta")

    def dense_cost(self, metric: str) -> int:
        g = self.geometry
        w = g["in_channels"] * g["out_channels"] * self._template().weight[0, 0].numel()
        return w if metric == "params" else w * self.out_pixels

    def factored_cost(self, kept: dict[str, int], metric: str) -> int:
        conv = self._template()
        if metric == "params":
            return tucker_conv_params(conv, kept["in"], kept["out"])
        return tucker_conv_macs(conv, kept["in"], kept["out"], self.in_pixels, self.out_pixels)

    def cost(self, kept: dict[str, int], metric: str) -> int:
        """Weights (or MACs per sample) of the cheaper deployable form at ``kept`` ranks."""
        return min(self.factored_cost(kept, metric), self.dense_cost(metric))

    @torch.no_grad()
    def deploy(self, metric: str) -> nn.Module:
        k1 = self.mask_in.nonzero().flatten()
        k2 = self.mask_out.nonzero().flatten()
        u_in = (self.body.first.weight[k1, :, 0, 0] * self.gate_in[k1, None]).T  # (in, R1)
        core = self.body.core.weight[k2][:, k1] * self.gate_out[k2, None, None, None]
        u_out = self.body.last.weight[:, k2, 0, 0]  # (out, R2)
        bias = None if self.body.last.bias is None else self.body.last.bias.detach()
        if self.factored_cost({"in": len(k1), "out": len(k2)}, metric) < self.dense_cost(metric):
            return TuckerConv2d.from_factors(self._template(), u_in, core, u_out, bias)
        conv = nn.Conv2d(**self.geometry).to(device=core.device, dtype=core.dtype)
        conv.weight.copy_(torch.einsum("rskl,or,is->oikl", core, u_out, u_in))
        if bias is not None:
            conv.bias.copy_(bias)
        return conv


GATED = (GatedLinear, GatedTuckerConv2d)
