"""A user's own images in torchvision's ImageFolder layout: ``<path>/{train,[val],test}/<class>/*``.

Classes are the sorted sub-folder names of ``train`` (the ImageFolder
convention); ``val`` and ``test`` must use the same names. Without a ``val``
folder the validation split is carved from ``train``. Images are decoded once
and cached as uint8 tensors in ``<data root>/.cache/imagefolder/``, keyed by
the file list, sizes and modification times, so a rerun loads in a second and
an edited folder is decoded again.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bench.atomic import exclusive_lock
from bench.data.base import DataBundle
from bench.data.images import make_bundle, parse_options
from bench.data.registry import DatasetMissingError, register_dataset
from bench.store import atomic_torch_save

log = logging.getLogger("lowrank_bench")

EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
CACHE_FORMAT = 1
OPTIONS = ("path", "train", "val", "test", "img_size", "channels", "cache")


def _listing(split_dir: Path) -> list[tuple[str, str, int, int]]:
    """(class, relative path, size, mtime_ns) of every image, sorted."""
    out = []
    for cls_entry in sorted(os.scandir(split_dir), key=lambda e: e.name):
        if not cls_entry.is_dir():
            continue
        for f in sorted(os.scandir(cls_entry.path), key=lambda e: e.name):
            if f.is_file() and f.name.lower().endswith(EXTENSIONS):
                st = f.stat()
                out.append((cls_entry.name, f"{cls_entry.name}/{f.name}", st.st_size,
                            st.st_mtime_ns))
    return out


def _decode(path: Path, channels: int, img_size: int | None) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as im:
        im = im.convert("RGB" if channels == 3 else "L")
        if img_size is not None and im.size != (img_size, img_size):
            im = im.resize((img_size, img_size), Image.BILINEAR)
        arr = np.asarray(im, dtype=np.uint8)
    return arr[None] if channels == 1 else arr.transpose(2, 0, 1)


def _decode_split(split_dir: Path, listing: list[tuple[str, str, int, int]],
                  class_index: dict[str, int], channels: int,
                  img_size: int | None) -> tuple[torch.Tensor, torch.Tensor]:
    unknown = sorted({c for c, *_ in listing} - set(class_index))
    if unknown:
        raise ValueError(f"{split_dir}: classes {unknown} are not in the train folder's "
                         f"classes {sorted(class_index)}")
    if img_size is None:  # all images must share the first one's size
        first = _decode(split_dir / listing[0][1], channels, None)
        img_size = first.shape[-1]
        if first.shape[-2] != img_size:
            raise ValueError(f"{split_dir / listing[0][1]}: not square "
                             f"({first.shape[-1]}x{first.shape[-2]}); set img_size")
    paths = [split_dir / rel for _, rel, _, _ in listing]
    size = img_size

    def one(p: Path) -> np.ndarray:
        arr = _decode(p, channels, None)
        if arr.shape[1:] != (size, size):
            arr = _decode(p, channels, size)
        return arr

    workers = max(1, min(4, os.cpu_count() or 1))
    with ThreadPoolExecutor(workers) as pool:  # PIL releases the GIL while decoding
        arrays = list(pool.map(one, paths, chunksize=256))
    x = torch.from_numpy(np.stack(arrays))
    y = torch.tensor([class_index[c] for c, *_ in listing], dtype=torch.long)
    return x, y


def _read_cache(cache_file: Path) -> dict[str, torch.Tensor] | None:
    try:
        return torch.load(cache_file, weights_only=True)
    except FileNotFoundError:
        return None
    except Exception as exc:  # truncated or from another torch: decode again
        log.warning("ignoring unreadable image cache %s: %s", cache_file, exc)
        return None


def load_or_decode(cache_file: Path,
                   decode: Callable[[], dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """The cached tensors, else decode once (under the lock) and write the cache.

    Several workers starting on a fresh data root at once: the first decodes,
    the others wait on the lock and then read its cache. The cache is written to
    a unique temporary name and renamed over the final one, so a concurrent
    reader sees the old state or the whole file.
    """
    tensors = _read_cache(cache_file)
    if tensors is not None:
        return tensors
    with exclusive_lock(cache_file):  # one process decodes, the others wait for its cache
        tensors = _read_cache(cache_file)  # decoded by another worker while we waited
        if tensors is not None:
            return tensors
        tensors = decode()
        try:
            atomic_torch_save(cache_file, tensors)
        except OSError as exc:  # a read-only data root: work without the cache
            log.warning("could not write the image cache %s: %s", cache_file, exc)
    return tensors


def resolve_path(options: dict[str, Any], root: Path) -> Path:
    if not options.get("path"):
        raise ValueError("dataset 'imagefolder' needs options.path: a folder with train/ and "
                         "test/ (and optionally val/) sub-folders, absolute or relative to the "
                         "data root")
    p = Path(str(options["path"])).expanduser()
    return p if p.is_absolute() else root / p


@register_dataset("imagefolder")
def load_imagefolder(options: dict[str, Any], root: Path) -> DataBundle:
    """Options: path (required), train/val/test folder names, img_size, channels (3 or 1),
    cache (default true), and the common image options."""
    opts = parse_options("imagefolder", options, extra=OPTIONS, normalize="computed")
    base = resolve_path(options, root)
    names = {s: str(options.get(s, s)) for s in ("train", "val", "test")}
    channels = int(options.get("channels", 3))
    if channels not in (1, 3):
        raise ValueError(f"dataset 'imagefolder': channels must be 1 or 3; got {channels}")
    img_size = None if options.get("img_size") is None else int(options["img_size"])
    for split in ("train", "test"):
        if not (base / names[split]).is_dir():
            raise DatasetMissingError(
                f"dataset 'imagefolder' not found: no {split} folder {base / names[split]} "
                f"(options.path {options['path']!r} resolved against the data root {root}). "
                "Expected <path>/train/<class>/*.jpg and <path>/test/<class>/*.jpg (val/ "
                "optional). Set --data-root or $LOWRANK_BENCH_DATA, or an absolute path; "
                "for the CIFAR-10 JPEG copy unpack cifar10-jpeg.tar.gz into the data root.")
    splits = [s for s in ("train", "val", "test") if (base / names[s]).is_dir()]
    listings = {s: _listing(base / names[s]) for s in splits}
    for s in splits:
        if not listings[s]:
            raise DatasetMissingError(f"dataset 'imagefolder': {base / names[s]} has no images "
                                      f"({', '.join(EXTENSIONS)}) in class sub-folders")
    classes = sorted({c for c, *_ in listings["train"]})
    class_index = {c: i for i, c in enumerate(classes)}
    key = hashlib.sha256(json.dumps(
        {"v": CACHE_FORMAT, "base": str(base.resolve()), "listings": listings,
         "channels": channels, "img_size": img_size}).encode()).hexdigest()[:16]
    cache_file = root / ".cache" / "imagefolder" / f"{base.name}-{key}.pt"
    use_cache = bool(options.get("cache", True))

    def decode() -> dict[str, torch.Tensor]:
        log.info("decoding %s images under %s (cached afterwards)",
                 sum(len(v) for v in listings.values()), base)
        out, size = {}, img_size
        for s in splits:
            x, y = _decode_split(base / names[s], listings[s], class_index, channels, size)
            out[f"{s}_x"], out[f"{s}_y"] = x, y
            size = int(x.shape[-1]) if size is None else size
        return out

    tensors = load_or_decode(cache_file, decode) if use_cache else decode()
    val = (tensors["val_x"], tensors["val_y"]) if "val_x" in tensors else None
    return make_bundle(
        base.name, tensors["train_x"], tensors["train_y"],
        tensors["test_x"], tensors["test_y"], num_classes=len(classes), opts=opts,
        standard_stats=None, val=val, classes=classes,
        info={"source": str(base), "format": "image folder", "cache": str(cache_file)
              if use_cache else None})
