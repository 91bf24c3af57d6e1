"""Fashion-MNIST (Xiao et al., 2017): 60,000 train + 10,000 test 28x28 grey images, 10 classes.

Read from the four idx files (gzipped or not) in the layout shared by the
original release, Debian's ``dataset-fashion-mnist`` package
(``/usr/share/datasets/fashion-mnist``) and torchvision
(``<root>/FashionMNIST/raw``). With ``download: true`` torchvision fetches them
into the data root where the network allows.
"""

from __future__ import annotations

import gzip
import struct
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bench.data.base import DataBundle
from bench.data.images import download_enabled, make_bundle, parse_options
from bench.data.registry import DatasetMissingError, register_dataset

SYSTEM_DIR = Path("/usr/share/datasets/fashion-mnist")
FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
           "Sneaker", "Bag", "Ankle boot"]
# torchvision's reference normalisation for Fashion-MNIST, on [0, 1] pixels
STANDARD_STATS = ((0.2860,), (0.3530,))


def read_idx(path: Path) -> np.ndarray:
    """An idx file (LeCun's MNIST format), plain or gzipped, as a uint8 array."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        data = f.read()
    zero, dtype_code, ndim = struct.unpack(">HBB", data[:4])
    if zero != 0 or dtype_code != 0x08:
        raise ValueError(f"{path}: not a uint8 idx file (magic {data[:4].hex()})")
    dims = struct.unpack(f">{ndim}I", data[4 : 4 + 4 * ndim])
    arr = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if arr.size != int(np.prod(dims)):
        raise ValueError(f"{path}: expected {int(np.prod(dims))} values for shape {dims}, "
                         f"found {arr.size} (truncated file?)")
    return arr.reshape(dims)


def candidate_dirs(root: Path, options: dict[str, Any]) -> list[Path]:
    """Where the files may be, in order: an explicit path, the data root, Debian's package."""
    dirs: list[Path] = []
    if options.get("path"):
        p = Path(str(options["path"])).expanduser()
        dirs.append(p if p.is_absolute() else root / p)
    dirs += [root / "fashion-mnist", root / "FashionMNIST" / "raw", SYSTEM_DIR]
    return dirs


def _find(directory: Path) -> dict[str, Path] | None:
    found: dict[str, Path] = {}
    for key, stem in FILES.items():
        for name in (stem, stem + ".gz"):
            if (directory / name).is_file():
                found[key] = directory / name
                break
        else:
            return None
    return found


def _download(root: Path) -> None:
    from torchvision.datasets import FashionMNIST

    try:
        FashionMNIST(str(root), train=True, download=True)
        FashionMNIST(str(root), train=False, download=True)
    except Exception as exc:  # no network, a mirror down, a read-only root
        raise DatasetMissingError(
            f"dataset 'fashion-mnist': download into {root / 'FashionMNIST'} failed "
            f"({type(exc).__name__}: {exc}). {_how_to_get(root)}") from exc


def _how_to_get(root: Path) -> str:
    return ("To get it: `apt-get install dataset-fashion-mnist` (Debian/Ubuntu), or put the four "
            f"idx files ({', '.join(v + '[.gz]' for v in FILES.values())}) in "
            f"{root / 'fashion-mnist'}, or set `download: true` in the suite's dataset options "
            "where the network allows. The data root is --data-root or $LOWRANK_BENCH_DATA.")


@register_dataset("fashion-mnist")
def load_fashion_mnist(options: dict[str, Any], root: Path) -> DataBundle:
    """Options: path, download (default false), and the common image options."""
    opts = parse_options("fashion-mnist", options, extra=("path", "download"))
    dirs = candidate_dirs(root, options)
    files = next((f for f in map(_find, dirs) if f is not None), None)
    if files is None and download_enabled(options, default=False):
        _download(root)
        files = _find(root / "FashionMNIST" / "raw")
    if files is None:
        looked = ", ".join(str(d) for d in dirs)
        raise DatasetMissingError(
            f"dataset 'fashion-mnist' not found: looked for the idx files in {looked}"
            f"{'' if download_enabled(options, False) else ' (downloads are off)'}. "
            + _how_to_get(root))
    arrays = {k: torch.from_numpy(read_idx(p).copy()) for k, p in files.items()}
    train_x, test_x = arrays["train_images"].unsqueeze(1), arrays["test_images"].unsqueeze(1)
    train_y, test_y = arrays["train_labels"].long(), arrays["test_labels"].long()
    if len(train_x) != len(train_y) or len(test_x) != len(test_y):
        raise ValueError(f"fashion-mnist in {files['train_images'].parent}: image and label "
                         "counts differ")
    return make_bundle(
        "fashion-mnist", train_x, train_y, test_x, test_y, num_classes=10, opts=opts,
        standard_stats=STANDARD_STATS, classes=CLASSES,
        info={"source": str(files["train_images"].parent), "format": "idx"})
