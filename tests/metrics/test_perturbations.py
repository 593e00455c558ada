"""Perturbation distributions of the infidelity measure: identities, supports, laws, errors."""

from __future__ import annotations

import math

import pytest
import torch

from evax.core.noise import (
    DifferenceToBaseline,
    GaussianNoise,
    NoisyBaseline,
    ShapleyKernel,
    SquareRemoval,
    SubsetRemoval,
    UniformNoise,
)
from evax.errors import InvalidInputError
from evax.groups import grid


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


def _images(n=2, c=3, h=8, w=8, seed=1):
    return torch.rand(n, c, h, w, generator=_gen(seed), dtype=torch.float64) + 0.1


@pytest.mark.parametrize(
    "pert",
    [
        GaussianNoise(0.3),
        GaussianNoise(0.3, clip=(0, 1)),
        UniformNoise(0.2),
        NoisyBaseline(0.2),
        NoisyBaseline(0.2, baseline=0.5, clip=(0, 1)),
        SquareRemoval(indicator=False),
        SubsetRemoval(indicator=False),
        SubsetRemoval("bernoulli", p=0.3, indicator=False),
    ],
)
def test_additive_identity_and_determinism(pert):
    x = _images()
    x_copy = x.clone()
    i1, y1 = pert.sample(x, 5, _gen(3))
    i2, y2 = pert.sample(x, 5, _gen(3))
    assert i1.shape == y1.shape == (2, 5, 3, 8, 8)
    assert torch.equal(i1, i2) and torch.equal(y1, y2)
    assert torch.allclose(y1, x.unsqueeze(1) - i1, atol=1e-15)  # x~ = x - I
    assert torch.equal(x, x_copy)
    i3, _ = pert.sample(x, 5, _gen(4))
    assert not torch.equal(i1, i3)


@pytest.mark.parametrize(
    "pert",
    [
        GaussianNoise(0.3),
        UniformNoise(0.2),
        NoisyBaseline(0.2, clip=(0, 1)),
        SquareRemoval(),
        ShapleyKernel(),
    ],
)
def test_shared_draws_are_common_to_all_inputs(pert):
    x = _images(3)
    i, y = pert.sample(x, 4, _gen(), shared=True)
    assert i.shape[:2] == y.shape[:2] == (3, 4)
    offsets = x.unsqueeze(1) - y  # eps_j, or m_j (x - x0)
    if isinstance(pert, (GaussianNoise, UniformNoise)):
        assert torch.allclose(offsets, offsets[:1].expand_as(offsets), atol=1e-12)
    else:  # the same mask / the same noisy baseline for every input
        assert torch.equal(i if pert.indicator else y, (i if pert.indicator else y)[:1].expand_as(i))
    one, _ = pert.sample(x[2:], 4, _gen(), shared=True)
    assert torch.equal(one[0], i[2])


def test_noise_laws():
    x = torch.zeros(1, 20000, dtype=torch.float64)
    eps, _ = GaussianNoise(0.3).sample(x, 1, _gen())
    assert abs(eps.std().item() - 0.3) < 0.01 and abs(eps.mean().item()) < 0.01
    u, _ = UniformNoise(0.2).sample(x, 1, _gen())
    assert u.abs().max() <= 0.2 and u.abs().max() > 0.199
    assert abs(u.var().item() - 0.2**2 / 3) < 0.001
    x = torch.full((1, 20000), 0.7, dtype=torch.float64)
    i, y = NoisyBaseline(0.2, baseline=0.1).sample(x, 1, _gen())
    assert abs(y.mean().item() - 0.1) < 0.01 and abs(y.std().item() - 0.2) < 0.01  # x~ = x0 + eps
    _, yc = NoisyBaseline(0.2, clip=(0, 1)).sample(x, 1, _gen())
    assert yc.min() == 0 and yc.max() <= 1


def test_removals_set_a_mask_to_the_baseline():
    x = _images()
    x0 = torch.full_like(x, 0.25)
    pairs = [
        (SquareRemoval(baseline=x0[0]), SquareRemoval(baseline=x0[0], indicator=False)),
        (SubsetRemoval(baseline=0.25), SubsetRemoval(baseline=0.25, indicator=False)),
        (ShapleyKernel(baseline=0.25), ShapleyKernel(baseline=0.25, indicator=False)),
    ]
    for pert, local in pairs:
        m, y = pert.sample(x, 6, _gen())
        assert m.shape == (2, 6, 1, 8, 8) and set(m.unique().tolist()) <= {0.0, 1.0}
        assert 0 < m.mean() < 1
        mask = m.bool().expand_as(y)
        assert torch.equal(y[mask], torch.full_like(y[mask], 0.25))
        assert torch.equal(y[~mask], x.unsqueeze(1).expand_as(y)[~mask])
        local_i, local_y = local.sample(x, 6, _gen())  # same draws: I = m (x - x0)
        assert torch.equal(local_y, y) and torch.allclose(local_i, m * (x - x0).unsqueeze(1))


def test_square_removal_enumeration_and_sampling():
    x = torch.rand(1, 1, 28, 28, generator=_gen())
    ex = SquareRemoval(exhaustive=True)
    total = ex.size(x)
    assert total == sum((28 - s + 1) ** 2 for s in range(1, 11)) == 5605
    m, _ = ex.sample(x, total)
    masks = m[0, :, 0]
    areas = masks.flatten(1).sum(1)
    assert sorted(set(areas.tolist())) == [float(s * s) for s in range(1, 11)]
    assert masks.flatten(1).unique(dim=0).shape[0] == total  # all distinct
    # every patch is a square: its rows and columns are contiguous and of equal count
    rows, cols = masks.any(2).sum(1), masks.any(1).sum(1)
    assert torch.equal(rows * cols, areas.long()) and torch.equal(rows, cols)
    # an offset enumerates the tail; the random version is uniform over the same patches
    tail, _ = ex.sample(x, 10, offset=total - 10)
    assert torch.equal(tail[0], m[0, -10:])
    rnd, _ = SquareRemoval().sample(x, 20000, _gen())
    side = rnd[0, :, 0].flatten(1).sum(1).sqrt().round().long()
    freq = torch.bincount(side, minlength=11)[1:].double() / 20000
    expected = torch.tensor([(28 - s + 1) ** 2 for s in range(1, 11)], dtype=torch.float64) / total
    assert torch.allclose(freq, expected, atol=0.01)


def test_shapley_kernel_size_law_and_groups():
    f = 6
    x = torch.rand(1, f, generator=_gen(), dtype=torch.float64)
    m, _ = ShapleyKernel().sample(x, 40000, _gen())
    k = m[0].sum(1).long()
    assert k.min() >= 1 and k.max() <= f - 1
    freq = torch.bincount(k, minlength=f)[1:].double() / 40000
    w = torch.tensor([1 / (j * (f - j)) for j in range(1, f)], dtype=torch.float64)
    assert torch.allclose(freq, w / w.sum(), atol=0.01)
    # given the size, the subset is uniform: every feature removed equally often
    assert torch.allclose(m[0].mean(0), torch.full((f,), 0.5, dtype=torch.float64), atol=0.01)
    # groups: removed pixels are unions of whole 4x4 cells of a 2x2 grid
    imgs = _images(h=8, w=8)
    gm, _ = SubsetRemoval(groups=grid(2)).sample(imgs, 50, _gen())
    cells = gm[:, :, 0].reshape(2, 50, 2, 4, 2, 4)
    assert torch.equal(cells.amax(dim=(3, 5)), cells.amin(dim=(3, 5)))
    assert SubsetRemoval(groups=grid(2)).n_features(imgs) == 4


def test_difference_to_baseline():
    x = _images()
    i, y = DifferenceToBaseline(baseline=0.5).sample(x, 1)
    assert torch.equal(y[:, 0], torch.full_like(x, 0.5)) and torch.allclose(i[:, 0], x - 0.5)
    ones, _ = DifferenceToBaseline(indicator=True).sample(x, 1)
    assert ones.shape == (2, 1, 1, 8, 8) and bool((ones == 1).all())
    assert DifferenceToBaseline().size(x) == 1


def test_perturbation_bad_inputs():
    x = _images()
    with pytest.raises(InvalidInputError, match="sigma"):
        GaussianNoise(0.0)
    with pytest.raises(InvalidInputError, match="sigma"):
        NoisyBaseline(-1.0)
    with pytest.raises(InvalidInputError, match="clip"):
        GaussianNoise(0.1, clip=(1, 0))
    with pytest.raises(InvalidInputError, match="torch.Generator"):
        GaussianNoise(0.1).sample(x, 2)
    with pytest.raises(InvalidInputError, match="broadcast"):
        NoisyBaseline(0.1, baseline=torch.zeros(5)).sample(x, 2, _gen())
    with pytest.raises(InvalidInputError, match="baseline"):
        SquareRemoval(baseline="mean")
    with pytest.raises(InvalidInputError, match="images"):
        SquareRemoval().sample(torch.rand(2, 10), 2, _gen())
    with pytest.raises(InvalidInputError, match="fits"):
        SquareRemoval(sizes=(20,)).sample(x, 2, _gen())
    with pytest.raises(InvalidInputError, match="out of range"):
        SquareRemoval(sizes=(1,), exhaustive=True).sample(x, 65)
    with pytest.raises(InvalidInputError, match="distribution"):
        SubsetRemoval("banzhaf")
    with pytest.raises(InvalidInputError, match="NaN"):
        GaussianNoise(0.1).sample(torch.full((1, 3), math.nan), 2, _gen())
    with pytest.raises(InvalidInputError, match="n must be"):
        GaussianNoise(0.1).sample(x, 0, _gen())
