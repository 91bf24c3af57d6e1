"""In-memory datasets: tensors for each split, batched without worker processes.

Small benchmark datasets fit in memory; keeping them as tensors makes each
epoch a few tensor slices instead of a DataLoader with worker processes.
Images are stored as uint8 (or float) and normalised per batch, so a CIFAR-size
training set costs 150 MB rather than 600 MB.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

Augment = Callable[[Tensor, torch.Generator], Tensor]


@dataclass
class Split:
    x: Tensor
    y: Tensor

    def __len__(self) -> int:
        return int(self.y.shape[0])


@dataclass
class DataBundle:
    """Train/val/test splits plus what a model needs to know about the inputs."""

    name: str
    train: Split
    val: Split
    test: Split
    num_classes: int
    in_chans: int
    img_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    augment: Augment | None = None
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return (self.in_chans, self.img_size, self.img_size)

    def normalize(self, x: Tensor) -> Tensor:
        if x.dtype == torch.uint8:
            x = x.float().div_(255.0)
        mean = torch.tensor(self.mean, dtype=x.dtype).view(1, -1, 1, 1)
        std = torch.tensor(self.std, dtype=x.dtype).view(1, -1, 1, 1)
        return (x - mean) / std

    def batches(
        self,
        split: str,
        batch_size: int,
        shuffle: bool = False,
        generator: torch.Generator | None = None,
        augment: bool = False,
        limit: int | None = None,
    ) -> Iterator[tuple[Tensor, Tensor]]:
        """Yield normalised (x, y) batches of one split, optionally shuffled/augmented."""
        data: Split = getattr(self, split)
        n = len(data)
        order = torch.randperm(n, generator=generator) if shuffle else torch.arange(n)
        if limit is not None:
            order = order[: limit * batch_size]
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            x = data.x[idx]
            if augment and self.augment is not None:
                x = self.augment(x, generator or torch.Generator().manual_seed(0))
            yield self.normalize(x), data.y[idx]


def stratified_split(
    y: Tensor, fractions: tuple[float, ...], seed: int
) -> list[Tensor]:
    """Index tensors for each fraction (the last takes the rest), stratified by label."""
    g = torch.Generator().manual_seed(seed)
    parts: list[list[Tensor]] = [[] for _ in fractions]
    for label in torch.unique(y):
        idx = torch.nonzero(y == label).flatten()
        idx = idx[torch.randperm(len(idx), generator=g)]
        start = 0
        for i, frac in enumerate(fractions):
            stop = len(idx) if i == len(fractions) - 1 else start + round(frac * len(idx))
            parts[i].append(idx[start:stop])
            start = stop
    out = []
    for p in parts:
        cat = torch.cat(p)
        out.append(cat[torch.randperm(len(cat), generator=g)])
    return out


def channel_stats(x: Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std of images in [0, 1] (uint8 is scaled first)."""
    xf = x.float() / 255.0 if x.dtype == torch.uint8 else x.float()
    dims = [0, 2, 3]
    mean = xf.mean(dim=dims)
    std = xf.std(dim=dims).clamp_min(1e-6)
    return tuple(float(v) for v in mean), tuple(float(v) for v in std)


def random_crop_flip(padding: int = 4, flip: bool = True) -> Augment:
    """The CIFAR augmentation of the papers: random crop with zero padding, h-flip."""

    def apply(x: Tensor, g: torch.Generator) -> Tensor:
        n, _, h, w = x.shape
        padded = torch.nn.functional.pad(x, (padding,) * 4)
        dy = torch.randint(0, 2 * padding + 1, (n,), generator=g)
        dx = torch.randint(0, 2 * padding + 1, (n,), generator=g)
        rows = (dy.view(n, 1) + torch.arange(h).view(1, h)).view(n, 1, h, 1)
        cols = (dx.view(n, 1) + torch.arange(w).view(1, w)).view(n, 1, 1, w)
        batch = torch.arange(n).view(n, 1, 1, 1)
        chans = torch.arange(x.shape[1]).view(1, -1, 1, 1)
        out = padded[batch, chans, rows, cols]
        if flip:
            mask = torch.rand(n, generator=g) < 0.5
            out[mask] = out[mask].flip(-1)
        return out

    return apply
