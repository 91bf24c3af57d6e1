"""What every image dataset shares: options, the validation split, subsets, normalisation.

A loader reads its files into uint8 tensors (N, C, H, W) for the official train
and test splits; :func:`make_bundle` turns them into a :class:`DataBundle` the
same way for every dataset, so ``val_fraction``, ``train_subset``, ``augment``
and ``normalize`` mean the same thing in every suite. The validation split is
carved from the training data with a fixed seed (``split_seed``, recorded in
the data info), never from the test split.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from bench.data.base import Augment, DataBundle, Split, channel_stats, stratified_split
from bench.registry import unknown_message

AUGMENTS = ("none", "flip", "crop", "cifar")
NORMALIZE = ("standard", "computed", "none")
COMMON_OPTIONS = ("val_fraction", "split_seed", "train_subset", "augment", "pad", "normalize")


@dataclass(frozen=True)
class ImageOptions:
    """Options every image loader accepts (see docs/suites.md, "Datasets and suites")."""

    val_fraction: float = 0.1
    split_seed: int = 0
    train_subset: int | None = None
    augment: str = "none"
    pad: int = 4
    normalize: str = "standard"


def parse_options(dataset: str, options: dict[str, Any], *, extra: Iterable[str] = (),
                  augment: str = "none", normalize: str = "standard") -> ImageOptions:
    """Check option names and values; unknown names fail with the allowed list."""
    allowed = list(COMMON_OPTIONS) + list(extra)
    for key in options:
        if key not in allowed:
            raise ValueError(f"dataset '{dataset}': "
                             + unknown_message("option", str(key), allowed))
    opts = ImageOptions(
        val_fraction=float(options.get("val_fraction", 0.1)),
        split_seed=int(options.get("split_seed", 0)),
        train_subset=(None if options.get("train_subset") is None
                      else int(options["train_subset"])),
        augment=str(options.get("augment", augment)),
        pad=int(options.get("pad", 4)),
        normalize=str(options.get("normalize", normalize)),
    )
    if not 0.0 <= opts.val_fraction < 1.0:
        raise ValueError(f"dataset '{dataset}': val_fraction must be in [0, 1); "
                         f"got {opts.val_fraction}")
    if opts.train_subset is not None and opts.train_subset < 1:
        raise ValueError(f"dataset '{dataset}': train_subset must be >= 1; "
                         f"got {opts.train_subset}")
    if opts.augment not in AUGMENTS:
        raise ValueError(f"dataset '{dataset}': "
                         + unknown_message("augment", opts.augment, list(AUGMENTS)))
    if opts.normalize not in NORMALIZE:
        raise ValueError(f"dataset '{dataset}': "
                         + unknown_message("normalize", opts.normalize, list(NORMALIZE)))
    if opts.pad < 0:
        raise ValueError(f"dataset '{dataset}': pad must be >= 0; got {opts.pad}")
    return opts


def make_augment(kind: str, pad: int) -> Augment | None:
    """'cifar' = random crop with zero padding + h-flip (the papers' CIFAR recipe)."""
    from bench.data.base import random_crop_flip

    if kind == "none":
        return None
    if kind == "flip":
        fn, pad = _flip_only, 0
    else:
        fn = random_crop_flip(padding=pad, flip=kind == "cifar")
    # what bench.fasttrain needs to do the same draws on the device, in batch
    fn.pad, fn.flip = pad, kind in ("flip", "cifar")  # type: ignore[attr-defined]
    return fn


def _flip_only(x: Tensor, g: torch.Generator) -> Tensor:
    mask = torch.rand(x.shape[0], generator=g) < 0.5
    out = x.clone()
    out[mask] = out[mask].flip(-1)
    return out


def _subset(y: Tensor, size: int, seed: int) -> Tensor:
    """A stratified subset of ``size`` indices (class proportions kept), fixed by ``seed``."""
    if size >= len(y):
        return torch.arange(len(y))
    keep, _ = stratified_split(y, (size / len(y), 1.0), seed)
    return keep


def make_bundle(
    name: str,
    train_x: Tensor,
    train_y: Tensor,
    test_x: Tensor,
    test_y: Tensor,
    *,
    num_classes: int,
    opts: ImageOptions,
    standard_stats: tuple[tuple[float, ...], tuple[float, ...]] | None,
    info: dict[str, Any],
    val: tuple[Tensor, Tensor] | None = None,
    classes: list[str] | None = None,
) -> DataBundle:
    """Carve the validation split (unless given), take the subset, pick the statistics."""
    if train_x.dtype != torch.uint8 or test_x.dtype != torch.uint8:
        raise TypeError("image loaders hand over uint8 tensors (N, C, H, W)")
    if val is None:
        if opts.val_fraction > 0:
            val_idx, train_idx = stratified_split(train_y, (opts.val_fraction, 1.0),
                                                  opts.split_seed)
        else:
            val_idx, train_idx = torch.arange(0), torch.arange(len(train_y))
        val_x, val_y = train_x[val_idx], train_y[val_idx]
        val_source = f"{opts.val_fraction:g} of train (stratified, split_seed {opts.split_seed})"
    else:
        train_idx = torch.arange(len(train_y))
        val_x, val_y = val
        val_source = "val folder"
    if opts.train_subset is not None:
        pick = _subset(train_y[train_idx], opts.train_subset, opts.split_seed + 1)
        train_idx = train_idx[pick]
    tx, ty = train_x[train_idx].contiguous(), train_y[train_idx].contiguous()
    if len(val_y) == 0:
        # methods choose ranks on the validation split; an empty one would crash them
        raise ValueError(f"dataset '{name}': the validation split is empty; "
                         "set val_fraction > 0 or provide a val folder")
    in_chans, img_size = int(tx.shape[1]), int(tx.shape[-1])
    if opts.normalize == "standard" and standard_stats is not None:
        mean, std = standard_stats
    elif opts.normalize == "none":
        mean, std = (0.0,) * in_chans, (1.0,) * in_chans
    else:  # computed, or standard for a dataset without published statistics
        mean, std = channel_stats(tx)
    normalize_used = ("standard" if opts.normalize == "standard" and standard_stats is not None
                      else "computed" if opts.normalize != "none" else "none")
    full_info = {
        **info,
        "split_seed": opts.split_seed,
        "val_fraction": opts.val_fraction if val is None else None,
        "val_source": val_source,
        "train_subset": opts.train_subset,
        "sizes": {"train": len(ty), "val": len(val_y), "test": len(test_y)},
        "augment": opts.augment if opts.augment == "none" else f"{opts.augment} (pad {opts.pad})",
        "normalize": normalize_used,
        "mean": [round(v, 4) for v in mean],
        "std": [round(v, 4) for v in std],
    }
    if classes is not None:
        full_info["classes"] = list(classes)
    return DataBundle(
        name=name,
        train=Split(tx, ty),
        val=Split(val_x.contiguous(), val_y.contiguous()),
        test=Split(test_x.contiguous(), test_y.contiguous()),
        num_classes=num_classes,
        in_chans=in_chans,
        img_size=img_size,
        mean=tuple(mean),
        std=tuple(std),
        augment=make_augment(opts.augment, opts.pad),
        info=full_info,
    )


def download_enabled(options: dict[str, Any], default: bool) -> bool:
    """``download`` option; LOWRANK_BENCH_OFFLINE=1 turns every download off."""
    import os

    if os.environ.get("LOWRANK_BENCH_OFFLINE", "").strip() not in ("", "0"):
        return False
    return bool(options.get("download", default))
