"""Kernel smoothing of any explanation (Sec. 4): exact averages, any explainer (EVA included),
Theorem 4.1's direction on the MNIST MLP, errors."""

from __future__ import annotations

import pytest
import torch
from captum.attr import Saliency as CaptumSaliency
from torch import nn

from evax.attribution.eva import EVA
from evax.attribution.smoothing import Smoothed
from evax.core.noise import GaussianNoise, UniformNoise
from evax.core.random import generator
from evax.errors import InvalidInputError
from evax.groups import grid
from evax.metrics.infidelity import MaxSensitivity


def _net(seed=0, d=36):
    gen = torch.Generator().manual_seed(seed)
    net = nn.Sequential(nn.Flatten(), nn.Linear(d, 10), nn.ReLU(), nn.Linear(10, 3))
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.5)
    return net.eval()


def _images(n=2, seed=1):
    return torch.rand(n, 1, 6, 6, generator=torch.Generator().manual_seed(seed))


def _identity(inputs, target):
    return inputs.clone()


@pytest.mark.parametrize(
    "kernel, sampler", [("gaussian", GaussianNoise(0.3)), ("uniform", UniformNoise(0.3))]
)
def test_average_over_the_same_draws(kernel, sampler):
    x = _images()
    sm = Smoothed(_identity, kernel=kernel, radius=0.3, n_samples=50, model=_net(), seed=4, batch_size=100)
    gen = generator(4, "smoothing")
    eps, _ = sampler.sample(torch.zeros(1, 1, 6, 6), 50, gen)
    assert torch.equal(sm.offsets(x), eps[0])
    assert torch.allclose(sm.attribute(x), (x.unsqueeze(1) - eps).mean(1), atol=1e-6)
    assert torch.allclose(sm.attribute(x[1:]), sm.attribute(x)[1:])  # one function of x, batch-free
    # and, with many points, the kernel's mean: x
    many = Smoothed(_identity, kernel=kernel, radius=0.3, n_samples=4000, model=_net(), batch_size=512)
    assert (many.attribute(x) - x).abs().max() < 0.03


def test_constant_explanations_are_unchanged():
    model = nn.Sequential(nn.Flatten(), nn.Linear(36, 3))
    sal = CaptumSaliency(model)
    x = _images()
    grad = sal.attribute(x, target=1, abs=False)
    for kernel in ("gaussian", "uniform"):
        sm = Smoothed(lambda i, t: sal.attribute(i, target=t, abs=False), kernel=kernel, model=model)
        assert torch.allclose(sm.attribute(x, target=1), grad, atol=1e-6)


def test_seeded_and_target_fixed_at_the_clean_prediction():
    model = _net()
    x = _images(3)
    seen = []

    def explain(inputs, target):
        seen.append(target.clone())
        return inputs * target.view(-1, 1, 1, 1)

    sm = Smoothed(explain, n_samples=7, model=model, batch_size=64)
    a = sm.attribute(x)
    pred = model(x).argmax(1)
    assert torch.equal(torch.cat(seen), pred.repeat_interleave(7))
    assert torch.equal(a, sm.attribute(x))
    assert not torch.equal(a, Smoothed(explain, n_samples=7, model=model, seed=1).attribute(x))


def test_smoothed_eva():
    """Any explainer: EVA (through its .attribute), averaged over the kernel's points."""
    model = _net()
    x = _images(2)
    eva = EVA(model, eps=0.2, method="ibp", groups=grid(2))
    sm = Smoothed(eva, radius=0.1, n_samples=6, seed=2, batch_size=64)
    out = sm.attribute(x)
    assert out.shape == (2, 6, 6)
    z = x.unsqueeze(1) - sm.offsets(x)
    target = model(x).argmax(1)
    manual = eva.attribute(z.reshape(12, 1, 6, 6), target.repeat_interleave(6)).view(2, 6, 6, 6).mean(1)
    assert torch.allclose(out, manual, atol=1e-5)
    assert sm.attribute_raw(x).shape == (2, 1, 6, 6)


def test_smoothing_lowers_max_sensitivity_of_saliency_on_the_mnist_mlp():
    """Theorem 4.1's direction (Table 1: Grad -> Grad-SG), seeded."""
    from evax.attribution.captum_methods import Saliency
    from evax.zoo import load_dataset, load_model

    model = load_model("mnist-mlp")
    x = load_dataset("mnist-samples").images[:5]
    sal = Saliency(model)
    smooth = Smoothed(sal, kernel="gaussian", radius=0.2, n_samples=32, seed=0)
    metric = MaxSensitivity(model, x, radius=0.2, n_samples=20, seed=0)
    plain, smoothed = metric(sal), metric(smooth)
    # on average over the images, as Table 1 (Theorem 4.1 bounds by the kernel average of the
    # sensitivity, not by the sensitivity at x: a single image may go up)
    assert smoothed.mean() < 0.85 * plain.mean(), (plain, smoothed)


def test_theorem_4_1_on_the_empirical_kernel():
    """SENS_MAX(Phi_k, x) <= mean_j SENS_MAX(Phi, z_j) exactly, for the same ball draws (one input
    per call, same seed) and the kernel's points z_j = x - eps_j (absolute sensitivities)."""
    model = _net()
    x = _images(1)
    sal = CaptumSaliency(model)

    def grad(inputs, target):
        return sal.attribute(inputs, target=target, abs=False)

    target = model(x).argmax(1)
    sm = Smoothed(grad, radius=0.3, n_samples=16, model=model, seed=3)
    sens = MaxSensitivity(model, x, target, radius=0.2, n_samples=30, relative=False, seed=5)(sm)
    z = x - sm.offsets(x)
    per_point = torch.stack(
        [MaxSensitivity(model, zj[None], target, radius=0.2, n_samples=30, relative=False, seed=5)(grad) for zj in z]
    )
    assert sens.item() > 0
    assert sens.item() <= per_point.mean().item() + 1e-9


def test_smoothing_bad_inputs():
    model = _net()
    x = _images()
    with pytest.raises(InvalidInputError, match="kernel"):
        Smoothed(_identity, kernel="laplace", model=model)
    with pytest.raises(InvalidInputError, match="radius"):
        Smoothed(_identity, radius=0, model=model)
    with pytest.raises(InvalidInputError, match="n_samples"):
        Smoothed(_identity, n_samples=0, model=model)
    with pytest.raises(InvalidInputError, match="explainer"):
        Smoothed(3)
    with pytest.raises(InvalidInputError, match="NaN"):
        Smoothed(lambda i, t: i * float("nan"), model=model, n_samples=2).attribute(x)
    with pytest.raises(InvalidInputError, match="returned"):
        Smoothed(lambda i, t: i[:1], model=model, n_samples=2).attribute(x)
    with pytest.raises(InvalidInputError, match="target"):
        Smoothed(_identity, n_samples=2).attribute(x)
    with pytest.raises(InvalidInputError, match="attribute_raw"):
        Smoothed(_identity, model=model).attribute_raw(x)
