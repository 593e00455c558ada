"""Robustness-S_r: the closed-form minimal distance of a linear model (within 2 %), the cap
policy, misclassified inputs, invariances, interface and errors."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

from evax.errors import InvalidInputError
from evax.groups import grid
from evax.metrics.robustness import RobustnessSr

pytestmark = pytest.mark.usefixtures("one_thread")


def _linear(seed=0, d=3 * 8 * 8, k=4):
    g = torch.Generator().manual_seed(seed)
    lin = nn.Linear(d, k)
    lin.weight.data = torch.randn(k, d, generator=g)
    lin.bias.data = torch.randn(k, generator=g)
    return nn.Sequential(nn.Flatten(), lin).eval(), lin


def _closed_form(lin, x, target, free):
    """min_{c' != c} (z_c - z_c') / ||(w_c - w_c')_free||_2, free (C*H*W,) bool."""
    w, b = lin.weight.detach().double(), lin.bias.detach().double()
    z = x.flatten().double() @ w.T + b
    best = float("inf")
    for c in range(w.shape[0]):
        if c != target:
            dw = (w[target] - w[c]) * free
            best = min(best, float((z[target] - z[c]) / dw.norm()))
    return best


@pytest.mark.parametrize("groups", [None, grid(4)])
def test_linear_closed_form_within_two_percent(groups):
    model, lin = _linear()
    x = torch.rand(3, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    expl = torch.randn(3, 8, 8, generator=torch.Generator().manual_seed(2))
    metric = RobustnessSr(model, x, domain=None, groups=groups, fractions=[0.25, 0.5, 1.0], tie_break="index")
    out = metric(expl, detailed=True)
    assert out.distances.shape == (3, 3) and out.scores.shape == (3,)
    assert not out.capped.any() and out.converged.all()
    rank = metric.ranking(metric.variables.scores(expl))
    for i in range(3):
        for j, count in enumerate(metric.counts):
            selected = (rank[i] < count).unsqueeze(0)
            free = metric.variables.pixel_mask(selected, torch.tensor([i]))[0, 0]  # (P,) bool
            expected = _closed_form(lin, x[i], int(metric.targets[i]), free.repeat(3))
            got = float(out.distances[i, j])
            assert abs(got - expected) <= 0.02 * expected, (i, j, got, expected)
            assert got >= expected * (1 - 1e-4)  # an actual example: never below the true minimum
    fr = out.fractions.double()
    d = out.distances.double()
    manual = ((d[:, 1:] + d[:, :-1]) / 2 * fr.diff()).sum(1)
    torch.testing.assert_close(out.scores.double(), manual)
    torch.testing.assert_close(metric(expl), out.scores)


def test_good_explanation_beats_its_reverse():
    model, lin = _linear(seed=3)
    x = torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    metric = RobustnessSr(model, x, domain=None, fractions=[0.1, 0.2, 0.5, 1.0])
    w = lin.weight.detach()
    t = metric.targets
    # pixels with the largest |w_c - w_c'| (summed over classes and channels) move the margin most
    good = torch.stack([(w[t[i]] - w).abs().sum(0).view(3, 8, 8).sum(0) for i in range(2)])
    out_good, out_bad = metric(good, detailed=True), metric(-good, detailed=True)
    assert (out_good.scores < out_bad.scores).all()
    # the last step frees everything: it does not depend on the explanation
    torch.testing.assert_close(
        out_good.distances[:, -1], out_bad.distances[:, -1], rtol=2e-3, atol=1e-3
    )


class _Stubborn(nn.Module):
    """Class 0 whatever the input (no adversarial example exists)."""

    def forward(self, x):
        s = 0.0 * x.flatten(1).sum(1)
        return torch.stack([s + 1.0, s], dim=1)


def test_cap_policy_farthest_point_distance_and_max_radius():
    x = torch.rand(2, 1, 4, 4, generator=torch.Generator().manual_seed(0))
    metric = RobustnessSr(_Stubborn(), x, fractions=[0.5, 1.0], tie_break="index", steps=5)
    with pytest.warns(UserWarning, match="capped"):
        out = metric(torch.rand(2, 4, 4), detailed=True)
    assert out.capped.all() and torch.isfinite(out.distances).all()
    # the cap is the radius of the smallest ball around x covering the free part of the box
    far = torch.maximum(x, 1 - x).flatten(1)
    torch.testing.assert_close(out.distances[:, -1], far.norm(dim=1))
    torch.testing.assert_close(out.distances, out.cap)
    # without a domain: max_radius
    m2 = RobustnessSr(_Stubborn(), x, domain=None, max_radius=3.0, fractions=[1.0], steps=5)
    with pytest.warns(UserWarning):
        out2 = m2(torch.rand(2, 4, 4), detailed=True)
    torch.testing.assert_close(out2.distances, torch.full((2, 1), 3.0))


def test_misclassified_input_has_distance_zero():
    model, _ = _linear()
    x = torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        wrong = (model(x).argmax(1) + 1) % 4
    out = RobustnessSr(model, x, targets=wrong, domain=None, fractions=[0.5, 1.0])(
        torch.rand(2, 8, 8), detailed=True
    )
    assert (out.distances == 0).all() and (out.scores == 0).all()


def test_batch_size_seed_and_restarts():
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    net = nn.Sequential(nn.Flatten(), nn.Linear(48, 16), nn.ReLU(), nn.Linear(16, 3))
    for p in net.parameters():
        p.data = torch.randn(p.shape, generator=g)
    net.train()
    x = torch.rand(3, 3, 4, 4, generator=g)
    x_copy = x.clone()
    expl = torch.randn(3, 4, 4, generator=g)
    kw = dict(fractions=[0.5, 1.0], steps=20, restarts=2, tol=1e-2, seed=4)
    state = torch.get_rng_state()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = RobustnessSr(net, x, **kw)(expl, detailed=True)
        small = RobustnessSr(net, x, batch_size=2, **kw)(expl, detailed=True)
        again = RobustnessSr(net, x, **kw)(expl, detailed=True)
    torch.testing.assert_close(small.distances, ref.distances, rtol=1e-5, atol=1e-6)
    assert torch.equal(again.distances, ref.distances)
    assert torch.equal(torch.get_rng_state(), state)
    assert net.training and torch.equal(x, x_copy)
    assert ref.budget["steps"] == 20 and ref.budget["restarts"] == 2


def test_errors():
    model, _ = _linear()
    x = torch.rand(2, 3, 8, 8)
    with pytest.raises(InvalidInputError, match="domain"):
        RobustnessSr(model, x + 1.0)
    with pytest.raises(InvalidInputError, match="domain"):
        RobustnessSr(model, x, domain=(1.0, 0.0))
    with pytest.raises(InvalidInputError, match="fractions"):
        RobustnessSr(model, x, fractions=[0.5, 0.2])
    with pytest.raises(InvalidInputError, match="repeated"):
        RobustnessSr(model, x, groups=grid(2), fractions=[0.1, 0.2, 1.0])
    with pytest.raises(InvalidInputError, match="steps"):
        RobustnessSr(model, x, steps=0)
    assert RobustnessSr(model, x, fractions=[0.3, 0.6]).fractions.tolist()[-1] == 1.0  # all free last
    with pytest.raises(InvalidInputError, match="tie_break"):
        RobustnessSr(model, x, tie_break="raster")
    with pytest.raises(InvalidInputError, match="shape"):
        RobustnessSr(model, x, fractions=[1.0])(torch.rand(2, 5, 5))
