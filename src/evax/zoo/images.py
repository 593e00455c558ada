"""``evax.load_images``: user images from files, as evax tensors.

Specs accepted:

* a folder: every PNG/JPG/BMP/GIF/TIFF/WEBP below it; when the images sit in sub-folders
  (torchvision's ImageFolder layout ``root/<class>/<file>``) the sorted sub-folder names are
  the classes and give the labels;
* a glob (``"photos/*.png"``) or one image file;
* ``.npy`` (an array ``(N, C, H, W)``, ``(N, H, W, C)`` or ``(N, H, W)``) or ``.npz`` (arrays
  ``images`` / ``x`` and optionally ``labels`` / ``y``); uint8 is divided by 255, floats must
  already be in ``[0, 1]``.

``labels=`` a CSV ``file,label`` (header optional; ``file`` is matched on the path relative to
the folder or on the file name; ``label`` an int or a class name) overrides folder labels.
Images are converted to the model's channels and resized (bilinear) to its ``(H, W)``.
"""

from __future__ import annotations

import csv
import glob as globmod
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch

from evax.errors import DataSourceError, InvalidInputError

EXTENSIONS = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp"}


class Images(NamedTuple):
    """``images (N, C, H, W)`` float32 in [0, 1], ``labels (N,)`` int64 (-1: unknown), ``names``
    (file paths or ``file[i]``) and ``classes`` (ImageFolder names, or None)."""

    images: torch.Tensor
    labels: torch.Tensor
    names: list[str]
    classes: list[str] | None


def load_image(path: Path, shape: tuple[int, int, int], invert: bool = False) -> torch.Tensor:
    """Read a PNG/JPG as ``(1, C, H, W)`` in ``[0, 1]``, converted and resized to ``shape``."""
    try:
        from PIL import Image, UnidentifiedImageError
    except ImportError as exc:  # pragma: no cover - pillow comes with matplotlib
        raise InvalidInputError("reading images needs pillow: pip install pillow") from exc
    if len(shape) != 3:
        raise InvalidInputError(f"image files need a model input (C, H, W), got {tuple(shape)}")
    c, h, w = shape
    if c not in (1, 3):
        raise InvalidInputError(f"image files give 1 or 3 channels; the model takes {c}")
    try:
        img = Image.open(path)
        img.load()
    except (OSError, UnidentifiedImageError) as exc:
        raise InvalidInputError(f"cannot read image {str(path)!r}: {exc}") from exc
    img = img.convert("L" if c == 1 else "RGB").resize((w, h), Image.BILINEAR)
    arr = np.asarray(img, dtype=np.float32).reshape(h, w, c)
    x = torch.from_numpy(arr.copy()).permute(2, 0, 1) / 255
    return (1 - x if invert else x).unsqueeze(0)


def _read_labels(path: Path, classes: list[str] | None) -> dict[str, int]:
    if not path.is_file():
        raise DataSourceError(f"no labels CSV at {str(path)!r} (rows: file,label)")
    out: dict[str, int] = {}
    with path.open(newline="") as f:
        for i, row in enumerate(csv.reader(f)):
            if not row or not "".join(row).strip():
                continue
            if len(row) < 2:
                raise InvalidInputError(f"{path}:{i + 1}: expected 'file,label', got {row!r}")
            name, label = row[0].strip(), row[1].strip()
            if i == 0 and label.lower() in {"label", "class", "target"}:
                continue  # header
            if label.lstrip("-").isdigit():
                out[name] = int(label)
            elif classes is not None and label in classes:
                out[name] = classes.index(label)
            else:
                raise InvalidInputError(f"{path}:{i + 1}: label {label!r} is not an int or a known class name")
    return out


def _from_array(path: Path, shape: tuple[int, ...]) -> tuple[torch.Tensor, torch.Tensor | None]:
    try:
        data = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise InvalidInputError(f"cannot read {path}: {exc}") from exc
    labels = None
    if isinstance(data, np.lib.npyio.NpzFile):
        key = next((k for k in ("images", "x", "X", "inputs") if k in data.files), None)
        if key is None:
            raise InvalidInputError(f"{path} has arrays {data.files}; name the images 'images' (labels 'labels')")
        arr = data[key]
        lk = next((k for k in ("labels", "y", "targets") if k in data.files), None)
        labels = None if lk is None else data[lk]
    else:
        arr = data
    if arr.dtype == np.uint8:
        x = torch.from_numpy(arr.astype(np.float32) / 255)
    elif np.issubdtype(arr.dtype, np.floating):
        x = torch.from_numpy(arr.astype(np.float32))
        if x.numel() and (x.min() < 0 or x.max() > 1):
            raise InvalidInputError(f"{path}: float images must lie in [0, 1] (got [{x.min():.3g}, {x.max():.3g}])")
    else:
        raise InvalidInputError(f"{path}: images must be uint8 or float, got {arr.dtype}")
    if x.ndim == 3 and len(shape) == 3 and shape[0] == 1:
        x = x.unsqueeze(1)  # (N, H, W) grey images
    elif x.ndim == len(shape):  # one image
        x = x.unsqueeze(0)
    if x.ndim == 4 and len(shape) == 3 and x.shape[1] != shape[0] and x.shape[3] == shape[0]:
        x = x.permute(0, 3, 1, 2)  # NHWC -> NCHW
    if x.ndim != len(shape) + 1 or x.shape[0] == 0:
        raise InvalidInputError(f"{path}: images of shape {tuple(x.shape)} do not fit the model input {shape}")
    if tuple(x.shape[1:]) != tuple(shape):
        if len(shape) != 3 or x.shape[1] != shape[0]:
            raise InvalidInputError(f"{path}: images of shape {tuple(x.shape[1:])}, the model takes {shape}")
        x = torch.nn.functional.interpolate(x, size=shape[1:], mode="bilinear", align_corners=False).clamp(0, 1)
    y = None
    if labels is not None:
        labels = np.asarray(labels)
        if labels.shape != (x.shape[0],) or not np.issubdtype(labels.dtype, np.integer):
            raise InvalidInputError(f"{path}: labels must be ints of shape ({x.shape[0]},), got {labels.dtype} {labels.shape}")
        y = torch.from_numpy(labels.astype(np.int64))
    return x.contiguous(), y


def load_images(
    spec: str | Path,
    input_shape: tuple[int, ...],
    labels: str | Path | None = None,
    invert: bool = False,
    limit: int | None = None,
) -> Images:
    """Load images for a model with per-sample input ``input_shape`` (see the module docstring).

    Returns:
        :class:`Images` ``(images (N, *input_shape), labels (N,), names, classes)``.

    Raises:
        DataSourceError: nothing matches ``spec``.
        InvalidInputError: unreadable image / array, labels that do not parse or fit.
    """
    shape = tuple(int(d) for d in input_shape)
    if limit is not None and limit < 1:
        raise InvalidInputError(f"limit must be >= 1, got {limit}")
    text = str(spec)
    p = Path(text).expanduser()
    classes: list[str] | None = None
    if p.is_file() and p.suffix.lower() in {".npy", ".npz"}:
        x, y = _from_array(p, shape)
        names = [f"{p.name}[{i}]" for i in range(x.shape[0])]
        if y is None:
            y = torch.full((x.shape[0],), -1, dtype=torch.long)
        if labels is not None:
            table = _read_labels(Path(labels), None)
            y = torch.tensor([table.get(n, table.get(str(i), -1)) for i, n in enumerate(names)])
        if limit is not None:
            x, y, names = x[:limit], y[:limit], names[:limit]
        return Images(x, y, names, None)
    root: Path | None = None
    if p.is_dir():
        root = p
        files = sorted(f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in EXTENSIONS)
        subdirs = sorted({f.relative_to(p).parts[0] for f in files if len(f.relative_to(p).parts) > 1})
        if subdirs and all(len(f.relative_to(p).parts) == 2 for f in files):
            classes = subdirs
    elif p.is_file():
        files = [p]
    else:
        files = sorted(Path(f) for f in globmod.glob(str(p), recursive=True) if Path(f).is_file())
        files = [f for f in files if f.suffix.lower() in EXTENSIONS]
    if not files:
        raise DataSourceError(f"no images found at {text!r} (a folder, a glob, an image, .npy or .npz)")
    if limit is not None:
        files = files[:limit]
    if len(shape) != 3:
        raise InvalidInputError(f"image files need a model input (C, H, W), the model takes {shape}")
    names = [str(f.relative_to(root)) if root else str(f) for f in files]
    if classes is not None:
        y = [classes.index(Path(n).parts[0]) for n in names]
    else:
        y = [-1] * len(files)
    if labels is not None:
        table = _read_labels(Path(labels), classes)
        y = [table.get(n, table.get(f.name, -1)) for n, f in zip(names, files, strict=True)]
    x = torch.cat([load_image(f, shape, invert) for f in files])  # type: ignore[arg-type]
    return Images(x, torch.tensor(y, dtype=torch.long), names, classes)
