"""Greedy-AS and Greedy-AO on linear models where the optimal order has a closed form,
determinism, shapes, and errors."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from evax.attribution.greedy import GreedyAO, GreedyAS, fit_importance
from evax.errors import InvalidInputError, NotApplicableError
from evax.groups import grid

pytestmark = pytest.mark.usefixtures("one_thread")


def _grouped_linear(seed=0, k=2):
    """Linear model on (1, 8, 8) images whose 16 grid(4) cells have very different weights."""
    g = torch.Generator().manual_seed(seed)
    cells = grid(4)(torch.zeros(1, 1, 8, 8))[0].flatten(1).float()  # (16, 64)
    scale = torch.linspace(0.2, 3.0, 16)[torch.randperm(16, generator=g)] @ cells
    lin = nn.Linear(64, k)
    lin.weight.data = torch.randn(k, 64, generator=g) * scale
    lin.bias.data = torch.zeros(k)
    return nn.Sequential(nn.Flatten(), lin).eval(), lin, cells


def test_fit_importance_recovers_linear_values():
    g = torch.Generator().manual_seed(0)
    draws = torch.rand(3, 200, 6, generator=g) < 0.5
    w = torch.randn(3, 6, generator=g)
    values = (draws.double() * w.double().unsqueeze(1)).sum(2) + 2.0
    torch.testing.assert_close(fit_importance(draws, values), w.double(), rtol=1e-4, atol=1e-4)


def test_greedy_ao_order_is_exact_on_a_linear_model():
    # for f linear and an L-inf ball freeing the set s: AO(s) = margin + eps * sum_{i in s} |w_c' - w_c|_i,
    # additive over the cells, so the regression is exact: cells come in decreasing sum |dw|
    model, lin, cells = _grouped_linear()
    x = torch.rand(2, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    t = model(x).argmax(1)
    e = GreedyAO(model, groups=grid(4), n_subsets=40).explain(x)
    w = lin.weight.detach()
    for i in range(2):
        dw = (w[1 - t[i]] - w[t[i]]).abs() @ cells.T
        along = dw[e.order[i]]  # non-increasing (equal cells may come in any order)
        assert (along.diff() <= 1e-4 * along.max()).all()
        torch.testing.assert_close(e.coefficients[i][e.order[i]].float(), 0.5 * along, rtol=1e-3, atol=1e-3)  # eps dw
    assert e.map.shape == (2, 8, 8) and e.scores.shape == (2, 16)
    torch.testing.assert_close(e.scores[0].sort().values, torch.arange(1, 17) / 16)


def test_greedy_as_finds_the_best_cells_on_a_linear_model():
    # the minimal distance freeing s is margin / ||dw_s||_2 (no box): the best cells have the
    # largest ||dw_cell||^2
    model, lin, cells = _grouped_linear(seed=2)
    x = torch.rand(2, 1, 8, 8, generator=torch.Generator().manual_seed(3))
    t = model(x).argmax(1)
    e = GreedyAS(model, groups=grid(4), domain=None, n_subsets=60, seed=1).explain(x)
    w = lin.weight.detach()
    for i in range(2):
        dw2 = (w[1 - t[i]] - w[t[i]]).pow(2) @ cells.T
        best = set(torch.argsort(dw2, descending=True)[:4].tolist())
        assert best == set(e.order[i, :4].tolist())
    # values are minus distances: higher for bigger free sets
    assert all(v.shape == (2, 60) and (v <= 0).all() for v in e.values)


def test_determinism_mode_and_inputs():
    model, _, _ = _grouped_linear()
    model.train()
    x = torch.rand(2, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    x_copy = x.clone()
    state = torch.get_rng_state()
    kw = dict(groups=grid(4), n_subsets=20, pgd_steps=10, seed=3)
    a = GreedyAS(model, **kw).attribute(x)
    assert torch.equal(GreedyAS(model, **kw).attribute(x), a)
    assert GreedyAS(model, **kw).attribute_raw(x).shape == (2, 1, 8, 8)
    assert torch.equal(torch.get_rng_state(), state) and model.training and torch.equal(x, x_copy)
    b = GreedyAO(model, groups=grid(4), n_subsets=20, seed=3).attribute(x)
    assert b.shape == (2, 8, 8) and model.training


def test_flat_inputs_and_errors():
    g = torch.Generator().manual_seed(0)
    lin = nn.Linear(10, 3)
    x = torch.rand(2, 10, generator=g)
    a = GreedyAS(lin, n_subsets=10, pgd_steps=5).attribute(x)  # every feature is a variable
    assert a.shape == (2, 10)
    torch.testing.assert_close(a[0].sort().values, torch.arange(1, 11) / 10)
    with pytest.raises(NotApplicableError, match="image"):
        GreedyAO(lin, n_subsets=4).attribute(x)
    with pytest.raises(InvalidInputError, match="n_subsets"):
        GreedyAS(lin, n_subsets=1)
    with pytest.raises(InvalidInputError, match="step_fraction"):
        GreedyAO(lin, step_fraction=0)
    with pytest.raises(InvalidInputError, match="domain"):
        GreedyAS(lin, n_subsets=4, pgd_steps=2).attribute(x + 2)
    with pytest.raises(InvalidInputError, match="eps"):
        GreedyAO(lin, eps=-1.0)
