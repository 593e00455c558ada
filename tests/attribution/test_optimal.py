"""Infidelity-optimal explanations (Prop. 2.1): closed forms on linear models, Prop. 2.2 and 2.5,
the paper's Table 1 ordering on the zoo's MNIST MLP, errors."""

from __future__ import annotations

import itertools
import math
import warnings

import pytest
import torch
from torch import nn

from evax.attribution.optimal import (
    OptimalExplanation,
    OptimalNoisyBaseline,
    OptimalSquare,
    SingularSystemWarning,
)
from evax.core.noise import (
    DifferenceToBaseline,
    GaussianNoise,
    ShapleyKernel,
    SquareRemoval,
)
from evax.core.noise import NoisyBaseline as NoisyBaselinePert
from evax.errors import InvalidInputError
from evax.groups import grid
from evax.metrics.infidelity import Infidelity


def _linear(c=2, h=4, w=4, k=3, seed=0):
    gen = torch.Generator().manual_seed(seed)
    lin = nn.Linear(c * h * w, k)
    with torch.no_grad():
        lin.weight.copy_(torch.randn(lin.weight.shape, generator=gen))
        lin.bias.copy_(torch.randn(lin.bias.shape, generator=gen))
    return nn.Sequential(nn.Flatten(), lin).double().eval()


def _images(n=2, c=2, h=4, w=4, seed=1):
    return torch.rand(n, c, h, w, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def test_linear_model_weights_recovered_exactly():
    model = _linear()
    x = _images()
    target = torch.tensor([0, 2])
    w = model[1].weight.detach()[target].view(2, 2, 4, 4)
    for pert in (GaussianNoise(0.5), NoisyBaselinePert(0.3, baseline=0.2, clip=(0, 1))):
        phi = OptimalExplanation(model, pert, n_samples=200).attribute_raw(x, target)
        assert phi.shape == (2, 2, 4, 4)
        assert torch.allclose(phi, w, atol=1e-9)
    # the preset, and its global form (Sec. 2.5): w (x - x0)
    assert torch.allclose(OptimalNoisyBaseline(model, n_samples=200).attribute_raw(x, target), w, atol=1e-9)
    glob = OptimalNoisyBaseline(model, n_samples=200, baseline=0.2, global_=True).attribute_raw(x, target)
    assert torch.allclose(glob, w * (x - 0.2), atol=1e-9)
    same = OptimalNoisyBaseline(model, n_samples=200, baseline=0.2, **{"global": True}).attribute_raw(x, target)
    assert torch.equal(same, glob)
    # attribute reduces the channels by their sum
    assert torch.allclose(OptimalNoisyBaseline(model, n_samples=200).attribute(x, target), w.sum(1), atol=1e-9)


def test_square_on_a_linear_model_is_gradient_times_input():
    """I = m, f(x) - f(x~) = sum_p m_p sum_c w_cp (x - x0)_cp: Phi* = sum_c w (x - x0), per pixel."""
    model = _linear()
    x = _images()
    w = model[1].weight.detach()[1].view(1, 2, 4, 4)
    phi = OptimalSquare(model, sizes=(1, 2)).attribute_raw(x, 1)  # 16 + 9 exhaustive squares
    assert phi.shape == (2, 1, 4, 4)
    assert torch.allclose(phi, (w * (x - 0.0)).sum(1, keepdim=True), atol=1e-9)
    phi_random = OptimalSquare(model, sizes=(1, 2), exhaustive=False, n_samples=300).attribute_raw(x, 1)
    assert torch.allclose(phi_random, phi, atol=1e-9)


def test_groups_recover_a_piecewise_constant_model():
    """Weights constant on the cells of a 2x2 grid: the group regression recovers them exactly."""
    model = _linear(c=1, h=4, w=4)
    cell = torch.tensor([[1.0, -2.0], [0.5, 3.0]], dtype=torch.float64)
    with torch.no_grad():
        model[1].weight[0] = cell.repeat_interleave(2, 0).repeat_interleave(2, 1).flatten()
    x = _images(c=1)
    phi = OptimalExplanation(model, GaussianNoise(0.3), n_samples=50, groups=grid(2)).attribute_raw(x, 0)
    assert phi.shape == (2, 1, 4, 4)
    assert torch.allclose(phi[0, 0], cell.repeat_interleave(2, 0).repeat_interleave(2, 1), atol=1e-9)


def _tiny_net(d=5, seed=3):
    gen = torch.Generator().manual_seed(seed)
    net = nn.Sequential(nn.Linear(d, 8), nn.Tanh(), nn.Linear(8, 2))
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn(p.shape, generator=gen))
    return net.double().eval()


def test_difference_to_baseline_gives_completeness_with_a_warning():
    """Prop. 2.2: I = x - x0 deterministic, the (pinv) optimum satisfies sum Phi* (x - x0) = f(x) - f(x0)."""
    model = _tiny_net()
    x = torch.rand(3, 5, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    with pytest.warns(SingularSystemWarning, match="pseudo-inverse"):
        phi = OptimalExplanation(model, DifferenceToBaseline(0.1)).attribute_raw(x, 1)
    gap = (phi * (x - 0.1)).sum(1) - (model(x)[:, 1] - model(torch.full_like(x, 0.1))[:, 1])
    assert gap.abs().max() < 1e-9
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ridged = OptimalExplanation(model, DifferenceToBaseline(0.1), ridge=1e-3).attribute_raw(x, 1)
    assert ridged.norm() < phi.norm()


def _shapley(model, x, target):
    d = x.shape[1]

    def val(subset):
        v = torch.zeros_like(x)
        v[:, list(subset)] = x[:, list(subset)]
        return model(v)[:, target]

    phi = torch.zeros_like(x)
    for i in range(d):
        others = [j for j in range(d) if j != i]
        for k in range(d):
            for s in itertools.combinations(others, k):
                wgt = math.factorial(k) * math.factorial(d - k - 1) / math.factorial(d)
                phi[:, i] += wgt * (val(s + (i,)) - val(s))
    return phi


@pytest.mark.slow
def test_shapley_kernel_optimum_is_the_shapley_value():
    """Prop. 2.5 (with the full set's infinite weight, the completeness constraint)."""
    model = _tiny_net()
    x = torch.rand(2, 5, generator=torch.Generator().manual_seed(0), dtype=torch.float64) + 0.5
    exact = _shapley(model, x, 0)
    phi = OptimalExplanation(model, ShapleyKernel(), n_samples=40000, completeness=True).attribute_raw(x, 0)
    assert torch.allclose(phi, exact, atol=0.03), (phi, exact)
    local = OptimalExplanation(
        model, ShapleyKernel(indicator=False), n_samples=40000, completeness=True, global_=True
    ).attribute_raw(x, 0)
    assert torch.allclose(local, exact, atol=0.03)
    # without the constraint: the Shapley values up to a common shift only
    free = OptimalExplanation(model, ShapleyKernel(), n_samples=40000).attribute_raw(x, 0)
    shift = free - exact
    assert (shift.std(1) < 0.03).all() and (shift.mean(1).abs() > 0.05).any()


def test_optimal_explanation_is_seeded_and_restores_the_model():
    model = _tiny_net().train()
    x = torch.rand(2, 5, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    x_copy = x.clone()
    a = OptimalExplanation(model, GaussianNoise(0.2), n_samples=64, seed=1).attribute_raw(x, 0)
    b = OptimalExplanation(model, GaussianNoise(0.2), n_samples=64, seed=1, batch_size=1000).attribute_raw(
        x, 0
    )
    c = OptimalExplanation(model, GaussianNoise(0.2), n_samples=64, seed=2).attribute_raw(x, 0)
    assert torch.equal(a, b) and not torch.equal(a, c)
    # an image's explanation does not depend on the other images of the batch
    one = OptimalExplanation(model, GaussianNoise(0.2), n_samples=64, seed=1).attribute_raw(x[1:], 0)
    assert torch.allclose(one, a[1:], rtol=1e-10, atol=1e-12)
    assert model.training and torch.equal(x, x_copy)


def test_optimal_bad_inputs():
    model = _tiny_net()
    x = torch.rand(2, 5, dtype=torch.float64)
    with pytest.raises(InvalidInputError, match="n_samples"):
        OptimalExplanation(model, GaussianNoise(0.2), n_samples=1)
    with pytest.raises(InvalidInputError, match="noise distribution"):
        OptimalExplanation(model, "square")
    with pytest.raises(InvalidInputError, match="ridge"):
        OptimalExplanation(model, GaussianNoise(0.2), ridge=-1.0)
    with pytest.raises(InvalidInputError, match="already global"):
        OptimalExplanation(model, SquareRemoval(), global_=True)
    with pytest.raises(InvalidInputError, match="baseline"):
        OptimalExplanation(model, GaussianNoise(0.2), completeness=True)
    with pytest.raises(InvalidInputError, match="unexpected"):
        OptimalExplanation(model, GaussianNoise(0.2), glob=True)
    with pytest.raises(InvalidInputError, match="n_samples=None"):
        OptimalExplanation(model, DifferenceToBaseline(), n_samples=5).attribute_raw(x, 0)
    with pytest.warns(SingularSystemWarning):  # n < F: singular sample Gram matrix
        OptimalExplanation(model, GaussianNoise(0.2), n_samples=3).attribute_raw(x, 0)


# ------------------------------------------------------------------ MNIST MLP (paper's Table 1)


@pytest.fixture(scope="module")
def mnist():
    from evax.zoo import load_dataset, load_model

    return load_model("mnist-mlp"), load_dataset("mnist-samples").images[:3]


def _baselines(model):
    from evax.attribution.captum_methods import IntegratedGradients, Saliency, SmoothGrad

    return {
        "saliency": Saliency(model),
        "ig": IntegratedGradients(model, n_steps=32),
        "smoothgrad": SmoothGrad(model, n_samples=32),
    }


def test_noisy_baseline_beats_gradients_on_its_perturbation(mnist):
    model, x = mnist
    nb = OptimalNoisyBaseline(model, n_samples=4000, seed=0).attribute(x)
    # scored on fresh draws (another seed): out-of-sample, so the ordering is not by construction
    metric = Infidelity(model, x, noise=NoisyBaselinePert(0.2, clip=(0, 1)), n_samples=2000, seed=1)
    scores = metric({"nb": nb, **_baselines(model)})
    for name in ("saliency", "ig", "smoothgrad"):
        assert (scores["nb"] < scores[name]).all(), scores


def test_square_beats_gradients_on_square_removal(mnist):
    model, x = mnist
    sq = OptimalSquare(model).attribute(x)
    metric = Infidelity(model, x, noise=SquareRemoval(exhaustive=True))
    scores = metric({"square": sq, **_baselines(model)})
    for name in ("saliency", "ig", "smoothgrad"):
        assert (scores["square"] < scores[name]).all(), scores


def test_optimal_explanation_does_not_depend_on_chunking():
    """Draws come in fixed draw blocks (evax.core.streaming): with more samples than one block
    and chunks that straddle the blocks, the regression sees the same perturbations."""
    model = _tiny_net()
    x = torch.rand(3, 5, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    ref = OptimalExplanation(model, GaussianNoise(0.2), n_samples=2500, seed=3, batch_size=10_000).attribute_raw(x, 0)
    for bs in (100, 1024, 1500):
        got = OptimalExplanation(model, GaussianNoise(0.2), n_samples=2500, seed=3, batch_size=bs).attribute_raw(x, 0)
        torch.testing.assert_close(got, ref, rtol=1e-8, atol=1e-10)
