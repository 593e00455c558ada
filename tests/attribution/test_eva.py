"""EVA: closed forms on linear models, invariances, guarantees, errors."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import evax
from evax.attribution.eva import EVA, margin_spec
from evax.errors import InvalidInputError
from evax.groups import grid


def _linear(seed=0, c=2, h=6, w=6, k=4):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(c * h * w, k)).eval()


def _closed_form(model, x, masks, eps, target):
    """AO(B), AO(B_u) of a linear model (p=inf, no domain)."""
    lin = model[1]
    wmat, b = lin.weight.double(), lin.bias.double()
    n, c, h, w = x.shape
    xf = x.reshape(n, -1).double()
    k = wmat.shape[0]
    ao, ao_u = [], []
    for i in range(n):
        rows = [j for j in range(k) if j != target[i]]
        dw = wmat[rows] - wmat[target[i]]  # (K-1, d)
        margin = dw @ xf[i] + b[rows] - b[target[i]]
        weight = dw.abs().view(len(rows), c, h, w).sum(1)  # per pixel, channels together
        full = margin + eps * weight.flatten(1).sum(1)
        ao.append(full.max())
        m = masks[0 if masks.shape[0] == 1 else i].double()  # (G, H, W)
        fixed_part = torch.einsum("khw,ghw->gk", weight, m)
        ao_u.append((full.unsqueeze(0) - eps * fixed_part).max(dim=1).values)
    return torch.stack(ao), torch.stack(ao_u)


@pytest.mark.parametrize("method", ["backward", "forward", "ibp+forward+backward"])
def test_linear_model_closed_form(method):
    model = _linear()
    x = torch.rand(3, 2, 6, 6)
    ex = EVA(model, eps=0.1, method=method, groups=grid(3)).explain(x)
    ao, ao_u = _closed_form(model, x, ex.masks, 0.1, ex.target)
    torch.testing.assert_close(ex.ao.double(), ao, rtol=1e-5, atol=1e-5)
    ao_u = torch.minimum(ao_u, ao.unsqueeze(1))
    torch.testing.assert_close(ex.ao_fixed.double(), ao_u, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(ex.scores.double(), ao.unsqueeze(1) - ao_u, rtol=1e-4, atol=1e-4)
    # the map paints each cell with its score
    torch.testing.assert_close(ex.map[:, 0, 0], ex.scores[:, 0])
    torch.testing.assert_close(ex.map[:, -1, -1], ex.scores[:, -1])


def test_scores_nonnegative_and_certified_flag():
    torch.manual_seed(1)
    model = nn.Sequential(nn.Flatten(), nn.Linear(72, 20), nn.ReLU(), nn.Linear(20, 5)).eval()
    x = torch.rand(4, 2, 6, 6)
    ex = EVA(model, eps=0.05, groups=grid(3)).explain(x)
    assert (ex.scores >= 0).all()
    assert torch.equal(ex.certified_robust, ex.ao < 0)


def test_one_group_equals_ao_minus_point_overlap():
    torch.manual_seed(2)
    model = nn.Sequential(nn.Flatten(), nn.Linear(72, 16), nn.ReLU(), nn.Linear(16, 4)).eval()
    x = torch.rand(2, 2, 6, 6)
    ex = EVA(model, eps=0.05, method="backward", groups=torch.ones(1, 1, 6, 6, dtype=torch.bool)).explain(x)
    with torch.no_grad():
        logits = model(x)
    point = torch.stack(
        [(logits[i] - logits[i, ex.target[i]])[torch.arange(4) != ex.target[i]].max() for i in range(2)]
    )
    torch.testing.assert_close(ex.scores[:, 0], ex.ao - point, rtol=1e-4, atol=1e-4)


def test_permuting_groups_permutes_scores_and_batching_is_consistent():
    torch.manual_seed(3)
    model = nn.Sequential(nn.Flatten(), nn.Linear(72, 16), nn.ReLU(), nn.Linear(16, 4)).eval()
    x = torch.rand(3, 2, 6, 6)
    masks = grid(3)(x)
    perm = torch.randperm(9)
    base = EVA(model, eps=0.05, method="backward", groups=masks).explain(x)
    permuted = EVA(model, eps=0.05, method="backward", groups=masks[:, perm]).explain(x)
    torch.testing.assert_close(permuted.scores, base.scores[:, perm], rtol=1e-5, atol=1e-5)
    singles = torch.cat(
        [EVA(model, eps=0.05, method="backward", groups=masks).explain(x[i : i + 1]).scores for i in range(3)]
    )
    torch.testing.assert_close(singles, base.scores, rtol=1e-5, atol=1e-5)
    chunked = EVA(model, eps=0.05, method="backward", groups=masks, batch_size=4).explain(x)
    torch.testing.assert_close(chunked.scores, base.scores, rtol=1e-5, atol=1e-5)


def test_certified_robust_agrees_with_exact():
    torch.manual_seed(4)
    model = nn.Sequential(nn.Flatten(), nn.Linear(8, 6), nn.ReLU(), nn.Linear(6, 3)).eval()
    x = torch.rand(6, 2, 2, 2)
    for eps in (0.01, 0.05, 0.2, 0.6):
        masks = grid(2)(x)
        relaxed = EVA(model, eps=eps, groups=masks).explain(x)
        exact = EVA(model, eps=eps, method="exact", groups=masks).explain(x)
        assert (exact.ao <= relaxed.ao + 1e-5).all()
        # a relaxation's certificate is always confirmed by the exact AO
        assert (exact.certified_robust | ~relaxed.certified_robust).all()


def test_targeted_sign_flips_when_half_balls_swap():
    model = _linear(seed=5)
    flipped = nn.Sequential(_Neg(), model).eval()
    x = torch.rand(2, 2, 6, 6) * 0.5 + 0.25
    a = EVA(model, eps=0.1, method="backward", groups=grid(3)).explain(x, target=0, contrast=2)
    b = EVA(flipped, eps=0.1, method="backward", groups=grid(3)).explain(-x, target=0, contrast=2)
    torch.testing.assert_close(b.scores, -a.scores, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(b.extra["scores_pos"], a.extra["scores_neg"], rtol=1e-5, atol=1e-5)
    assert a.certified_robust is None and a.contrast.tolist() == [2, 2]


class _Neg(nn.Module):
    def forward(self, x):
        return -x


def test_bad_inputs():
    model = _linear()
    x = torch.rand(2, 2, 6, 6)
    with pytest.raises(InvalidInputError, match="target out of range"):
        EVA(model).explain(x, target=7)
    with pytest.raises(InvalidInputError, match="eps"):
        EVA(model, eps=0.0)
    with pytest.raises(InvalidInputError, match="shape"):
        EVA(model, groups=torch.ones(1, 2, 5, 5, dtype=torch.bool)).explain(x)
    with pytest.raises(InvalidInputError, match="empty"):
        EVA(model, groups=torch.zeros(1, 2, 6, 6, dtype=torch.bool)).explain(x)
    with pytest.raises(InvalidInputError, match="overlap"):
        EVA(model, groups=torch.ones(1, 2, 6, 6, dtype=torch.bool)).explain(x)
    with pytest.raises(InvalidInputError, match="contrast"):
        EVA(model, groups=grid(3)).explain(x, target=1, contrast=1)
    with pytest.raises(InvalidInputError, match="grid"):
        EVA(model, groups=grid(7)).explain(x)


def test_model_mode_restored():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(72, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 3))
    model.train()
    EVA(model, eps=0.05, groups=grid(2)).explain(torch.rand(2, 2, 6, 6))
    assert model.training


def test_grid_layout():
    masks = grid(12)(torch.zeros(1, 1, 28, 28))
    assert masks.shape == (1, 144, 28, 28)
    assert (masks.sum(1) == 1).all()
    edges = [round(i * 28 / 12) for i in range(13)]
    assert masks[0, 0, : edges[1], : edges[1]].all() and masks[0, 1, 0, edges[1]]
    assert masks[0, 12, edges[1], 0]  # row-major
    assert torch.equal(
        evax.groups.as_masks(torch.tensor([[[3, 3], [5, 7]]])).sum((2, 3)), torch.tensor([[2, 1, 1]])
    )


def test_bound_options_reach_the_engine():
    """``bound_options`` are evax.bound's keyword arguments: with them EVA's AO equals the
    engine's bound for the same options; unknown or ill-typed options are refused at once."""
    torch.manual_seed(3)
    model = nn.Sequential(nn.Flatten(), nn.Linear(72, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(),
                          nn.Linear(16, 4)).eval()
    x = torch.rand(2, 2, 6, 6, generator=torch.Generator().manual_seed(0))
    options = {"alpha_iterations": 7, "alpha_intermediate": True}
    expl = EVA(model, eps=0.2, method="alpha-crown", groups=grid(3), bound_options=options).explain(x)
    target = model(x).argmax(1)
    b = evax.bound(model, evax.Ball(x, 0.2), "alpha-crown", spec=margin_spec(target, 4), **options)
    torch.testing.assert_close(expl.ao, b.upper.amax(1))
    with pytest.raises(InvalidInputError, match="unknown bound option"):
        EVA(model, bound_options={"alpha_steps": 3})
    with pytest.raises(InvalidInputError, match="alpha_intermediate"):
        EVA(model, bound_options={"alpha_intermediate": "yes"})
