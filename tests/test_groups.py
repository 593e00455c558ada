"""Groups of variables: grid layout, SLIC superpixels, user masks and their validation."""

from __future__ import annotations

import pytest
import torch

import evax
from evax import groups
from evax.errors import InvalidInputError


def test_grid_partitions_the_image_row_major():
    masks = groups.grid(3)(torch.zeros(2, 3, 7, 5))
    assert masks.shape == (1, 9, 7, 5) and masks.dtype == torch.bool
    assert (masks.sum(dim=1) == 1).all()  # a partition
    # rows edges round(i * 7 / 3) = 0, 2, 5, 7; column edges round(j * 5 / 3) = 0, 2, 3, 5
    assert masks[0, 0, :2, :2].all() and masks[0, 0].sum() == 4
    assert masks[0, 5, 2:5, 3:5].all() and masks[0, 5].sum() == 6
    assert masks[0, 8, 5:7, 3:5].all()


def test_grid_rejects_bad_sizes():
    with pytest.raises(InvalidInputError, match="positive int"):
        groups.grid(0)
    with pytest.raises(InvalidInputError, match="does not fit"):
        groups.resolve(groups.grid(12), torch.zeros(1, 1, 8, 8))


@pytest.mark.parametrize(
    ("hw", "shape"),
    [((28, 28), (14, 14)), ((32, 32), (8, 8)), ((224, 224), (14, 14)), ((28, 32), (14, 8)), ((6, 6), (6, 6))],
)
def test_equal_grid_has_cells_of_one_size(hw, shape):
    """equal=True: the per-side count nearest to n_side dividing the side (ties: fewer cells);
    every cell is the same h x w block, and the cells partition the image row-major."""
    g = groups.grid(12, equal=True)
    assert g.shape(*hw) == shape
    masks = g(torch.zeros(1, 1, *hw))
    rows, cols = shape
    assert masks.shape == (1, rows * cols, *hw) and (masks.sum(dim=1) == 1).all()
    ch, cw = hw[0] // rows, hw[1] // cols
    assert (masks.flatten(2).sum(2) == ch * cw).all()
    assert masks[0, cols + 1, ch : 2 * ch, cw : 2 * cw].all()  # cell (1, 1)


def test_equal_grid_falls_back_where_no_side_fits():
    """A prime side (29) has no divisor near 12: that side keeps 12 unequal cells."""
    g = groups.grid(12, equal=True)
    assert g.shape(29, 28) == (12, 14)
    assert torch.equal(groups.grid(12, equal=True)(torch.zeros(1, 1, 29, 29)), groups.grid(12)(torch.zeros(1, 1, 29, 29)))
    with pytest.raises(InvalidInputError, match="bool"):
        groups.grid(12, equal=1)


def test_superpixels_partition_each_image():
    gen = torch.Generator().manual_seed(0)
    images = torch.zeros(1, 3, 32, 32)
    images[:, 0, :, 16:] = 1.0  # two flat halves: SLIC must not merge them
    images += 0.01 * torch.rand(images.shape, generator=gen)
    masks = groups.resolve(groups.superpixels(n_segments=8, sigma=0.0), images)
    assert masks.shape[0] == 1 and masks.shape[1] >= 2 and masks.shape[2:] == (32, 32)
    assert (masks.sum(dim=1) == 1).all()
    for g in range(masks.shape[1]):  # no superpixel straddles the colour edge
        cols = masks[0, g].nonzero()[:, 1]
        assert bool((cols < 16).all()) or bool((cols >= 16).all())


def test_label_maps_become_masks():
    labels = torch.tensor([[[5, 5, 2], [2, 9, 9]]])
    masks = groups.resolve(labels, torch.zeros(1, 1, 2, 3))
    assert masks.shape == (1, 3, 2, 3)
    assert masks[0, 0].tolist() == [[False, False, True], [True, False, False]]  # label 2 first


def test_mask_validation():
    x = torch.zeros(2, 1, 4, 4)
    empty = torch.zeros(1, 2, 4, 4, dtype=torch.bool)
    empty[0, 0] = True
    with pytest.raises(InvalidInputError, match="group 1 .* is empty"):
        groups.resolve(empty, x)
    overlap = torch.ones(1, 2, 4, 4, dtype=torch.bool)
    with pytest.raises(InvalidInputError, match="overlap"):
        groups.resolve(overlap, x)
    assert groups.resolve(overlap, x, allow_overlap=True).shape == (1, 2, 4, 4)
    with pytest.raises(InvalidInputError, match="shape"):
        groups.resolve(torch.ones(3, 2, 4, 4, dtype=torch.bool), x)
    with pytest.raises(InvalidInputError, match="integers"):
        groups.resolve(torch.zeros(1, 4, 4), x)


def test_overlapping_groups_paint_the_mean_score():
    masks = torch.ones(1, 2, 2, 2, dtype=torch.bool)
    painted = groups.paint(torch.tensor([[1.0, 3.0]]), masks)
    assert torch.equal(painted, torch.full((1, 2, 2), 2.0))


def test_eva_accepts_superpixels():
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 16 * 16, 4))
    x = torch.rand(1, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    e = evax.EVA(model, eps=0.1, method="ibp", groups=groups.superpixels(n_segments=6)).explain(x)
    assert e.scores.shape[1] == e.masks.shape[1] and (e.scores >= 0).all()
    assert e.map.shape == (1, 16, 16)
