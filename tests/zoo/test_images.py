"""evax.load_images: ImageFolder trees, globs, CSV labels, .npy / .npz arrays, bad files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from evax.errors import DataSourceError, InvalidInputError
from evax.zoo.images import load_images

RNG = np.random.default_rng(0)


def _png(path: Path, h: int = 28, w: int = 28, mode: str = "L") -> np.ndarray:
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = (RNG.random((h, w) if mode == "L" else (h, w, 3)) * 255).astype("uint8")
    Image.fromarray(arr).save(path)
    return arr


def test_image_folder_labels_from_folder_names(tmp_path: Path):
    a = _png(tmp_path / "cat" / "1.png")
    _png(tmp_path / "cat" / "2.png")
    _png(tmp_path / "dog" / "3.png", 40, 30)  # resized
    out = load_images(tmp_path, (1, 28, 28))
    assert out.classes == ["cat", "dog"]
    assert out.names == ["cat/1.png", "cat/2.png", "dog/3.png"]
    assert out.labels.tolist() == [0, 0, 1]
    assert out.images.shape == (3, 1, 28, 28) and out.images.dtype == torch.float32
    assert torch.allclose(out.images[0, 0], torch.from_numpy(a).float() / 255)


def test_rgb_model_and_glob(tmp_path: Path):
    _png(tmp_path / "x.png", 10, 12, "RGB")
    _png(tmp_path / "y.jpg", 10, 12)
    (tmp_path / "notes.txt").write_text("skip me")
    out = load_images(str(tmp_path / "*"), (3, 16, 16))
    assert out.images.shape == (2, 3, 16, 16) and out.labels.tolist() == [-1, -1]
    assert 0 <= out.images.min() and out.images.max() <= 1


def test_csv_labels(tmp_path: Path):
    _png(tmp_path / "imgs" / "a.png")
    _png(tmp_path / "imgs" / "b.png")
    (tmp_path / "labels.csv").write_text("file,label\na.png,3\nimgs/b.png,7\n")
    out = load_images(tmp_path / "imgs", (1, 28, 28), labels=tmp_path / "labels.csv")
    assert out.labels.tolist() == [3, -1]  # b is listed under another relative path: unknown
    (tmp_path / "labels.csv").write_text("a.png,3\nb.png,7\n")
    assert load_images(tmp_path / "imgs", (1, 28, 28), labels=tmp_path / "labels.csv").labels.tolist() == [3, 7]


def test_npz_and_npy(tmp_path: Path):
    x = RNG.random((4, 28, 28, 1)).astype(np.float32)  # NHWC
    np.savez(tmp_path / "d.npz", images=x, labels=np.array([1, 2, 3, 4]))
    out = load_images(tmp_path / "d.npz", (1, 28, 28))
    assert torch.allclose(out.images, torch.from_numpy(x).permute(0, 3, 1, 2))
    assert out.labels.tolist() == [1, 2, 3, 4]
    u8 = (RNG.random((2, 28, 28)) * 255).astype(np.uint8)
    np.save(tmp_path / "d.npy", u8)
    out = load_images(tmp_path / "d.npy", (1, 28, 28), limit=1)
    assert out.images.shape == (1, 1, 28, 28) and torch.allclose(out.images[0, 0], torch.from_numpy(u8[0]) / 255.0)


@pytest.mark.parametrize(
    "make,err,match",
    [
        (lambda p: p / "missing", DataSourceError, "no images found"),
        (lambda p: [(p / "bad.png").write_text("hello"), p / "bad.png"][1], InvalidInputError, "cannot read image"),
        (lambda p: np.save(p / "i.npy", np.ones((2, 28, 28), dtype=np.int32)) or p / "i.npy", InvalidInputError,
         "uint8 or float"),
        (lambda p: np.save(p / "f.npy", np.full((2, 28, 28), 3.0)) or p / "f.npy", InvalidInputError, r"\[0, 1\]"),
        (lambda p: np.save(p / "s.npy", np.zeros((2, 5))) or p / "s.npy", InvalidInputError, "do not fit"),
        (lambda p: np.savez(p / "k.npz", foo=np.zeros(3)) or p / "k.npz", InvalidInputError, "name the images"),
    ],
)
def test_bad_sources(tmp_path: Path, make, err, match):
    with pytest.raises(err, match=match):
        load_images(make(tmp_path), (1, 28, 28))


def test_bad_csv(tmp_path: Path):
    _png(tmp_path / "imgs" / "a.png")
    (tmp_path / "l.csv").write_text("a.png,zebra\n")
    with pytest.raises(InvalidInputError, match="not an int"):
        load_images(tmp_path / "imgs", (1, 28, 28), labels=tmp_path / "l.csv")
    with pytest.raises(DataSourceError, match="labels CSV"):
        load_images(tmp_path / "imgs", (1, 28, 28), labels=tmp_path / "none.csv")
