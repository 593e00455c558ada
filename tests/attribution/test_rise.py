"""RISE: the estimator's formula with its own masks, masks' statistics, locality, determinism,
batch independence, and shapes/ranges on the zoo's CIFAR-10 CNN."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from evax.attribution.rise import _BLOCK, RISE, rise_masks
from evax.errors import InvalidInputError, NotApplicableError
from evax.zoo.fetch import SourceUnreachableError

pytestmark = pytest.mark.usefixtures("one_thread")


def _cnn(seed=0):
    g = torch.Generator().manual_seed(seed)
    net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 14 * 14, 5))
    for p in net.parameters():
        p.data = torch.randn(p.shape, generator=g) * 0.1
    return net.eval()


def test_masks_shape_range_mean():
    m = rise_masks(2000, (14, 10), 7, 0.3, torch.Generator().manual_seed(0))
    assert m.shape == (2000, 14, 10)
    assert (m >= 0).all() and (m <= 1).all()
    assert abs(float(m.mean()) - 0.3) < 0.02
    assert m.std(0).min() > 0.1  # random shifts: no pixel is constant over the masks


def test_formula_with_its_own_masks_on_a_linear_model():
    g = torch.Generator().manual_seed(1)
    lin = nn.Linear(3 * 14 * 14, 2)
    model = nn.Sequential(nn.Flatten(), lin).eval()
    x = torch.rand(2, 3, 14, 14, generator=g)
    n_masks, p = 2 * _BLOCK + 17, 0.5
    sal = RISE(model, n_masks=n_masks, activation=None, seed=5, batch_size=33).attribute(x, 1)
    gen = torch.Generator().manual_seed(5)
    masks = torch.cat(
        [rise_masks(min(_BLOCK, n_masks - s), (14, 14), 7, p, gen) for s in range(0, n_masks, _BLOCK)]
    ).double()  # (M, H, W): the masks RISE draws
    w = lin.weight.detach()[1].double().view(3, 14, 14)
    scores = torch.einsum("chw,nchw,mhw->nm", w, x.double(), masks) + float(lin.bias.detach()[1])  # f(x * m_i)
    expected = torch.einsum("nm,mhw->nhw", scores, masks) / (n_masks * p)
    torch.testing.assert_close(sal.double(), expected, rtol=1e-4, atol=1e-4)


def test_locality():
    class TopLeft(nn.Module):  # only the top-left quadrant matters
        def forward(self, x):
            s = x[:, :, :7, :7].sum((1, 2, 3))
            return torch.stack([s, torch.zeros_like(s)], 1)

    x = torch.ones(1, 3, 14, 14)
    sal = RISE(TopLeft(), n_masks=500, activation=None).attribute(x, 0)[0]
    # E[f m_p] / p = E[f] + Cov(f, m_p) / p: only pixels of the quadrant co-vary with f
    assert sal[:7, :7].mean() > sal[7:, 7:].mean() + 2.0
    assert sal[:7, :7].mean() > sal[:7, 7:].mean() + 2.0


def test_determinism_batch_size_and_batch_independence():
    net = _cnn().train()
    x = torch.rand(3, 3, 14, 14, generator=torch.Generator().manual_seed(2))
    x_copy = x.clone()
    state = torch.get_rng_state()
    a = RISE(net, n_masks=300, seed=3).attribute(x)
    assert a.shape == (3, 14, 14) and (a >= 0).all() and (a <= 1 / 0.5).all()
    torch.testing.assert_close(RISE(net, n_masks=300, seed=3, batch_size=7).attribute(x), a)
    torch.testing.assert_close(RISE(net, n_masks=300, seed=3).attribute(x[2:]), a[2:])
    assert not torch.allclose(RISE(net, n_masks=300, seed=4).attribute(x), a)
    assert torch.equal(torch.get_rng_state(), state) and net.training and torch.equal(x, x_copy)
    assert RISE(net, n_masks=300, seed=3).attribute_raw(x).shape == (3, 3, 14, 14)


def test_errors():
    net = _cnn()
    for kw in ({"n_masks": 0}, {"grid": 0}, {"p": 1.0}, {"batch_size": 0}):
        with pytest.raises(InvalidInputError):
            RISE(net, **kw)
    with pytest.raises(InvalidInputError, match="activation"):
        RISE(net, activation="tanh")
    with pytest.raises(NotApplicableError, match="image"):
        RISE(nn.Linear(5, 2)).attribute(torch.rand(2, 5))


def test_zoo_cifar_cnn_shapes_determinism_ranges():
    from evax.zoo import load_dataset, load_model

    try:
        model = load_model("cifar10-cnn", progress=False)
        data = load_dataset("cifar10-samples", progress=False)
    except SourceUnreachableError as exc:
        pytest.skip(f"zoo source unreachable: {exc}")
    x = data.images[:2]
    method = RISE(model, n_masks=250, batch_size=125)
    a = method.attribute(x)
    assert a.shape == (2, 32, 32) and torch.isfinite(a).all()
    assert (a >= 0).all() and (a <= 2).all()  # softmax scores in [0, 1], masks mean p = 0.5
    assert (a.flatten(1).std(1) > 0).all()
    torch.testing.assert_close(method.attribute(x), a)
