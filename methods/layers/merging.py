"""Layer merging (Hajimolahoseini et al.): multiply adjacent linear maps into one.

Where a factor is followed by another linear map with no nonlinearity between
them (in an ``nn.Sequential``, only Identity or p=0 Dropout between), the maps
are multiplied into one layer: dense, or a factorized pair through the
narrowest inner width, whichever costs fewer MACs. Used by ``svd-accel``.
"""

from __future__ import annotations

import torch
from torch import nn

from methods.layers.lowrank import LowRankLinear


def _linear_maps(module: nn.Module) -> list[nn.Linear] | None:
    if type(module) is nn.Linear:
        return [module]
    if isinstance(module, LowRankLinear):
        return [module.first, module.second]
    return None


def _transparent(module: nn.Module) -> bool:
    return isinstance(module, nn.Identity) or (isinstance(module, nn.Dropout) and module.p == 0)


def merge_maps(maps: list[nn.Linear]) -> nn.Module:
    """One module computing maps[-1](...maps[0](x)): dense or a pair through the narrowest width."""
    dims = [maps[0].in_features] + [m.out_features for m in maps]
    inner = min(range(1, len(dims) - 1), key=lambda i: dims[i])

    def compose(chain: list[nn.Linear]) -> tuple[torch.Tensor, torch.Tensor | None]:
        w = chain[0].weight.detach().double()
        b = None if chain[0].bias is None else chain[0].bias.detach().double()
        for m in chain[1:]:
            mw = m.weight.detach().double()
            w = mw @ w
            b = None if b is None else mw @ b
            if m.bias is not None:
                b = m.bias.detach().double() if b is None else b + m.bias.detach().double()
        return w, b

    d0, dm, dn = dims[0], dims[inner], dims[-1]
    dtype, device = maps[0].weight.dtype, maps[0].weight.device
    if d0 * dn <= dm * (d0 + dn):
        w, b = compose(maps)
        out = nn.Linear(d0, dn, bias=b is not None)
        with torch.no_grad():
            out.weight.copy_(w.to(dtype))
            if b is not None:
                out.bias.copy_(b.to(dtype))
        return out.to(device)
    w1, b1 = compose(maps[:inner])
    w2, b2 = compose(maps[inner:])
    if b1 is not None:  # push the inner bias through the second half
        b2 = w2 @ b1 if b2 is None else b2 + w2 @ b1
    out = LowRankLinear.from_factors(w1.to(dtype), w2.to(dtype),
                                     None if b2 is None else b2.to(dtype))
    return out.to(device)


def merge_linear_chains(model: nn.Module) -> int:
    """Merge runs of linear maps inside every nn.Sequential, in place; returns merges done."""
    merged = 0
    for seq in [m for m in model.modules() if isinstance(m, nn.Sequential)]:
        names = list(seq._modules)
        i = 0
        while i < len(names):
            maps = _linear_maps(seq._modules[names[i]])
            if maps is None:
                i += 1
                continue
            run, j = [names[i]], i + 1
            chain = list(maps)
            while j < len(names):
                mod = seq._modules[names[j]]
                nxt = _linear_maps(mod)
                if nxt is not None:
                    chain += nxt
                    run.append(names[j])
                elif not _transparent(mod):
                    break
                j += 1
            linears = [n for n in run if _linear_maps(seq._modules[n]) is not None]
            if len(linears) > 1:
                seq._modules[run[0]] = merge_maps(chain)
                for n in run[1:]:
                    seq._modules[n] = nn.Identity()
                merged += len(linears) - 1
            i = j
    return merged
