"""scikit-learn's bundled 8x8 handwritten digits (1,797 images): needs no download."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from bench.data.base import DataBundle, Split, stratified_split
from bench.data.registry import register_dataset

SPLIT_SEED = 0  # fixed: the split is part of the dataset, not of the run


@register_dataset("digits")
def load_digits(options: dict[str, Any], root: Path) -> DataBundle:
    """A fixed stratified split: 70% train, 10% validation, 20% test."""
    from sklearn.datasets import load_digits as sk_load

    raw = sk_load()
    x = torch.tensor(raw.images, dtype=torch.float32).unsqueeze(1) / 16.0
    y = torch.tensor(raw.target, dtype=torch.long)
    val_fraction = float(options.get("val_fraction", 0.1))
    test_fraction = float(options.get("test_fraction", 0.2))
    test_idx, val_idx, train_idx = stratified_split(
        y, (test_fraction, val_fraction, 1.0 - test_fraction - val_fraction), SPLIT_SEED
    )
    mean = float(x[train_idx].mean())
    std = float(x[train_idx].std())
    return DataBundle(
        name="digits",
        train=Split(x[train_idx], y[train_idx]),
        val=Split(x[val_idx], y[val_idx]),
        test=Split(x[test_idx], y[test_idx]),
        num_classes=10,
        in_chans=1,
        img_size=8,
        mean=(mean,),
        std=(std,),
        info={"split_seed": SPLIT_SEED, "val_fraction": val_fraction,
              "test_fraction": test_fraction, "source": "sklearn.datasets.load_digits"},
    )
