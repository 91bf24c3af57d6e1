"""CIFAR-10 and CIFAR-100 (Krizhevsky, 2009) in torchvision's on-disk format.

The python-pickle release: ``<root>/cifar-10-batches-py/{data_batch_1..5,
test_batch, batches.meta}`` and ``<root>/cifar-100-python/{train, test, meta}``,
which is what torchvision downloads and unpacks. If only the release archive
(``cifar-10-python.tar.gz`` / ``cifar-100-python.tar.gz``) is in the data root
it is unpacked; if nothing is there, torchvision downloads it on first use
(``download: false`` turns that off). The pickles are read here rather than
through ``torchvision.datasets.CIFAR10``, whose md5 check would reject a copy
that is not byte-identical to the release (and the small files tests write).
"""

from __future__ import annotations

import pickle
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bench.data.base import DataBundle
from bench.data.images import download_enabled, make_bundle, parse_options
from bench.data.registry import DatasetMissingError, register_dataset


@dataclass(frozen=True)
class CifarLayout:
    name: str
    folder: str
    archive: str
    train_files: tuple[str, ...]
    test_file: str
    meta_file: str
    num_classes: int
    # torchvision-reference per-channel mean/std of the training images, on [0, 1] pixels
    standard_stats: tuple[tuple[float, ...], tuple[float, ...]]


CIFAR10 = CifarLayout(
    "cifar10", "cifar-10-batches-py", "cifar-10-python.tar.gz",
    tuple(f"data_batch_{i}" for i in range(1, 6)), "test_batch", "batches.meta", 10,
    ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)))
CIFAR100 = CifarLayout(
    "cifar100", "cifar-100-python", "cifar-100-python.tar.gz",
    ("train",), "test", "meta", 100,
    ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)))


def _unpickle(path: Path) -> dict:
    with open(path, "rb") as f:
        obj = pickle.load(f, encoding="latin1")
    return {(k.decode() if isinstance(k, bytes) else k): v for k, v in obj.items()}


def _read_batches(folder: Path, files: tuple[str, ...],
                  label_key: str) -> tuple[torch.Tensor, torch.Tensor]:
    xs, ys = [], []
    for name in files:
        d = _unpickle(folder / name)
        data = np.asarray(d["data"], dtype=np.uint8)
        xs.append(data.reshape(-1, 3, 32, 32))
        ys.append(np.asarray(d[label_key], dtype=np.int64))
    return torch.from_numpy(np.concatenate(xs)), torch.from_numpy(np.concatenate(ys))


def _complete(folder: Path, layout: CifarLayout) -> bool:
    names = (*layout.train_files, layout.test_file)
    return all((folder / n).is_file() for n in names)


def _safe_extract(archive: Path, dest: Path) -> None:
    with tarfile.open(archive, "r:*") as tar:
        try:
            tar.extractall(dest, filter="data")
        except TypeError:  # Python < 3.12 without extraction filters
            for m in tar.getmembers():
                target = (dest / m.name).resolve()
                if not str(target).startswith(str(dest.resolve())) or m.issym() or m.islnk():
                    raise ValueError(f"{archive}: unsafe member {m.name!r}") from None
            tar.extractall(dest)


def _download(layout: CifarLayout, root: Path) -> None:
    from torchvision.datasets import CIFAR10 as TV10
    from torchvision.datasets import CIFAR100 as TV100
    from torchvision.datasets.utils import download_and_extract_archive

    tv = TV10 if layout is CIFAR10 else TV100
    try:
        root.mkdir(parents=True, exist_ok=True)
        download_and_extract_archive(tv.url, str(root), filename=tv.filename, md5=tv.tgz_md5)
    except Exception as exc:  # no network, a read-only root, a bad checksum
        raise DatasetMissingError(
            f"dataset '{layout.name}': download of {tv.url} into {root} failed "
            f"({type(exc).__name__}: {exc}). {_how_to_get(layout, root)}") from exc


def _how_to_get(layout: CifarLayout, root: Path) -> str:
    return (f"To get it: run once where the network allows (it downloads into the data root), "
            f"or copy torchvision's {layout.folder}/ folder or {layout.archive} into {root}. "
            "The data root is --data-root or $LOWRANK_BENCH_DATA.")


def locate(layout: CifarLayout, root: Path, options: dict[str, Any]) -> Path:
    """The folder holding the pickles: found, unpacked from the archive, or downloaded."""
    base = Path(str(options["path"])).expanduser() if options.get("path") else root
    if not base.is_absolute():
        base = root / base
    folder = base / layout.folder
    if _complete(folder, layout):
        return folder
    archive = base / layout.archive
    if archive.is_file():
        _safe_extract(archive, base)
        if _complete(folder, layout):
            return folder
    downloads = download_enabled(options, default=True)
    if downloads:
        _download(layout, base)
        if _complete(folder, layout):
            return folder
    missing = [n for n in (*layout.train_files, layout.test_file) if not (folder / n).is_file()]
    raise DatasetMissingError(
        f"dataset '{layout.name}' not found: looked for {folder} (missing: "
        f"{', '.join(missing)}) and the archive {archive}"
        f"{'' if downloads else ' (downloads are off)'}. {_how_to_get(layout, base)}")


def load_cifar(layout: CifarLayout, options: dict[str, Any], root: Path) -> DataBundle:
    extra = ("path", "download") + (("labels",) if layout is CIFAR100 else ())
    opts = parse_options(layout.name, options, extra=extra, augment="cifar")
    folder = locate(layout, root, options)
    meta = _unpickle(folder / layout.meta_file)
    if layout is CIFAR100:
        kind = str(options.get("labels", "fine"))
        if kind not in ("fine", "coarse"):
            raise ValueError(f"dataset 'cifar100': labels must be 'fine' or 'coarse'; got {kind}")
        label_key, names = f"{kind}_labels", meta[f"{kind}_label_names"]
        num_classes = 100 if kind == "fine" else 20
    else:
        label_key, names, num_classes = "labels", meta["label_names"], 10
    classes = [n.decode() if isinstance(n, bytes) else str(n) for n in names]
    train_x, train_y = _read_batches(folder, layout.train_files, label_key)
    test_x, test_y = _read_batches(folder, (layout.test_file,), label_key)
    return make_bundle(
        layout.name, train_x, train_y, test_x, test_y, num_classes=num_classes, opts=opts,
        standard_stats=layout.standard_stats, classes=classes,
        info={"source": str(folder), "format": "python pickles (torchvision layout)"})


@register_dataset("cifar10")
def load_cifar10(options: dict[str, Any], root: Path) -> DataBundle:
    """Options: path, download (default true), and the common image options."""
    return load_cifar(CIFAR10, options, root)


@register_dataset("cifar100")
def load_cifar100(options: dict[str, Any], root: Path) -> DataBundle:
    """Options: path, download (default true), labels (fine|coarse), the common options."""
    return load_cifar(CIFAR100, options, root)
