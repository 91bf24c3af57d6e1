"""Each loader reads small files the test writes in the dataset's real on-disk format.

Nothing here touches the network: downloads are turned off with ``download: false`` or
LOWRANK_BENCH_OFFLINE, and the Debian Fashion-MNIST directory is pointed elsewhere.
"""

from __future__ import annotations

import gzip
import io
import json
import pickle
import struct
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from bench.data import DatasetMissingError, load_dataset
from bench.data import fashion_mnist as fm_module

# -- writers for the real formats ----------------------------------------------------------


def write_idx(path: Path, arr: np.ndarray, gz: bool) -> None:
    """LeCun's idx format: zero, 0x08 (uint8), ndim, big-endian dims, then the bytes."""
    header = struct.pack(">HBB", 0, 0x08, arr.ndim) + struct.pack(f">{arr.ndim}I", *arr.shape)
    blob = header + arr.astype(np.uint8).tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    if gz:
        with gzip.open(str(path) + ".gz", "wb") as f:
            f.write(blob)
    else:
        path.write_bytes(blob)


def fmnist_arrays(n: int, offset: int) -> tuple[np.ndarray, np.ndarray]:
    """Image i is filled with (offset + i) and its label is (offset + i) % 10."""
    values = (offset + np.arange(n)) % 250
    x = np.broadcast_to(values[:, None, None], (n, 28, 28)).copy()
    x[:, 0, 1] = 255  # row-major check: pixel (0, 1) differs from (1, 0)
    return x.astype(np.uint8), (values % 10).astype(np.uint8)


def write_fmnist(folder: Path, n_train: int = 60, n_test: int = 20, gz: bool = True) -> None:
    tx, ty = fmnist_arrays(n_train, 0)
    vx, vy = fmnist_arrays(n_test, 100)
    write_idx(folder / "train-images-idx3-ubyte", tx, gz)
    write_idx(folder / "train-labels-idx1-ubyte", ty, gz)
    write_idx(folder / "t10k-images-idx3-ubyte", vx, gz)
    write_idx(folder / "t10k-labels-idx1-ubyte", vy, gz)


def cifar_rows(n: int, offset: int) -> np.ndarray:
    """CIFAR rows: 1024 R, then 1024 G, then 1024 B values; R encodes the image index."""
    rows = np.zeros((n, 3072), dtype=np.uint8)
    rows[:, :1024] = ((offset + np.arange(n)) % 250)[:, None]
    rows[:, 1024:2048] = 100
    rows[:, 2048:] = 200
    rows[:, 1] = 255  # R plane, row 0, column 1
    return rows


def pickle_bytes(obj: dict) -> bytes:
    return pickle.dumps(obj, protocol=2)


def cifar10_files(per_batch: int = 20, n_test: int = 20) -> dict[str, bytes]:
    """The members of cifar-10-python.tar.gz, with bytes keys as in the Python 2 release."""
    files = {}
    for b in range(1, 6):
        off = (b - 1) * per_batch
        files[f"data_batch_{b}"] = pickle_bytes({
            b"batch_label": f"training batch {b} of 5".encode(),
            b"data": cifar_rows(per_batch, off),
            b"labels": [int(v % 10) for v in (off + np.arange(per_batch)) % 250],
            b"filenames": [f"img{off + i}.png".encode() for i in range(per_batch)]})
    files["test_batch"] = pickle_bytes({
        b"data": cifar_rows(n_test, 200), b"labels": [(200 + i) % 250 % 10 for i in range(n_test)]})
    files["batches.meta"] = pickle_bytes({
        b"label_names": [f"class{i}".encode() for i in range(10)], b"num_vis": 3072})
    return files


def cifar100_files(n_train: int = 200, n_test: int = 100) -> dict[str, bytes]:
    def split(n: int, off: int) -> dict:
        idx = off + np.arange(n)
        return {"data": cifar_rows(n, off), "fine_labels": [int(i % 100) for i in idx],
                "coarse_labels": [int(i % 100 // 5) for i in idx]}
    return {"train": pickle_bytes(split(n_train, 0)), "test": pickle_bytes(split(n_test, 7)),
            "meta": pickle_bytes({"fine_label_names": [f"f{i}" for i in range(100)],
                                  "coarse_label_names": [f"c{i}" for i in range(20)]})}


def write_tar(archive: Path, folder: str, files: dict[str, bytes]) -> None:
    archive.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(archive, "w:gz") as tar:
        for name, blob in files.items():
            info = tarfile.TarInfo(f"{folder}/{name}")
            info.size = len(blob)
            tar.addfile(info, io.BytesIO(blob))


def write_dir(folder: Path, files: dict[str, bytes]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name, blob in files.items():
        (folder / name).write_bytes(blob)


@pytest.fixture(autouse=True)
def no_downloads(monkeypatch, tmp_path):
    monkeypatch.setenv("LOWRANK_BENCH_OFFLINE", "1")
    monkeypatch.setattr(fm_module, "SYSTEM_DIR", tmp_path / "no-debian-package")


def assert_split_invariants(data, n_train_total: int, val_fraction: float) -> None:
    sizes = data.info["sizes"]
    assert sizes == {"train": len(data.train), "val": len(data.val), "test": len(data.test)}
    assert data.info["split_seed"] == 0
    assert data.info["val_fraction"] == val_fraction
    assert len(data.train) + len(data.val) == n_train_total
    # the validation images are carved from train: disjoint from what remains
    ids_train = set(data.train.x[:, 0, 5, 5].tolist())
    ids_val = set(data.val.x[:, 0, 5, 5].tolist())
    assert not ids_train & ids_val
    # stratified: every class is represented in the validation split
    assert set(data.val.y.tolist()) == set(range(data.num_classes))


# -- Fashion-MNIST -------------------------------------------------------------------------


@pytest.mark.parametrize("layout, gz", [("fashion-mnist", True), ("FashionMNIST/raw", False)])
def test_fashion_mnist_reads_idx_files(tmp_path, layout, gz):
    write_fmnist(tmp_path / layout, gz=gz)
    data = load_dataset("fashion-mnist", {"val_fraction": 0.2}, tmp_path)
    assert data.train.x.shape[1:] == (1, 28, 28) and data.train.x.dtype == torch.uint8
    assert data.input_shape == (1, 28, 28) and data.num_classes == 10
    assert len(data.test) == 20 and len(data.val) == 10  # 1 of each class's 6
    assert_split_invariants(data, 60, 0.2)
    for split in (data.train, data.val, data.test):  # images stay paired with their labels
        assert torch.equal(split.x[:, 0, 5, 5].long() % 10, split.y)
        assert (split.x[:, 0, 0, 1] == 255).all() and (split.x[:, 0, 1, 0] != 255).all()
    assert data.test.x[:, 0, 5, 5].tolist() == list(range(100, 120))
    assert data.info["source"] == str(tmp_path / layout)
    assert data.mean == fm_module.STANDARD_STATS[0] and data.info["normalize"] == "standard"
    x, y = next(data.batches("train", 8))
    assert x.dtype == torch.float32 and x.shape == (8, 1, 28, 28)


def test_fashion_mnist_subset_is_stratified_and_fixed(tmp_path):
    write_fmnist(tmp_path / "fashion-mnist")
    opts = {"val_fraction": 0.2, "train_subset": 20}
    a = load_dataset("fashion-mnist", opts, tmp_path)
    b = load_dataset("fashion-mnist", opts, tmp_path)
    assert len(a.train) == 20 and torch.bincount(a.train.y, minlength=10).tolist() == [2] * 10
    assert torch.equal(a.train.x, b.train.x) and torch.equal(a.val.y, b.val.y)
    c = load_dataset("fashion-mnist", {**opts, "split_seed": 1}, tmp_path)
    assert not torch.equal(a.val.x, c.val.x)
    assert c.info["split_seed"] == 1 and a.info["train_subset"] == 20


def test_fashion_mnist_missing_gives_a_clear_error(tmp_path):
    with pytest.raises(DatasetMissingError) as exc:
        load_dataset("fashion-mnist", {"download": False}, tmp_path)
    msg = str(exc.value)
    for text in ("fashion-mnist", str(tmp_path / "fashion-mnist"), "no-debian-package",
                 "apt-get install dataset-fashion-mnist", "download: true",
                 "LOWRANK_BENCH_DATA", "downloads are off"):
        assert text in msg, (text, msg)


def test_truncated_idx_file_is_rejected(tmp_path):
    write_fmnist(tmp_path / "fashion-mnist", gz=False)
    p = tmp_path / "fashion-mnist" / "t10k-images-idx3-ubyte"
    p.write_bytes(p.read_bytes()[:-100])
    with pytest.raises(ValueError, match="truncated"):
        load_dataset("fashion-mnist", {}, tmp_path)


@pytest.mark.skipif(not Path("/usr/share/datasets/fashion-mnist").is_dir(),
                    reason="Debian's dataset-fashion-mnist package is not installed")
def test_fashion_mnist_from_the_debian_package(monkeypatch, tmp_path):
    monkeypatch.setattr(fm_module, "SYSTEM_DIR", Path("/usr/share/datasets/fashion-mnist"))
    data = load_dataset("fashion-mnist", {"train_subset": 1000}, tmp_path)
    assert len(data.test) == 10_000 and len(data.val) == 6_000 and len(data.train) == 1000
    assert torch.bincount(data.test.y).tolist() == [1000] * 10


# -- CIFAR ---------------------------------------------------------------------------------


def test_cifar10_reads_the_pickled_batches(tmp_path):
    write_dir(tmp_path / "cifar-10-batches-py", cifar10_files())
    data = load_dataset("cifar10", {"val_fraction": 0.1, "download": False}, tmp_path)
    assert data.train.x.shape[1:] == (3, 32, 32) and data.train.x.dtype == torch.uint8
    assert data.num_classes == 10 and len(data.test) == 20
    assert_split_invariants(data, 100, 0.1)
    for split in (data.train, data.val, data.test):
        assert torch.equal(split.x[:, 0, 5, 5].long() % 10, split.y)  # R plane = index
        assert (split.x[:, 1] == 100).all() and (split.x[:, 2] == 200).all()  # CHW order
        assert (split.x[:, 0, 0, 1] == 255).all() and (split.x[:, 0, 1, 0] != 255).all()
    assert data.info["classes"][3] == "class3"
    assert data.info["augment"] == "cifar (pad 4)" and data.augment is not None
    aug = data.augment(data.train.x[:16], torch.Generator().manual_seed(0))
    assert aug.shape == (16, 3, 32, 32) and aug.dtype == torch.uint8
    assert data.mean == (0.4914, 0.4822, 0.4465)


def test_cifar10_unpacks_the_release_archive(tmp_path):
    write_tar(tmp_path / "cifar-10-python.tar.gz", "cifar-10-batches-py", cifar10_files())
    data = load_dataset("cifar10", {"augment": "none", "normalize": "computed"}, tmp_path)
    assert (tmp_path / "cifar-10-batches-py" / "data_batch_5").is_file()
    assert len(data.train) + len(data.val) == 100 and data.augment is None
    assert data.info["normalize"] == "computed" and data.mean[1] == pytest.approx(100 / 255)


def test_cifar100_fine_and_coarse_labels(tmp_path):
    write_dir(tmp_path / "cifar-100-python", cifar100_files())
    fine = load_dataset("cifar100", {"val_fraction": 0.5}, tmp_path)
    assert fine.num_classes == 100 and len(fine.test) == 100 and len(fine.val) == 100
    assert torch.equal(fine.test.y, torch.arange(7, 107) % 100)
    assert set(fine.val.y.tolist()) == set(range(100))
    coarse = load_dataset("cifar100", {"labels": "coarse", "val_fraction": 0.5}, tmp_path)
    assert coarse.num_classes == 20 and coarse.info["classes"][0] == "c0"
    assert torch.equal(coarse.test.y, torch.arange(7, 107) % 100 // 5)


@pytest.mark.parametrize("name, folder", [("cifar10", "cifar-10-batches-py"),
                                          ("cifar100", "cifar-100-python")])
def test_cifar_missing_gives_a_clear_error(tmp_path, name, folder):
    with pytest.raises(DatasetMissingError) as exc:
        load_dataset(name, {}, tmp_path)  # download defaults on, LOWRANK_BENCH_OFFLINE wins
    msg = str(exc.value)
    for text in (f"dataset '{name}' not found", str(tmp_path / folder), "downloads are off",
                 "LOWRANK_BENCH_DATA", "tar.gz"):
        assert text in msg, (text, msg)


def test_unknown_option_names_the_allowed_ones(tmp_path):
    write_dir(tmp_path / "cifar-10-batches-py", cifar10_files())
    with pytest.raises(ValueError, match="Did you mean: val_fraction"):
        load_dataset("cifar10", {"val_fractoin": 0.1}, tmp_path)
    with pytest.raises(ValueError, match="augment"):
        load_dataset("cifar10", {"augment": "autoaugment"}, tmp_path)


# -- image folders -------------------------------------------------------------------------

CLASSES = ["cat", "dog", "frog"]


def write_imagefolder(base: Path, per_class: dict[str, int], size: int = 12) -> None:
    """PNG (lossless) images whose red value encodes the class index and green the image."""
    from PIL import Image

    for split, n in per_class.items():
        for ci, cls in enumerate(CLASSES):
            d = base / split / cls
            d.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                arr = np.zeros((size, size, 3), dtype=np.uint8)
                arr[..., 0] = 40 * ci
                arr[..., 1] = i
                arr[..., 2] = {"train": 1, "val": 2, "test": 3}[split]
                Image.fromarray(arr).save(d / f"{i:04d}.png")


def test_imagefolder_reads_classes_and_caches_the_decode(tmp_path, monkeypatch):
    from bench.data import imagefolder as ifm

    write_imagefolder(tmp_path / "pets", {"train": 10, "test": 4})
    data = load_dataset("imagefolder", {"path": "pets", "val_fraction": 0.2}, tmp_path)
    assert data.input_shape == (3, 12, 12) and data.num_classes == 3
    assert data.info["classes"] == CLASSES and len(data.test) == 12
    assert len(data.val) == 6 and len(data.train) == 24
    for split, tag in ((data.train, 1), (data.val, 1), (data.test, 3)):
        assert torch.equal(split.x[:, 0, 0, 0].long() // 40, split.y)
        assert (split.x[:, 2] == tag).all()
    assert data.info["val_source"].startswith("0.2 of train")
    cache = Path(data.info["cache"])
    assert cache.is_file() and cache.is_relative_to(tmp_path / ".cache")

    def no_decoding(*args, **kwargs):
        raise AssertionError("decoded again although the cache is valid")

    monkeypatch.setattr(ifm, "_decode", no_decoding)
    again = load_dataset("imagefolder", {"path": "pets", "val_fraction": 0.2}, tmp_path)
    assert torch.equal(again.train.x, data.train.x) and torch.equal(again.test.y, data.test.y)
    monkeypatch.undo()
    monkeypatch.setenv("LOWRANK_BENCH_OFFLINE", "1")
    write_imagefolder(tmp_path / "pets", {"test": 5})  # a changed folder is decoded again
    changed = load_dataset("imagefolder", {"path": "pets", "val_fraction": 0.2}, tmp_path)
    assert len(changed.test) == 15


def test_imagefolder_uses_a_val_folder_and_resizes(tmp_path):
    write_imagefolder(tmp_path / "pets", {"train": 4, "val": 2, "test": 2}, size=10)
    data = load_dataset("imagefolder", {"path": str(tmp_path / "pets"), "img_size": 8,
                                        "channels": 1, "cache": False}, tmp_path)
    assert data.input_shape == (1, 8, 8)
    assert len(data.train) == 12 and len(data.val) == 6 and len(data.test) == 6
    assert data.info["val_source"] == "val folder" and data.info["val_fraction"] is None
    assert not (tmp_path / ".cache").exists()


def test_imagefolder_missing_gives_a_clear_error(tmp_path):
    with pytest.raises(DatasetMissingError) as exc:
        load_dataset("imagefolder", {"path": "cifar10-jpeg"}, tmp_path)
    msg = str(exc.value)
    for text in (str(tmp_path / "cifar10-jpeg" / "train"), "data root", "LOWRANK_BENCH_DATA",
                 "<path>/train/<class>/"):
        assert text in msg, (text, msg)
    with pytest.raises(ValueError, match="needs options.path"):
        load_dataset("imagefolder", {}, tmp_path)


# -- the shipped suites --------------------------------------------------------------------


@pytest.fixture
def one_thread():
    """Tiny convolutions gain nothing from threads, and a busy CPU makes them much slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_cifar_suite_runs_one_cell_on_a_tiny_archive(tmp_path, capsys, one_thread):
    """suites/cifar.yaml validates; a copy cut to one cell runs end to end on tiny data."""
    from bench.cli import main
    from bench.suite import SUITES_DIR

    assert main(["validate", "cifar"]) == 0
    root = tmp_path / "data"
    write_tar(root / "cifar-10-python.tar.gz", "cifar-10-batches-py", cifar10_files())
    suite = yaml.safe_load((SUITES_DIR / "cifar.yaml").read_text())
    model = suite["models"][0]
    assert model["name"] == "resnet18" and model["stem"] == "cifar"
    suite["models"] = [{**model, "kwargs": {"channels": [8, 8, 8, 8], "stem_width": 8}}]
    suite["methods"] = [{"name": "svd"}]
    suite["targets"] = suite["targets"][:1]
    suite["seeds"] = suite["seeds"][:1]
    suite["train"] = {**suite["train"], "epochs": 1, "batch_size": 32, "warmup_epochs": 0}
    suite["finetune"] = {**suite["finetune"], "epochs": 1, "batch_size": 32}
    suite["latency"] = {"batch_sizes": [1], "min_runs": 2, "min_seconds": 0.0, "warmup": 1,
                        "cuda": "off"}
    path = tmp_path / "cifar-one-cell.yaml"
    path.write_text(yaml.safe_dump(suite))
    results = tmp_path / "results"
    code = main(["run", str(path), "--results", str(results), "--data-root", str(root)])
    out = capsys.readouterr().out
    assert code == 0, out
    records = [json.loads(p.read_text()) for p in (results / "cells").glob("*.json")]
    assert len(records) == 1 and records[0]["status"] == "ok"
    rec = records[0]
    assert rec["dataset"] == "cifar10" and rec["target"] == {"macs": 0.5}
    info = rec["data_info"]
    assert info["sizes"] == {"train": 90, "val": 10, "test": 20}
    assert info["split_seed"] == 0 and info["augment"] == "cifar (pad 4)"
    assert rec["metrics"]["macs_ratio"] <= 0.5 + 1e-9
    assert 0.0 <= rec["metrics"]["top1"] <= 1.0


def test_two_workers_on_a_fresh_root_decode_the_image_folder_once(tmp_path, monkeypatch):
    """--jobs 2 on a fresh data root: one decodes, the other waits and reads its cache."""
    import threading
    import time

    from bench.data import imagefolder as ifm

    write_imagefolder(tmp_path / "pets", {"train": 6, "test": 2})
    decoded: list[str] = []
    real = ifm._decode_split

    def slow_decode(split_dir, *args, **kwargs):
        decoded.append(split_dir.name)
        time.sleep(0.3)  # both workers are inside load_dataset at once
        return real(split_dir, *args, **kwargs)

    monkeypatch.setattr(ifm, "_decode_split", slow_decode)
    results, errors = [], []

    def worker():
        try:
            results.append(load_dataset("imagefolder", {"path": "pets"}, tmp_path))
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and len(results) == 2
    assert sorted(decoded) == ["test", "train"]  # each split decoded once, by one worker
    assert torch.equal(results[0].train.x, results[1].train.x)
    cache = Path(results[0].info["cache"])
    assert cache.is_file()
    assert not [p for p in cache.parent.iterdir() if p.name.endswith(".tmp")]


def test_an_unreadable_image_cache_is_decoded_again(tmp_path):
    write_imagefolder(tmp_path / "pets", {"train": 3, "test": 1})
    opts = {"path": "pets", "val_fraction": 0.34}
    first = load_dataset("imagefolder", opts, tmp_path)
    cache = Path(first.info["cache"])
    cache.write_bytes(b"truncated")
    again = load_dataset("imagefolder", opts, tmp_path)
    assert torch.equal(first.train.x, again.train.x)
    assert torch.load(cache, weights_only=True)["train_x"].shape[0] == 9
