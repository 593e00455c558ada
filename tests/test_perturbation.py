"""The perturbation sets: geometry, sampling stays inside, concretisation is exact."""

from __future__ import annotations

import math

import pytest
import torch

import evax
from evax.perturbation import Box, stack_balls


@pytest.mark.parametrize("p", [math.inf, 2.0, 1.0])
def test_samples_lie_in_the_set(p):
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(3, 1, 4, 4, generator=gen)
    fixed = torch.rand(3, 1, 4, 4, generator=gen) < 0.4
    ball = evax.Ball(x, torch.tensor([0.1, 0.2, 0.3]), p=p, fixed=fixed)
    pts = ball.sample(500, generator=gen)
    delta = (pts - x).flatten(2)
    norms = torch.linalg.vector_norm(delta, ord=p, dim=2)
    assert (norms <= ball.eps + 1e-6).all()
    assert (delta[:, fixed.flatten(1)] == 0).all()
    # the extreme points are reached
    assert (norms >= ball.eps - 1e-5).float().mean() > 0.2


@pytest.mark.parametrize("p", [math.inf, 2.0, 1.0])
def test_samples_are_finite_when_the_generator_draws_zero(p, monkeypatch):
    """torch.rand is [0, 1): an exact 0 (drawn about once in 2**24 float32 draws) must give a
    point of the set, not NaN (-log(0) * 0 at a fixed variable)."""
    x = torch.rand(2, 1, 3, 3)
    fixed = torch.zeros(2, 1, 3, 3, dtype=torch.bool)
    fixed[0, 0, 0] = True
    ball = evax.Ball(x, 0.2, p=p, fixed=fixed)
    real_rand = torch.rand
    monkeypatch.setattr(torch, "rand", lambda *a, **k: torch.zeros_like(real_rand(*a, **k)))
    pts = ball.sample(8, corners=0.0)
    assert torch.isfinite(pts).all()
    delta = (pts - x).flatten(2)
    assert (torch.linalg.vector_norm(delta, ord=p, dim=2) <= 0.2 + 1e-6).all()


def test_domain_clips_the_box():
    x = torch.tensor([[0.05, 0.5, 0.97]])
    lo, hi = evax.Ball(x, 0.1, domain=(0, 1)).interval()
    torch.testing.assert_close(lo, torch.tensor([[0.0, 0.4, 0.87]]))
    torch.testing.assert_close(hi, torch.tensor([[0.15, 0.6, 1.0]]))


@pytest.mark.parametrize("p", [math.inf, 2.0, 1.0])
def test_concretize_is_the_exact_minimum(p):
    gen = torch.Generator().manual_seed(1)
    x = torch.rand(2, 5, generator=gen)
    ball = evax.Ball(x, 0.3, p=p, fixed=torch.tensor([[True, False, False, True, False]] * 2))
    a = torch.randn(2, 4, 5, generator=gen)
    lower = ball.concretize(a, torch.zeros(2, 4))
    pts = ball.sample(20000, generator=gen, corners=0.5)  # (S, 2, 5)
    values = torch.einsum("bkd,sbd->sbk", a, pts)
    assert (values >= lower - 1e-5).all()
    assert (values.min(0).values - lower).abs().max() < 0.05


def test_box_and_stack():
    box = Box(torch.zeros(2, 3), torch.ones(2, 3))
    assert box.concretize(torch.ones(1, 1, 3), torch.zeros(2, 1)).tolist() == [[0.0], [0.0]]
    with pytest.raises(evax.errors.InvalidInputError, match="lower > upper"):
        Box(torch.ones(1, 2), torch.zeros(1, 2))
    a = evax.Ball(torch.rand(2, 3), 0.1, fixed=torch.zeros(2, 3, dtype=torch.bool))
    b = evax.Ball(torch.rand(1, 3), 0.2)
    s = stack_balls([a, b])
    assert s.batch_size == 3 and s.fixed.shape == (3, 3)
    assert "Ball(batch=3" in repr(s)


@pytest.mark.parametrize("p", [math.inf, 2.0, 1.0])
@pytest.mark.parametrize("sign", [1, -1])
def test_half_balls(p, sign):
    gen = torch.Generator().manual_seed(2)
    x = torch.rand(2, 6, generator=gen)
    ball = evax.Ball(x, 0.4, p=p, sign=sign)
    pts = ball.sample(4000, generator=gen, corners=0.5)
    assert ((pts - x) * sign >= 0).all()
    a = torch.randn(2, 3, 6, generator=gen)
    lower = ball.concretize(a, torch.zeros(2, 3))
    values = torch.einsum("bkd,sbd->sbk", a, pts)
    assert (values >= lower - 1e-5).all()
    if p == 2.0:  # the minimiser: eps times the unit vector of the exploitable coefficients
        m = (-a).clamp_min(0) if sign > 0 else (-a).clamp_max(0)
        best = x.unsqueeze(1) + 0.4 * m / m.norm(dim=-1, keepdim=True)
        torch.testing.assert_close((a * best).sum(-1), lower, atol=1e-5, rtol=1e-5)
    else:
        assert (values.min(0).values - lower).abs().max() < 0.05
    lo, hi = ball.interval()
    assert torch.equal(lo if sign > 0 else hi, x)
