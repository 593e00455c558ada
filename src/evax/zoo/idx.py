"""Readers for the standard on-disk dataset layouts users already have.

* IDX (LeCun's MNIST format, also Fashion-MNIST; plain or gzipped), as torchvision stores
  them under ``<root>/MNIST/raw`` or ``<root>/FashionMNIST/raw``.
* The CIFAR-10 / CIFAR-100 "python version" pickles (``cifar-10-batches-py``,
  ``cifar-100-python``).
"""

from __future__ import annotations

import gzip
import pickle
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from evax.errors import DataSourceError

_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path: Path) -> np.ndarray:
    """Read an IDX file (optionally ``.gz``) into an array of its stored shape and dtype."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        data = f.read()
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in _IDX_DTYPES:
        raise DataSourceError(f"{path} is not an IDX file (bad magic number {data[:4]!r})")
    ndim = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    arr = np.frombuffer(data, dtype=_IDX_DTYPES[data[2]], offset=4 + 4 * ndim)
    if arr.size != int(np.prod(shape)):
        raise DataSourceError(f"{path} is truncated: header says {shape}, found {arr.size} items")
    return arr.reshape(shape)


def find_files(root: Path, subdirs: Sequence[str], names: Sequence[str]) -> list[Path]:
    """Locate each of ``names`` (or ``name + '.gz'``) in ``root`` or ``root/<subdir>``.

    The first folder that holds all of them wins.

    Raises:
        DataSourceError: naming the expected files and the folders searched.
    """
    folders = [root, *(root / s for s in subdirs)]
    for folder in folders:
        found = []
        for name in names:
            for cand in (folder / name, folder / f"{name}.gz"):
                if cand.is_file():
                    found.append(cand)
                    break
        if len(found) == len(names):
            return found
    raise DataSourceError(
        f"root={str(root)!r} does not hold the expected files {list(names)} (plain or .gz) "
        f"in any of {[str(f) for f in folders]}"
    )


def read_idx_pair(root: Path, subdirs: Sequence[str], prefix: str) -> tuple[np.ndarray, np.ndarray]:
    """Images ``(N, 28, 28)`` uint8 and labels ``(N,)`` uint8 for IDX ``prefix`` (train/t10k)."""
    img_path, lab_path = find_files(
        root, subdirs, [f"{prefix}-images-idx3-ubyte", f"{prefix}-labels-idx1-ubyte"]
    )
    images, labels = read_idx(img_path), read_idx(lab_path)
    if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
        raise DataSourceError(
            f"{img_path} / {lab_path}: expected images (N, H, W) and labels (N,), got "
            f"{images.shape} and {labels.shape}"
        )
    return images, labels


def read_cifar(root: Path, fine: bool, train: bool) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """CIFAR python-pickle layout -> images ``(N, 3, 32, 32)`` uint8, labels, class names.

    Args:
        root: the folder holding ``cifar-10-batches-py`` / ``cifar-100-python`` (or the
            batches folder itself).
        fine: False for CIFAR-10, True for CIFAR-100 (fine labels).
        train: the training batches instead of the test batch.
    """
    if fine:
        sub, meta_name = ["cifar-100-python"], "meta"
        names = ["train" if train else "test", meta_name]
    else:
        sub, meta_name = ["cifar-10-batches-py"], "batches.meta"
        batches = [f"data_batch_{i}" for i in range(1, 6)] if train else ["test_batch"]
        names = [*batches, meta_name]
    paths = find_files(root, sub, names)
    images, labels = [], []
    for path in paths[:-1]:
        with path.open("rb") as f:
            d = pickle.load(f, encoding="latin1")  # noqa: S301 - user-provided dataset files
        images.append(np.asarray(d["data"], dtype=np.uint8).reshape(-1, 3, 32, 32))
        labels.append(np.asarray(d["fine_labels" if fine else "labels"], dtype=np.int64))
    with paths[-1].open("rb") as f:
        meta = pickle.load(f, encoding="latin1")  # noqa: S301
    classes = list(meta["fine_label_names" if fine else "label_names"])
    return np.concatenate(images), np.concatenate(labels), classes
