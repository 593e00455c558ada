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


def _minimiser(x, a, eps, p, free=None, sign=0):
    """The closed-form minimiser ``x + delta*`` ``(B, K, D)`` of ``a . z`` over the ball (or
    half-ball ``sign * delta >= 0``) of radius ``eps`` around ``x`` ``(B, D)``, only the ``free``
    entries moving: ``delta*`` follows ``m``, the part of ``-a`` the set can exploit, as
    ``eps * sign(m)`` (p = inf), ``eps * m / ||m||_2`` (p = 2) or ``eps * sign(m_j) e_j`` at
    ``j = argmax |m_j|`` (p = 1); the minimum is ``a . x - eps * ||m||_q`` (``1/p + 1/q = 1``)."""
    m = -a if free is None else -a * free.unsqueeze(1)
    if sign > 0:
        m = m.clamp_min(0)
    elif sign < 0:
        m = m.clamp_max(0)
    if p == math.inf:
        delta = eps * torch.sign(m)
    elif p == 2.0:
        delta = eps * m / m.norm(dim=-1, keepdim=True).clamp_min(1e-30)
    else:
        j = m.abs().argmax(dim=-1, keepdim=True)
        delta = torch.zeros_like(m).scatter(-1, j, eps * torch.sign(m.gather(-1, j)))
    return x.unsqueeze(1) + delta


@pytest.mark.parametrize("p", [math.inf, 2.0, 1.0])
def test_concretize_is_the_exact_minimum(p):
    gen = torch.Generator().manual_seed(1)
    x = torch.rand(2, 5, generator=gen, dtype=torch.float64)
    fixed = torch.tensor([[True, False, False, True, False]] * 2)
    ball = evax.Ball(x, 0.3, p=p, fixed=fixed)
    a = torch.randn(2, 4, 5, generator=gen, dtype=torch.float64)
    lower = ball.concretize(a, torch.zeros(2, 4, dtype=torch.float64))
    # the closed form: attained by a point of the ball, and a lower bound of every point
    best = _minimiser(x, a, 0.3, p, free=~fixed)
    delta = best - x.unsqueeze(1)
    assert (delta[fixed.unsqueeze(1).expand_as(delta)] == 0).all()
    assert (torch.linalg.vector_norm(delta, ord=p, dim=-1) <= 0.3 + 1e-12).all()
    torch.testing.assert_close((a * best).sum(-1), lower, rtol=1e-12, atol=1e-12)
    dual = {math.inf: 1.0, 2.0: 2.0, 1.0: math.inf}[p]
    closed = (a * x.unsqueeze(1)).sum(-1) - 0.3 * torch.linalg.vector_norm(a * ~fixed.unsqueeze(1), ord=dual, dim=-1)
    torch.testing.assert_close(lower, closed, rtol=1e-12, atol=1e-12)
    pts = ball.sample(2000, generator=gen, corners=0.5)  # (S, 2, 5)
    assert (torch.einsum("bkd,sbd->sbk", a, pts) >= lower - 1e-12).all()


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
    best = _minimiser(x, a, 0.4, p, sign=sign)  # the closed form, attained in the half-ball
    assert ((best - x.unsqueeze(1)) * sign >= 0).all()
    assert (torch.linalg.vector_norm(best - x.unsqueeze(1), ord=p, dim=-1) <= 0.4 + 1e-6).all()
    torch.testing.assert_close((a * best).sum(-1), lower, atol=1e-5, rtol=1e-5)
    lo, hi = ball.interval()
    assert torch.equal(lo if sign > 0 else hi, x)
