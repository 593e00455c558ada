"""Masked L2 PGD and the minimal-distance search: constraints, closed forms, cap, errors."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from evax.core.attacks import (
    farthest_point_distance,
    logit_margin,
    masked_pgd_l2,
    minimal_l2_distance,
    project,
)
from evax.errors import InvalidInputError

pytestmark = pytest.mark.usefixtures("one_thread")


def test_logit_margin():
    z = torch.tensor([[3.0, 1.0, 2.0], [0.0, 5.0, -1.0]])
    torch.testing.assert_close(logit_margin(z, torch.tensor([0, 2])), torch.tensor([-1.0, 6.0]))


def test_project_constraints():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(4, 2, 3, 3, generator=g)
    delta = 5 * torch.randn(4, 2, 3, 3, generator=g)
    free = torch.rand(4, 1, 3, 3, generator=g) > 0.5
    r = torch.tensor([0.1, 1.0, 2.0, 10.0])
    p = project(delta, x, free, r, (0.0, 1.0))
    assert (p.flatten(1).norm(dim=1) <= r + 1e-6).all()
    assert (p * ~free == 0).all()
    assert ((x + p) >= 0).all() and ((x + p) <= 1).all()


def test_farthest_point_distance():
    x = torch.tensor([[0.2, 0.9, 0.5]])
    free = torch.tensor([[True, True, False]])
    torch.testing.assert_close(farthest_point_distance(x, free, (0.0, 1.0)), torch.tensor([(0.8**2 + 0.9**2) ** 0.5]))


def _linear(seed=0, d=10, k=3):
    g = torch.Generator().manual_seed(seed)
    lin = nn.Linear(d, k)
    lin.weight.data = torch.randn(k, d, generator=g)
    lin.bias.data = torch.randn(k, generator=g)
    return lin.eval()


def test_pgd_finds_the_closed_form_adversary_on_a_linear_model():
    lin = _linear()
    x = torch.rand(5, 10, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        t = lin(x).argmax(1)
    free = torch.ones(5, 10, dtype=torch.bool)
    free[:, :3] = False
    w = lin.weight.detach()
    dist = torch.stack(
        [
            min(((lin(x[i : i + 1])[0, t[i]] - lin(x[i : i + 1])[0, c]) / ((w[t[i]] - w[c]) * free[i]).norm())
                for c in range(3) if c != t[i])
            for i in range(5)
        ]
    ).detach()  # fmt: skip
    ok, delta = masked_pgd_l2(lin, x, t, free, 1.01 * dist, torch.zeros_like(x), domain=None)
    assert ok.all() and (delta[:, :3] == 0).all()
    assert (delta.norm(dim=1) <= 1.01 * dist + 1e-6).all()
    ok, _ = masked_pgd_l2(lin, x, t, free, 0.99 * dist, torch.zeros_like(x), domain=None)
    assert not ok.any()
    res = minimal_l2_distance(lin, x, t, free, torch.Generator().manual_seed(0), domain=None, tol=1e-4)
    assert (res.distance >= dist * (1 - 1e-5)).all() and (
        res.distance <= dist * 1.01 + 1e-4
    ).all()  # tol = 1e-4 absolute
    assert not res.capped.any() and res.converged.all()
    with torch.no_grad():
        assert (logit_margin(lin(x + res.delta), t) > 0).all()  # the reported examples are adversarial


def test_nothing_free_is_capped_at_zero_radius():
    lin = _linear()
    x = torch.rand(2, 10)
    with torch.no_grad():
        t = lin(x).argmax(1)
    res = minimal_l2_distance(
        lin, x, t, torch.zeros(2, 10, dtype=torch.bool), torch.Generator(), domain=(0.0, 1.0)
    )
    assert res.capped.all() and (res.distance == 0).all()


def test_errors():
    lin = _linear()
    x = torch.rand(2, 10)
    t = torch.zeros(2, dtype=torch.long)
    free = torch.ones(2, 10, dtype=torch.bool)
    with pytest.raises(InvalidInputError):
        minimal_l2_distance(lin, x, t, free, torch.Generator(), start=0.0)
    with pytest.raises(InvalidInputError):
        minimal_l2_distance(lin, x, t, free, torch.Generator(), restarts=0)
    with pytest.raises(InvalidInputError):
        minimal_l2_distance(lin, x, t, free, torch.Generator(), steps=0)
