"""Baselines (Captum adapters) against their closed forms on tiny linear / piecewise-linear models,
the METHODS registry, determinism, and the errors of methods that do not apply."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from evax.attribution import METHODS
from evax.attribution.captum_methods import (
    GradCAM,
    GradientInput,
    GuidedBackprop,
    IntegratedGradients,
    KernelSHAP,
    Occlusion,
    Saliency,
    SmoothGrad,
    VarGrad,
)
from evax.errors import InvalidInputError, NotApplicableError
from evax.groups import grid

pytest.importorskip("captum.attr")


pytestmark = pytest.mark.usefixtures("one_thread")


def _linear(c=2, h=7, w=7, k=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    lin = nn.Linear(c * h * w, k)
    lin.weight.data = torch.randn(k, c * h * w, generator=g)
    lin.bias.data = torch.randn(k, generator=g)
    return nn.Sequential(nn.Flatten(), lin).eval(), lin


def _x(n=2, c=2, h=7, w=7, seed=1):
    return torch.rand(n, c, h, w, generator=torch.Generator().manual_seed(seed))


def _w(lin, target, shape):
    return lin.weight.detach()[target].view(target.shape[0], *shape)


# -- registry ---------------------------------------------------------------------------------------
def test_registry_lists_every_method():
    needed = {
        "Saliency", "GradientInput", "IntegratedGradients", "SmoothGrad", "VarGrad", "Occlusion",
        "GradCAM", "GradCAMPlusPlus", "GuidedBackprop", "KernelSHAP", "RISE", "GreedyAS", "GreedyAO", "EVA",
    }  # fmt: skip
    assert needed <= set(METHODS)
    for name, cls in METHODS.items():
        assert isinstance(cls, type) and hasattr(cls, "attribute"), name


# -- closed forms on a linear model f_c(x) = w_c . x + b_c ------------------------------------------
def test_saliency_is_abs_weight():
    model, lin = _linear()
    x, t = _x(), torch.tensor([0, 2])
    w = _w(lin, t, (2, 7, 7))
    torch.testing.assert_close(Saliency(model).attribute_raw(x, t), w.abs())
    torch.testing.assert_close(Saliency(model).attribute(x, t), w.abs().amax(1))  # max-abs over C


def test_gradient_input_and_ig_are_x_times_weight():
    model, lin = _linear()
    x, t = _x(), torch.tensor([1, 0])
    expected = x * _w(lin, t, (2, 7, 7))
    torch.testing.assert_close(GradientInput(model).attribute_raw(x, t), expected)
    torch.testing.assert_close(IntegratedGradients(model).attribute_raw(x, t), expected, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(IntegratedGradients(model).attribute(x, t), expected.sum(1), rtol=1e-4, atol=1e-5)
    # completeness: sum of IG = f(x) - f(0)
    ig = IntegratedGradients(model, n_steps=10).attribute_raw(x, t)
    with torch.no_grad():
        gap = model(x).gather(1, t.view(-1, 1))[:, 0] - model(torch.zeros_like(x)).gather(1, t.view(-1, 1))[:, 0]
    torch.testing.assert_close(ig.flatten(1).sum(1), gap, rtol=1e-5, atol=1e-4)


def test_smoothgrad_is_weight_and_vargrad_zero_on_linear():
    model, lin = _linear()
    x, t = _x(), torch.tensor([2, 1])
    w = _w(lin, t, (2, 7, 7))
    torch.testing.assert_close(SmoothGrad(model, n_samples=8).attribute_raw(x, t), w, rtol=1e-5, atol=1e-5)
    assert VarGrad(model, n_samples=8).attribute_raw(x, t).abs().max() < 1e-5
    assert SmoothGrad(model).sigma == pytest.approx(0.2)


def test_occlusion_is_per_patch_w_dot_x():
    model, lin = _linear(h=14, w=14)
    x, t = _x(h=14, w=14), torch.tensor([0, 1])
    occ = Occlusion(model)
    assert occ.windows(x) == ((2, 2, 2), (2, 2, 2))  # patch = stride = 1/7 of the side
    contrib = (x * _w(lin, t, (2, 14, 14))).sum(1, keepdim=True)  # (N, 1, H, W) per pixel
    per_patch = F.avg_pool2d(contrib, 2) * 4  # sum of w.x over each 2x2 patch
    expected = F.interpolate(per_patch, scale_factor=2, mode="nearest")
    raw = occ.attribute_raw(x, t)
    torch.testing.assert_close(raw, expected.expand(-1, 2, -1, -1), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(occ.attribute(x, t), 2 * expected[:, 0], rtol=1e-4, atol=1e-5)


def test_occlusion_flat_inputs():
    g = torch.Generator().manual_seed(0)
    lin = nn.Linear(14, 2)
    x = torch.rand(3, 14, generator=g)
    raw = Occlusion(lin).attribute(x, 0)  # windows of round(14 / 7) = 2 features
    contrib = (x * lin.weight.detach()[0]).view(3, 7, 2).sum(2)
    torch.testing.assert_close(raw, contrib.repeat_interleave(2, dim=1), rtol=1e-4, atol=1e-5)


def test_kernelshap_on_linear_is_group_contribution():
    model, lin = _linear(c=1, h=4, w=4, seed=3)
    x, t = _x(c=1, h=4, w=4), torch.tensor([0, 2])
    ks = KernelSHAP(model, groups=grid(2), n_samples=200, baseline=0.0)
    masks = grid(2)(x)[0].flatten(1).float()  # (4, 16)
    contrib = (x.flatten(1) * lin.weight.detach()[t]) @ masks.T  # (N, 4) sum of w.x per group
    torch.testing.assert_close(ks.group_scores(x, t), contrib, rtol=1e-3, atol=1e-3)
    shap_map = ks.attribute(x, t)
    assert shap_map.shape == (2, 4, 4)
    torch.testing.assert_close(shap_map[:, 0, 0], contrib[:, 0], rtol=1e-3, atol=1e-3)
    flat = nn.Linear(6, 2)  # flat inputs: every feature is a variable (the default grid is ignored)
    xf = torch.rand(2, 6, generator=torch.Generator().manual_seed(0))
    expected = xf * flat.weight.detach()[1]
    torch.testing.assert_close(KernelSHAP(flat, n_samples=64).attribute(xf, 1), expected, rtol=1e-3, atol=1e-4)


def test_guided_backprop_closed_form():
    g = torch.Generator().manual_seed(4)
    l1, l2 = nn.Linear(12, 6), nn.Linear(6, 3)
    for p in (*l1.parameters(), *l2.parameters()):
        p.data = torch.randn(p.shape, generator=g)
    model = nn.Sequential(l1, nn.ReLU(), l2).eval()
    x = torch.randn(4, 12, generator=g)
    t = torch.tensor([0, 1, 2, 0])
    active = (l1(x) > 0).float().detach()
    # the gradient reaching the ReLU is w2_c; guided: keep only its positive part, and the active units
    back = torch.relu(l2.weight.detach()[t]) * active
    torch.testing.assert_close(GuidedBackprop(model).attribute(x, t), back @ l1.weight.detach())
    with pytest.raises(NotApplicableError, match="ReLU"):
        GuidedBackprop(nn.Linear(12, 3)).attribute(x, 0)


# -- Grad-CAM --------------------------------------------------------------------------------------------
def _cnn(seed=0):
    g = torch.Generator().manual_seed(seed)
    net = nn.Sequential(nn.Conv2d(2, 3, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(3 * 6 * 6, 4))
    for p in net.parameters():
        p.data = torch.randn(p.shape, generator=g)
    return net.eval()


def test_gradcam_closed_form_and_layer_choice():
    net = _cnn()
    x = torch.rand(2, 2, 6, 6, generator=torch.Generator().manual_seed(0))
    t = torch.tensor([1, 3])
    cam = GradCAM(net)
    assert cam.layer is net[1]  # the last conv's activation
    acts = net[1](net[0](x)).detach()  # (N, 3, 6, 6)
    alpha = net[3].weight.detach()[t].view(2, 3, 6, 6).mean((2, 3))  # mean of df/dA^k
    expected = torch.relu((alpha[:, :, None, None] * acts).sum(1))
    torch.testing.assert_close(cam.attribute(x, t), expected, rtol=1e-5, atol=1e-5)
    assert cam.attribute_raw(x, t).shape == (2, 2, 6, 6)
    assert GradCAM(net, layer="0").layer is net[0]


def test_cam_methods_not_applicable_to_dense_nets():
    model, _ = _linear()
    for name in ("GradCAM", "GradCAMPlusPlus"):
        with pytest.raises(NotApplicableError, match="dense"):
            METHODS[name](model)
    with pytest.raises(InvalidInputError, match="no layer"):
        GradCAM(_cnn(), layer="nope")


# -- common behaviour -------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["Saliency", "GradientInput", "IntegratedGradients", "SmoothGrad", "VarGrad",
                                  "Occlusion", "GradCAM", "GuidedBackprop", "KernelSHAP"])  # fmt: skip
def test_shapes_determinism_model_mode_inputs(name):
    net = _cnn().train()
    x = torch.rand(2, 2, 6, 6, generator=torch.Generator().manual_seed(1))
    x_copy = x.clone()
    kw = {"n_samples": 10} if name in ("SmoothGrad", "VarGrad") else {}
    if name == "KernelSHAP":
        kw = {"groups": grid(3), "n_samples": 30}
    method = METHODS[name](net, **kw)
    state = torch.get_rng_state()
    a = method.attribute(x)
    assert a.shape == (2, 6, 6) and torch.isfinite(a).all()
    assert method.attribute_raw(x).shape == (2, 2, 6, 6)
    torch.testing.assert_close(method.attribute(x), a)  # same seed, same result
    assert net.training and torch.equal(x, x_copy)
    assert torch.equal(torch.get_rng_state(), state)  # the global RNG is untouched
    # target=None is the predicted class
    with torch.no_grad():
        pred = net.eval()(x).argmax(1)
    net.train()
    torch.testing.assert_close(method.attribute(x, pred), a)


def test_smoothgrad_seed_changes_noise():
    net = _cnn()
    x = torch.rand(1, 2, 6, 6, generator=torch.Generator().manual_seed(1))
    a = SmoothGrad(net, n_samples=5, seed=0).attribute(x)
    assert not torch.allclose(a, SmoothGrad(net, n_samples=5, seed=1).attribute(x))


def test_bad_arguments():
    model, _ = _linear()
    x = _x()
    with pytest.raises(InvalidInputError):
        IntegratedGradients(model, n_steps=1)
    with pytest.raises(InvalidInputError):
        SmoothGrad(model, n_samples=0)
    with pytest.raises(InvalidInputError):
        VarGrad(model, noise_level=0.0)
    with pytest.raises(InvalidInputError, match="NaN"):
        Saliency(model).attribute(torch.full_like(x, float("nan")))
    with pytest.raises(InvalidInputError, match="target"):
        Saliency(model).attribute(x, [0, 1, 2])
    one = Saliency(model).attribute(x, torch.tensor([1]))  # one class for every input
    assert torch.equal(one, Saliency(model).attribute(x, 1))
    with pytest.raises(InvalidInputError, match="out of range"):
        GradientInput(model).attribute(x, 7)
    with pytest.raises(InvalidInputError):
        Occlusion(model, patch=0).attribute(x)


@pytest.mark.slow
def test_every_registered_method_runs_with_its_defaults_or_says_not_applicable():
    # what the benchmark does: every METHODS entry on a dense net (CAM methods: n/a)
    g = torch.Generator().manual_seed(0)
    net = nn.Sequential(nn.Flatten(), nn.Linear(144, 16), nn.ReLU(), nn.Linear(16, 3))
    for p in net.parameters():
        p.data = torch.randn(p.shape, generator=g) * 0.3
    net.eval()
    x = torch.rand(1, 1, 12, 12, generator=g)
    for name, cls in METHODS.items():
        if name in ("GradCAM", "GradCAMPlusPlus"):
            with pytest.raises(NotApplicableError):
                cls(net).attribute(x)
            continue
        a = cls(net).attribute(x)
        assert a.shape == (1, 12, 12) and torch.isfinite(a).all(), name
