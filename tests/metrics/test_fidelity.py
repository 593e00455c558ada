"""Deletion, Insertion, muFidelity: closed forms on analytic models, invariances, errors."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from evax.errors import InvalidInputError
from evax.groups import grid
from evax.metrics.fidelity import Deletion, Insertion, MuFidelity

pytestmark = pytest.mark.usefixtures("one_thread")


class Head(nn.Module):
    """Two logits ``[s(x), 0]`` from a per-sample scalar function ``s`` of the flat input."""

    def __init__(self, fn):
        super().__init__()
        self.fn = fn

    def forward(self, x):
        s = self.fn(x.flatten(1))
        return torch.stack([s, torch.zeros_like(s)], dim=1)


def _sum_model():
    return Head(lambda x: x.sum(1))


def _all_present():  # 1 while every variable is present, 0 once one is at the baseline 0
    return Head(lambda x: torch.clamp(100 * x.min(1).values, max=1.0))


def _any_present():  # 0 at the baseline 0, 1 once one variable is back
    return Head(lambda x: torch.clamp(100 * x.max(1).values, max=1.0))


def _conv(seed=0):
    g = torch.Generator().manual_seed(seed)
    net = nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(4 * 4 * 4, 5)
    )
    for p in net.parameters():
        p.data = torch.randn(p.shape, generator=g) * 0.5
    return net.eval()


def _images(n=3, seed=0, lo=0.5):
    g = torch.Generator().manual_seed(seed)
    return lo + (1 - lo) * torch.rand(n, 3, 8, 8, generator=g)


# -- muFidelity ---------------------------------------------------------------------------------
@pytest.mark.parametrize("groups", [None, grid(4)])
def test_mufidelity_sum_model_is_plus_minus_one(groups):
    x = _images()
    metric = MuFidelity(_sum_model(), x, 0, baseline=0.0, activation=None, groups=groups, n_subsets=50)
    torch.testing.assert_close(metric(x), torch.ones(3))
    torch.testing.assert_close(metric(-x), -torch.ones(3))
    # channel-reduced explanations (N, H, W) are the same thing for a sum
    torch.testing.assert_close(metric(x.sum(1)), torch.ones(3))


def test_mufidelity_uniform_baseline_exact_attribution():
    x = _images()
    metric = MuFidelity(_sum_model(), x, 0, activation=None, subset_fraction=0.3)
    # the drop is sum_u (x - x0): the attribution x - x0 is perfectly faithful
    torch.testing.assert_close(metric(x - metric.baseline), torch.ones(3))
    assert metric(x).lt(0.999).all()  # x alone is not exact with a random baseline


def test_mufidelity_degenerate_reported_as_zero():
    x = _images()
    metric = MuFidelity(_sum_model(), x, 0, baseline=0.0, activation=None)
    out = metric(torch.ones(3, 8, 8), detailed=True)  # every subset has the same sum
    assert out.degenerate.all() and (out.scores == 0).all()
    assert out.drops.shape == (3, 200) and out.subsets.sum(2).eq(round(0.2 * 64)).all()


# -- Deletion / Insertion -------------------------------------------------------------------------
@pytest.mark.parametrize("groups", [None, grid(4)])
def test_deletion_zero_when_any_removal_kills_the_score(groups):
    x = _images()
    v = 64 if groups is None else 16
    metric = Deletion(_all_present(), x, 0, baseline=0.0, activation=None, groups=groups)
    for expl in (torch.rand(3, 8, 8), -x, x):
        out = metric(expl, detailed=True)
        # curve (1, 0, 0, ..., 0) over fractions k/V: area 1 / (2V)
        torch.testing.assert_close(out.scores, torch.full((3,), 1 / (2 * v)))
        assert out.curves.shape == (3, v + 1)


@pytest.mark.parametrize("groups", [None, grid(4)])
def test_insertion_one_when_any_insertion_restores_the_score(groups):
    x = _images()
    v = 64 if groups is None else 16
    metric = Insertion(_any_present(), x, 0, baseline=0.0, activation=None, groups=groups)
    for expl in (torch.rand(3, 8, 8), x):
        torch.testing.assert_close(metric(expl), torch.full((3,), 1 - 1 / (2 * v)))


def _linear(seed=0, d=3 * 8 * 8, k=4):
    g = torch.Generator().manual_seed(seed)
    lin = nn.Linear(d, k)
    lin.weight.data = torch.randn(k, d, generator=g)
    lin.bias.data = torch.randn(k, generator=g)
    return nn.Sequential(nn.Flatten(), lin).eval(), lin


def test_deletion_insertion_curves_match_linear_closed_form():
    model, lin = _linear()
    x = _images(n=2, lo=0.0)
    target = torch.tensor([1, 3])
    expl = torch.randn(2, 8, 8, generator=torch.Generator().manual_seed(5))
    dele = Deletion(model, x, target, baseline=0.0, activation=None, tie_break="index")(expl, detailed=True)
    ins = Insertion(model, x, target, baseline=0.0, activation=None, tie_break="index")(expl, detailed=True)
    for i in range(2):
        w = lin.weight[target[i]].detach().view(3, 64).double()
        contrib = (w * x[i].view(3, 64).double()).sum(0)  # per pixel, channels together
        order = torch.argsort(expl[i].flatten(), descending=True, stable=True)
        b = float(lin.bias[target[i]].detach())
        del_curve = [b + contrib.sum() - contrib[order[:k]].sum() for k in range(65)]
        ins_curve = [b + contrib[order[:k]].sum() for k in range(65)]
        torch.testing.assert_close(dele.curves[i].double(), torch.stack(del_curve), rtol=1e-5, atol=1e-4)
        torch.testing.assert_close(ins.curves[i].double(), torch.stack(ins_curve), rtol=1e-5, atol=1e-4)
        area = sum((del_curve[k] + del_curve[k + 1]) / 2 / 64 for k in range(64))
        assert abs(float(dele.scores[i]) - float(area)) < 1e-4


def test_true_attribution_of_a_linear_model_is_optimal():
    # removing the largest contributions w_c * x first minimises the remaining logit at every
    # step: no explanation has a lower Deletion, nor a higher Insertion
    model, lin = _linear(seed=1)
    x = _images(n=2, lo=0.0)
    target = torch.tensor([0, 2])
    true = (lin.weight[target].detach().view(2, 3, 8, 8) * x).sum(1)
    dele = Deletion(model, x, target, baseline=0.0, activation=None)
    ins = Insertion(model, x, target, baseline=0.0, activation=None)
    d_true, i_true = dele(true), ins(true)
    g = torch.Generator().manual_seed(0)
    for _ in range(5):
        other = torch.randn(2, 8, 8, generator=g)
        assert (d_true <= dele(other) + 1e-5).all()
        assert (i_true >= ins(other) - 1e-5).all()
    assert (d_true < dele(-true)).all() and (i_true > ins(-true)).all()


def test_steps_subsample_the_curve():
    model = _conv()
    x = _images(n=2, lo=0.0)
    expl = torch.rand(2, 8, 8, generator=torch.Generator().manual_seed(1))
    full = Deletion(model, x, steps=None, seed=3)(expl, detailed=True)
    coarse = Deletion(model, x, steps=16, seed=3)(expl, detailed=True)
    assert coarse.curves.shape == (2, 17)
    assert coarse.counts.tolist() == list(range(0, 65, 4))
    torch.testing.assert_close(coarse.curves, full.curves[:, ::4])
    half = Insertion(model, x, max_fraction=0.5, steps=8, seed=3)(expl, detailed=True)
    assert half.counts[-1] == 32 and half.fractions[-1] == 0.5


# -- invariances -----------------------------------------------------------------------------------
@pytest.mark.parametrize("cls", [Deletion, Insertion, MuFidelity])
def test_batch_size_and_seed(cls):
    model = _conv()
    x = _images(n=5, lo=0.0)
    expl = torch.randn(5, 3, 8, 8, generator=torch.Generator().manual_seed(2))
    kw = dict(groups=grid(4)) if cls is not MuFidelity else dict(n_subsets=30)
    ref = cls(model, x, batch_size=256, seed=7, **kw)(expl)
    for bs in (1, 7):
        torch.testing.assert_close(
            cls(model, x, batch_size=bs, seed=7, **kw)(expl), ref, rtol=1e-5, atol=1e-6
        )
    assert torch.equal(cls(model, x, seed=7, **kw)(expl), ref)
    assert not torch.allclose(cls(model, x, seed=8, **kw)(expl), ref)
    # one sample alone scores as in the batch when it is the first (the baseline is per sample)
    torch.testing.assert_close(cls(model, x[:1], seed=7, **kw)(expl[:1]), ref[:1], rtol=1e-5, atol=1e-6)


def test_global_rng_untouched_and_model_restored():
    model = _conv().train()
    x = _images(lo=0.0)
    x_copy = x.clone()
    state = torch.get_rng_state()
    Deletion(model, x, seed=1)(torch.rand(3, 8, 8, generator=torch.Generator().manual_seed(0)))
    MuFidelity(model, x, seed=1)(torch.ones(3, 8, 8))
    assert torch.equal(torch.get_rng_state(), state)
    assert model.training and torch.equal(x, x_copy)


def test_group_inputs_agree():
    model = _conv()
    x = _images(n=2, lo=0.0)
    masks = grid(4)(x)[0]  # (G, H, W)
    labels = masks.long().argmax(0).unsqueeze(0)  # (1, H, W) int labels
    scores = torch.randn(2, 16, generator=torch.Generator().manual_seed(0))
    painted = torch.einsum("ng,ghw->nhw", scores, masks.float())
    res = [
        Deletion(model, x, groups=g, group_reduce="mean", seed=2)(e)
        for g, e in [(grid(4), painted), (masks, painted), (labels, painted), (grid(4), scores)]
    ]
    for r in res[1:]:
        torch.testing.assert_close(r, res[0])


def test_callable_explainers_captum_and_function():
    captum = pytest.importorskip("captum.attr")
    model = _conv()
    x = _images(n=2, lo=0.0)
    metric = Insertion(model, x, groups=grid(4), seed=0)
    sal = captum.Saliency(model)
    direct = metric(sal.attribute(x, target=metric.targets))
    torch.testing.assert_close(metric(sal.attribute), direct)
    torch.testing.assert_close(metric(lambda inp, t: sal.attribute(inp, target=t)), direct)
    ig = captum.IntegratedGradients(model)  # attribute(inputs, baselines, target): target by keyword
    torch.testing.assert_close(metric(ig.attribute), metric(ig.attribute(x, target=metric.targets)))


def test_flat_inputs_and_groups():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(3, 10, generator=g)
    metric = MuFidelity(_sum_model(), x, 0, baseline=0.0, activation=None, n_subsets=20)
    torch.testing.assert_close(metric(x), torch.ones(3))
    labels = torch.arange(10).div(2, rounding_mode="floor").unsqueeze(0)  # 5 groups of 2
    dele = Deletion(_all_present(), x + 0.5, 0, baseline=0.0, activation=None, groups=labels)
    torch.testing.assert_close(dele(torch.rand(3, 10, generator=g)), torch.full((3,), 0.1))


# -- errors ------------------------------------------------------------------------------------------
def test_errors():
    model = _conv()
    x = _images(n=2, lo=0.0)
    with pytest.raises(InvalidInputError, match="baseline"):
        Deletion(model, x, baseline="gaussian")
    with pytest.raises(InvalidInputError, match="NaN"):
        Deletion(model, x, baseline=float("nan"))
    with pytest.raises(InvalidInputError, match="broadcast"):
        Insertion(model, x, baseline=torch.zeros(5, 5))
    with pytest.raises(InvalidInputError, match="NaN"):
        MuFidelity(model, x.clone().fill_(float("nan")))
    with pytest.raises(InvalidInputError, match="target"):
        MuFidelity(model, x, targets=[0, 1, 2])
    with pytest.raises(InvalidInputError, match="subset_fraction"):
        MuFidelity(model, x, subset_fraction=0.0)
    with pytest.raises(InvalidInputError, match="activation"):
        MuFidelity(model, x, activation="tanh")
    metric = Deletion(model, x, steps=4)
    with pytest.raises(InvalidInputError, match="shape"):
        metric(torch.rand(2, 7, 8))
    with pytest.raises(InvalidInputError, match="samples"):
        metric(torch.rand(3, 8, 8))
    with pytest.raises(InvalidInputError, match="NaN"):
        metric(torch.full((2, 8, 8), float("nan")))
    with pytest.raises(InvalidInputError, match="steps"):
        Deletion(model, x, steps=0)
    with pytest.raises(InvalidInputError, match="overlap"):
        Deletion(model, x, groups=torch.ones(2, 8, 8, dtype=torch.bool))


def test_group_reduce_auto_mean_for_painted_maps_sum_otherwise():
    model = _conv()
    x = _images(n=2, lo=0.0)
    masks = grid(3)(x)[0]  # unequal cells on 8x8 (3, 2, 3 pixels a side)
    scores = torch.randn(2, 9, generator=torch.Generator().manual_seed(0))
    painted = torch.einsum("ng,ghw->nhw", scores, masks.float())
    auto = Deletion(model, x, groups=grid(3), seed=2)
    torch.testing.assert_close(auto.variables.scores(painted), scores)  # painted: the group's value
    torch.testing.assert_close(auto(painted), auto(scores))
    pixel = torch.rand(2, 8, 8, generator=torch.Generator().manual_seed(1))
    summed = torch.einsum("nhw,ghw->ng", pixel, masks.float())
    torch.testing.assert_close(auto.variables.scores(pixel), summed)  # pixel-level: the set's total
    with pytest.raises(InvalidInputError, match="group_reduce"):
        Deletion(model, x, groups=grid(3), group_reduce="max")
