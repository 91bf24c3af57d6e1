"""Datasets as in-memory tensor splits, behind a registry."""

from bench.data import digits  # noqa: F401  (registers "digits")
from bench.data.base import DataBundle, Split, random_crop_flip, stratified_split
from bench.data.registry import DATASETS, DatasetMissingError, data_root, load_dataset

__all__ = [
    "DATASETS",
    "DataBundle",
    "DatasetMissingError",
    "Split",
    "data_root",
    "load_dataset",
    "random_crop_flip",
    "stratified_split",
]
