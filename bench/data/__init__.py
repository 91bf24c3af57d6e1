"""Datasets as in-memory tensor splits, behind a registry."""

from bench.data import cifar, digits, fashion_mnist, imagefolder  # noqa: F401  (registers)
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
