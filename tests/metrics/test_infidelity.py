"""Infidelity (Def. 2.1) and max-sensitivity (Def. 3.1): closed forms, Captum cross-checks, errors."""

from __future__ import annotations

import math

import pytest
import torch
from captum.attr import IntegratedGradients as CaptumIG
from captum.attr import Saliency as CaptumSaliency
from captum.metrics import infidelity as captum_infidelity
from captum.metrics import sensitivity_max as captum_sensitivity_max
from torch import nn

from evax.core.noise import (
    DifferenceToBaseline,
    GaussianNoise,
    NoisyBaseline,
    SquareRemoval,
    UniformNoise,
)
from evax.errors import InvalidInputError
from evax.metrics.infidelity import (
    Infidelity,
    InfidelityResult,
    MaxSensitivity,
    SensitivityResult,
    check_explanation,
    dot_perturbations,
)


def _mlp(seed: int = 0, d: int = 12, k: int = 3) -> nn.Module:
    gen = torch.Generator().manual_seed(seed)
    net = nn.Sequential(nn.Linear(d, 16), nn.Tanh(), nn.Linear(16, k))
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.7)
    return net.double().eval()


def _conv(seed: int = 0) -> nn.Module:
    gen = torch.Generator().manual_seed(seed)
    net = nn.Sequential(nn.Conv2d(2, 3, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(3 * 6 * 6, 4))
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.3)
    return net.double().eval()


def _inputs(shape, seed=1):
    return torch.rand(shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def _grad(model):
    sal = CaptumSaliency(model)
    return lambda x, target: sal.attribute(x, target=target, abs=False)


# ------------------------------------------------------------------------------ Infidelity


def test_ig_infidelity_is_squared_completeness_gap():
    """Captum's identity: with I = x - x0 deterministic, INFD(IG) = (sum IG - (f(x) - f(x0)))^2."""
    model = _mlp()
    x = _inputs((5, 12))
    target = torch.tensor([0, 1, 2, 0, 1])
    ig = CaptumIG(model)
    attr, delta = ig.attribute(
        x, baselines=0.0, target=target, n_steps=3, method="riemann_right", return_convergence_delta=True
    )
    assert delta.abs().max() > 1e-4  # a real gap, so the identity is not 0 == 0
    metric = Infidelity(model, x, target, DifferenceToBaseline(0.0, indicator=True), normalize=False)
    assert torch.allclose(metric(attr), delta.double() ** 2, rtol=1e-8, atol=1e-12)
    # the local form I = x - x0 with IG's local attributions (not multiplied by the inputs) agrees
    local = CaptumIG(model, multiply_by_inputs=False).attribute(
        x, baselines=0.0, target=target, n_steps=3, method="riemann_right"
    )
    metric_local = Infidelity(model, x, target, DifferenceToBaseline(0.0, indicator=False), normalize=False)
    assert torch.allclose(metric_local(local), delta.double() ** 2, rtol=1e-8, atol=1e-12)


def test_linear_model_true_weights_have_zero_infidelity():
    lin = nn.Linear(12, 3).double().eval()
    x = _inputs((4, 12))
    w = lin.weight.detach()[1].expand(4, 12)
    for pert in (GaussianNoise(0.3), NoisyBaseline(0.2, baseline=0.5)):
        scores = Infidelity(lin, x, 1, pert, n_samples=64, normalize=False)(w)
        assert scores.abs().max() < 1e-20
        other = Infidelity(lin, x, 1, pert, n_samples=64, normalize=False)(w * 0.5)
        assert (other > 1e-3).all()


@pytest.mark.parametrize("pert", [GaussianNoise(0.2), NoisyBaseline(0.2, clip=(0, 1))])
def test_normalized_infidelity_is_scale_invariant(pert):
    model = _mlp()
    x = _inputs((4, 12))
    expl = torch.randn(4, 12, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    metric = Infidelity(model, x, noise=pert, n_samples=50, normalize=True)
    a, b = metric(expl), metric(100 * expl)
    assert torch.allclose(a, b, rtol=1e-9)
    raw = Infidelity(model, x, noise=pert, n_samples=50, normalize=False)
    assert not torch.allclose(raw(expl), raw(100 * expl))
    # beta-scaling can only help: normalised <= unscaled, and equals the unscaled form at beta
    out = metric(expl, detailed=True)
    assert (out.scores <= out.unscaled + 1e-12).all()
    assert torch.allclose(raw(out.beta.view(-1, 1) * expl), out.scores, rtol=1e-8)


def _precomputed_perturb_func(pert, inputs, n, seed):
    """A Captum perturb_func returning exactly the draws our metric makes in one chunk."""
    p, y = pert.sample(inputs, n, torch.Generator().manual_seed(seed), shared=True)
    p, y = p.reshape(-1, *p.shape[2:]), y.reshape(-1, *y.shape[2:])  # (N * n, ...), row-major

    def perturb_func(expanded, *args):
        assert expanded.shape[0] == p.shape[0]
        return p, y

    return perturb_func


@pytest.mark.parametrize("normalize", [True, False])
@pytest.mark.parametrize(
    "pert",
    [GaussianNoise(0.2), NoisyBaseline(0.2, clip=(0, 1)), SquareRemoval(sizes=(1, 2, 3), indicator=False)],
)
def test_same_draws_as_captum_infidelity(pert, normalize):
    """Same perturbations, same seed -> Captum's numbers to float precision."""
    model = _conv()
    x = _inputs((3, 2, 6, 6))
    target = torch.tensor([0, 3, 1])
    expl = CaptumSaliency(model).attribute(x.clone().requires_grad_(), target=target, abs=False)
    n = 40
    ours = Infidelity(model, x, target, pert, n_samples=n, normalize=normalize, batch_size=3 * n, seed=7)(expl)
    theirs = captum_infidelity(
        model,
        _precomputed_perturb_func(pert, x, n, 7),
        x,
        expl,
        target=target,
        n_perturb_samples=n,
        normalize=normalize,
    )
    assert torch.allclose(ours, theirs.double(), rtol=1e-9, atol=1e-12)


def test_monte_carlo_agreement_with_captum_independent_draws():
    """Independent draws of the same distribution: the two estimates agree within MC error."""
    model = _mlp(d=12)
    x = _inputs((3, 12))
    expl = _grad(model)(x.clone().requires_grad_(), torch.tensor([0, 1, 2])).detach()
    n = 20000
    ours = Infidelity(model, x, [0, 1, 2], GaussianNoise(0.3), n_samples=n, normalize=False, seed=0)(expl)
    gen = torch.Generator().manual_seed(12345)

    def perturb_func(inputs):
        noise = torch.randn(inputs.shape, generator=gen, dtype=inputs.dtype) * 0.3
        return noise, inputs - noise

    theirs = captum_infidelity(model, perturb_func, x, expl, target=[0, 1, 2], n_perturb_samples=n).double()
    # standard error of the mean of (a - b)^2, from one more of our runs per input
    runs = torch.stack(
        [
            Infidelity(model, x, [0, 1, 2], GaussianNoise(0.3), n_samples=200, normalize=False, seed=s)(expl)
            for s in range(20)
        ]
    )
    se = runs.std(0) * math.sqrt(200 / n) * math.sqrt(2)  # sd of a difference of two n-sample means
    assert (se < 0.03 * ours).all()  # the tolerance is tight enough to mean something
    assert ((ours - theirs).abs() < 5 * se).all(), (ours, theirs, se)


def test_several_explanations_in_one_pass_match_separate_calls():
    model = _mlp()
    x = _inputs((4, 12))
    e1 = torch.randn(4, 12, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    e2 = torch.randn(4, 12, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    metric = Infidelity(model, x, noise=GaussianNoise(0.2), n_samples=30, batch_size=17)
    both = metric({"a": e1, "b": e2})
    assert torch.equal(both["a"], metric(e1)) and torch.equal(both["b"], metric(e2))
    assert [t.shape for t in metric([e1, e2])] == [(4,), (4,)]
    detailed = metric([e1, e2], detailed=True)
    assert all(isinstance(r, InfidelityResult) for r in detailed)
    assert torch.equal(detailed[1].scores, both["b"])
    with pytest.raises(InvalidInputError, match="no explanation"):
        metric([])


def test_explainers_are_accepted_and_seed_controls_draws():
    model = _mlp()
    x = _inputs((3, 12))
    metric = Infidelity(model, x, noise=GaussianNoise(0.2), n_samples=20)
    expl = _grad(model)(x.clone().requires_grad_(), model(x).argmax(1)).detach()
    from_tensor = metric(expl)
    assert torch.allclose(metric(_grad(model)), from_tensor)  # callable, target = prediction
    assert torch.allclose(metric(CaptumSaliency(model)), metric(expl.abs()))  # .attribute (abs)
    assert torch.allclose(metric(CaptumSaliency(model).attribute), metric(expl.abs()))  # bound method
    assert torch.equal(metric(expl), from_tensor)
    other_seed = Infidelity(model, x, noise=GaussianNoise(0.2), n_samples=20, seed=1)
    assert not torch.equal(other_seed(expl), from_tensor)


def test_an_input_score_does_not_depend_on_the_other_inputs():
    model = _mlp()
    x = _inputs((5, 12))
    expl = torch.randn(5, 12, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    for pert in (GaussianNoise(0.2), NoisyBaseline(0.2, clip=(0, 1))):
        part = Infidelity(model, x[2:4], noise=pert, n_samples=40, batch_size=64)(expl[2:4])
        whole = Infidelity(model, x, noise=pert, n_samples=40, batch_size=64)(expl)
        assert torch.allclose(part, whole[2:4], rtol=1e-12)
    kw = dict(radius=0.2, n_samples=9, batch_size=20)
    part = MaxSensitivity(model, x[3:], **kw)(_grad(model))
    assert torch.allclose(part, MaxSensitivity(model, x, **kw)(_grad(model))[3:], rtol=1e-12)


@pytest.mark.parametrize("pert", [GaussianNoise(0.2), NoisyBaseline(0.2, clip=(0, 1))])
def test_results_do_not_depend_on_chunking(pert):
    """The draws are made in fixed draw blocks (evax.core.streaming), so any batch size --
    chunks aligned with the blocks or straddling them, one input per block or several -- sees
    the same perturbations: the scores agree up to float summation order."""
    model = _mlp()
    x = _inputs((3, 12))
    expl = torch.randn(3, 12, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    ref = Infidelity(model, x, noise=pert, n_samples=3000, batch_size=10_000)(expl, detailed=True)
    for bs in (64, 100, 1024, 2999):
        out = Infidelity(model, x, noise=pert, n_samples=3000, batch_size=bs)(expl, detailed=True)
        torch.testing.assert_close(out.scores, ref.scores, rtol=1e-5, atol=0)
        torch.testing.assert_close(out.beta, ref.beta, rtol=1e-5, atol=0)
    sens = MaxSensitivity(model, x, radius=0.2, n_samples=1500, batch_size=10_000)(_grad(model))
    for bs in (7, 256):
        other = MaxSensitivity(model, x, radius=0.2, n_samples=1500, batch_size=bs)(_grad(model))
        torch.testing.assert_close(other, sens, rtol=1e-5, atol=0)


def test_exhaustive_square_removal_and_channel_reduced_explanations():
    model = _conv()
    x = _inputs((2, 2, 6, 6))
    pert = SquareRemoval(sizes=(1, 2), exhaustive=True)
    metric = Infidelity(model, x, 1, pert, normalize=False, batch_size=7)
    expl = torch.randn(2, 2, 6, 6, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    full = metric(expl, detailed=True)
    assert full.n_samples == 36 + 25
    # an indicator mask is dotted with the channel sum: (N, H, W) of the summed map is the same
    assert torch.allclose(metric(expl.sum(1)), full.scores)
    with pytest.raises(InvalidInputError, match="n_samples=None"):
        Infidelity(model, x, 1, pert, n_samples=10)(expl)


def test_infidelity_keeps_model_mode_and_inputs():
    model = _mlp().train()
    x = _inputs((2, 12))
    x_copy = x.clone()
    Infidelity(model, x, noise=GaussianNoise(0.2), n_samples=4)(torch.ones(2, 12, dtype=torch.float64))
    assert model.training and torch.equal(x, x_copy)


def test_infidelity_bad_inputs():
    model = _mlp()
    x = _inputs((2, 12))
    with pytest.raises(InvalidInputError, match="n_samples"):
        Infidelity(model, x, noise=GaussianNoise(0.2), n_samples=1)
    with pytest.raises(InvalidInputError, match="noise distribution"):
        Infidelity(model, x, noise=lambda x: x, n_samples=4)
    with pytest.raises(InvalidInputError, match="out of range"):
        Infidelity(model, x, 3, GaussianNoise(0.2), n_samples=4)
    metric = Infidelity(model, x, noise=GaussianNoise(0.2), n_samples=4)
    with pytest.raises(InvalidInputError, match="does not match the inputs"):
        metric(torch.ones(2, 11))
    with pytest.raises(InvalidInputError, match="NaN"):
        metric(torch.full((2, 12), float("nan")))
    with pytest.raises(InvalidInputError, match="explainer"):
        metric("saliency")
    with pytest.raises(InvalidInputError, match="images"):
        Infidelity(model, x, noise=SquareRemoval(), n_samples=4)(torch.ones(2, 12))
    with pytest.raises(InvalidInputError):
        check_explanation(torch.ones(2, 3, 6, 6), torch.ones(2, 2, 6, 6))
    with pytest.raises(InvalidInputError):
        dot_perturbations(torch.ones(2, 3, 12), torch.ones(2, 11))


# ------------------------------------------------------------------------------ MaxSensitivity


def test_constant_explanation_has_zero_sensitivity():
    x = _inputs((3, 12))
    const = lambda inputs, target: torch.ones_like(inputs)  # noqa: E731
    scores = MaxSensitivity(_mlp(), x, radius=0.2, n_samples=10)(const)
    assert torch.equal(scores, torch.zeros(3, dtype=torch.float64))
    # a gradient of a linear model is constant too
    lin = nn.Linear(12, 3).double()
    assert MaxSensitivity(lin, x, radius=0.5, n_samples=10)(CaptumSaliency(lin)).abs().max() == 0


def test_identity_explanation_is_bounded_by_the_ball():
    """Phi(y) = y: SENS = ||y - x|| / ||x|| <= r sqrt(d) / ||x|| (L-inf ball), approached by the max."""
    x = _inputs((4, 12)) + 0.5
    ident = lambda inputs, target: inputs  # noqa: E731
    r = 0.1
    scores = MaxSensitivity(_mlp(), x, radius=r, n_samples=200)(ident)
    bound = r * math.sqrt(12) / x.norm(dim=1)
    assert (scores <= bound + 1e-12).all() and (scores >= 0.6 * bound).all()
    inf_norm = MaxSensitivity(_mlp(), x, radius=r, n_samples=200, norm="inf", relative=False)(ident)
    assert (inf_norm <= r + 1e-12).all() and (inf_norm > 0.95 * r).all()


def test_sensitivity_accepts_non_contiguous_explanations():
    """Explainers may return strided tensors (channels-last gradients of converted models)."""
    model = _conv()
    x = _inputs((2, 2, 6, 6))
    grad = _grad(model)

    def channels_last(inputs, target):
        return grad(inputs, target).permute(0, 2, 3, 1).contiguous().permute(0, 3, 1, 2)

    assert not channels_last(x, torch.tensor([0, 1])).is_contiguous()
    metric = MaxSensitivity(model, x, torch.tensor([0, 1]), radius=0.1, n_samples=6, seed=3)
    strided, plain = metric(channels_last), metric(grad)
    assert torch.allclose(strided, plain, rtol=1e-12, atol=0)


def test_same_draws_as_captum_sensitivity_max():
    model = _conv()
    x = _inputs((3, 2, 6, 6))
    target = torch.tensor([0, 3, 1])
    sal = CaptumSaliency(model)
    n = 12
    ours = MaxSensitivity(model, x, target, radius=0.1, n_samples=n, batch_size=3 * n, seed=5)(sal)
    _, y = UniformNoise(0.1).sample(x, n, torch.Generator().manual_seed(5), shared=True)
    y = y.reshape(-1, *x.shape[1:])

    def perturb_func(expanded, radius):
        assert expanded.shape == y.shape
        return y

    theirs = captum_sensitivity_max(sal.attribute, x, perturb_func, 0.1, n_perturb_samples=n, target=target)
    assert torch.allclose(ours, theirs.double(), rtol=1e-9, atol=1e-12)
    assert (ours > 0).all()


def test_sensitivity_detailed_and_seeded():
    model = _mlp()
    x = _inputs((3, 12))
    metric = MaxSensitivity(model, x, radius=0.3, n_samples=16, batch_size=5)
    out = metric(_grad(model), detailed=True)
    assert isinstance(out, SensitivityResult)
    assert out.scores.shape == (3,) and out.argmax.max() < 16
    assert torch.equal(metric(_grad(model)), out.scores)
    assert not torch.equal(MaxSensitivity(model, x, radius=0.3, n_samples=16, seed=3)(_grad(model)), out.scores)
    assert out.mean > 0
    # precomputed explanations of the clean inputs give the same numbers
    clean = _grad(model)(x, model(x).argmax(1))
    assert torch.equal(metric(_grad(model), explanations=clean), out.scores)


def test_sensitivity_bad_inputs():
    model = _mlp()
    x = _inputs((2, 12))
    with pytest.raises(InvalidInputError, match="n_samples"):
        MaxSensitivity(model, x, radius=0.1, n_samples=1)
    with pytest.raises(InvalidInputError, match="radius"):
        MaxSensitivity(model, x, radius=0.0)
    with pytest.raises(InvalidInputError, match="norm"):
        MaxSensitivity(model, x, norm="nuc")
    with pytest.raises(InvalidInputError, match="explainer"):
        MaxSensitivity(model, x)(42)
    with pytest.raises(InvalidInputError, match="explainer"):
        MaxSensitivity(model, x)(torch.ones(2, 12))  # explanations, not an explainer
    wrong = lambda inputs, target: inputs[:, :5] if inputs.shape[0] > 2 else inputs  # noqa: E731
    with pytest.raises(InvalidInputError, match="returned"):
        MaxSensitivity(model, x, radius=0.1, n_samples=4)(wrong)
    with pytest.raises(InvalidInputError, match="nn.Module"):
        MaxSensitivity(lambda i: i, x)  # a model is needed
    with pytest.raises(InvalidInputError, match="out of range"):
        MaxSensitivity(model, x, [0, 5])
