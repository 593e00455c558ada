"""Groups of input variables ``u`` that EVA scores together.

A *grouping* turns images ``(N, C, H, W)`` into boolean masks ``(N or 1, G, H, W)`` over the
pixels (all channels of a pixel belong to the same group):

* :func:`grid` -- an ``n_side x n_side`` grid of cells (the EVA paper uses 12), cells numbered
  row-major with edges at ``round(i * H / n_side)``; with ``equal=True`` the side nearest to
  ``n_side`` whose cells are all the same size (on 28 x 28 images the paper's 12 x 12 grid mixes
  cells of 2 and 3 pixels a side, whose areas differ 2.25x: EVA's cell scores grow with the
  area, so the rows and columns of large cells show as stripes in the map; 14 x 14 cells of 2 x 2
  pixels do not);
* :func:`superpixels` -- SLIC superpixels of each image (scikit-image);
* a user tensor of masks ``(N or 1, G, H, W)`` (bool) or a label map ``(N or 1, H, W)``
  (int, one group per distinct label), via :func:`as_masks`.

Every group must be non-empty; groups may overlap only with ``allow_overlap=True``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from evax.errors import InvalidInputError, MissingDependencyError

Grouping = Callable[[torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class grid:  # noqa: N801 - reads as a function: evax.groups.grid(12)
    """Regular ``n_side x n_side`` grid over ``H x W``; ``__call__(images) -> (1, G, H, W)``.

    Args:
        n_side: cells per side (the EVA paper: 12).
        equal: make every cell the same size: per side, the number of cells nearest to
            ``n_side`` (ties: the smaller, cheaper one) that divides that side's length, among
            ``n_side / 2 .. 2 n_side``; a side with no such divisor (e.g. a prime length) keeps
            ``n_side`` and its unequal cells. :meth:`shape` says which grid an image size gets
            (28 x 28: 14 x 14 cells of 2 x 2 pixels; 32 x 32: 8 x 8 of 4 x 4; 224: 14 x 14).
    """

    n_side: int = 12
    equal: bool = False

    def __post_init__(self) -> None:
        if isinstance(self.n_side, bool) or not isinstance(self.n_side, int) or self.n_side < 1:
            raise InvalidInputError(f"grid n_side must be a positive int, got {self.n_side!r}")
        if not isinstance(self.equal, bool):
            raise InvalidInputError(f"grid equal must be a bool, got {self.equal!r}")

    def _count(self, length: int) -> int:
        if not self.equal:
            return self.n_side
        fits = [s for s in range(1, length + 1) if length % s == 0 and self.n_side <= 2 * s <= 4 * self.n_side]
        return min(fits, key=lambda s: (abs(s - self.n_side), s)) if fits else self.n_side

    def shape(self, h: int, w: int) -> tuple[int, int]:
        """``(rows, cols)`` of cells used on ``h x w`` images."""
        return self._count(h), self._count(w)

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        h, w = images.shape[-2:]
        n_rows, n_cols = self.shape(h, w)
        if n_rows > h or n_cols > w:
            raise InvalidInputError(f"a {n_rows}x{n_cols} grid does not fit {h}x{w} images")
        rows = torch.tensor([round(i * h / n_rows) for i in range(n_rows + 1)])
        cols = torch.tensor([round(j * w / n_cols) for j in range(n_cols + 1)])
        r = torch.bucketize(torch.arange(h), rows[1:], right=True)
        c = torch.bucketize(torch.arange(w), cols[1:], right=True)
        labels = r.view(-1, 1) * n_cols + c.view(1, -1)  # (H, W), row-major cell index
        cells = torch.arange(n_rows * n_cols).view(-1, 1, 1)
        return (labels.unsqueeze(0) == cells).unsqueeze(0).to(images.device)


@dataclass(frozen=True)
class superpixels:  # noqa: N801 - reads as a function
    """SLIC superpixels per image (scikit-image); ``__call__(images) -> (N, G, H, W)``.

    SLIC returns about ``n_segments`` segments, not exactly; a batch needs the same count for
    every image, otherwise a clear error asks to explain the images one at a time.
    """

    n_segments: int = 50
    compactness: float = 10.0
    sigma: float = 1.0

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        try:
            from skimage.segmentation import slic
        except ImportError as exc:
            raise MissingDependencyError(
                "evax.groups.superpixels needs scikit-image: pip install scikit-image"
            ) from exc
        masks = []
        for img in images.detach().cpu():
            arr = img.permute(1, 2, 0).double().numpy()
            labels = slic(
                arr,
                n_segments=self.n_segments,
                compactness=self.compactness,
                sigma=self.sigma,
                channel_axis=-1,
                start_label=0,
            )
            masks.append(as_masks(torch.as_tensor(labels).unsqueeze(0))[0])
        counts = {m.shape[0] for m in masks}
        if len(counts) != 1:
            raise InvalidInputError(
                f"SLIC gave different numbers of superpixels per image ({sorted(counts)}); "
                "explain these images one at a time"
            )
        return torch.stack(masks).to(images.device)


def as_masks(groups: torch.Tensor) -> torch.Tensor:
    """Masks ``(B, G, H, W)`` from masks (bool, returned as is) or a label map ``(B, H, W)``.

    Labels are renumbered in increasing order of their values; every label present in *any*
    image of the batch becomes a group.
    """
    if groups.dtype == torch.bool:
        return groups
    if groups.is_floating_point():
        raise InvalidInputError("group labels must be integers (or masks must be bool)")
    if groups.ndim != 3:
        raise InvalidInputError(f"a label map must have shape (N or 1, H, W), got {tuple(groups.shape)}")
    values = torch.unique(groups)
    return groups.unsqueeze(1) == values.view(1, -1, 1, 1)


def resolve(
    groups: Grouping | torch.Tensor, images: torch.Tensor, allow_overlap: bool = False
) -> torch.Tensor:
    """Validated masks ``(N or 1, G, H, W)`` (bool) for ``images`` ``(N, C, H, W)``."""
    if images.ndim != 4:
        raise InvalidInputError(f"groups need image inputs (N, C, H, W), got {tuple(images.shape)}")
    masks = groups(images) if callable(groups) else groups
    if not isinstance(masks, torch.Tensor):
        raise InvalidInputError("groups must be a grouping (e.g. evax.groups.grid(12)) or a tensor")
    masks = as_masks(masks.to(images.device))
    n, _, h, w = images.shape
    if masks.ndim != 4 or masks.shape[0] not in (1, n) or masks.shape[2:] != (h, w):
        raise InvalidInputError(
            f"group masks must have shape (N={n} or 1, G, H={h}, W={w}), got {tuple(masks.shape)}"
        )
    if masks.shape[1] == 0:
        raise InvalidInputError("there are no groups")
    empty = ~masks.flatten(2).any(dim=2)
    if empty.any():
        idx = empty.nonzero()[0].tolist()
        raise InvalidInputError(f"group {idx[1]} (image {idx[0]}) is empty")
    if not allow_overlap and (masks.sum(dim=1) > 1).any():
        raise InvalidInputError("groups overlap; pass allow_overlap=True if that is intended")
    return masks


def paint(scores: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """Per-pixel map ``(N, H, W)`` from group scores ``(N, G)``: each pixel gets its group's
    score (the mean of its groups' scores where groups overlap; 0 where no group covers it)."""
    m = masks.to(scores.dtype)
    total = (
        torch.einsum("ng,bghw->nhw", scores, m)
        if m.shape[0] == 1
        else torch.einsum("ng,nghw->nhw", scores, m)
    )
    count = m.sum(dim=1).clamp_min(1)
    return total / count
