"""Bad inputs to the public API: each gets a specific InvalidInputError, nothing is coerced."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from torch import nn

import evax
from evax.attribution import METHODS
from evax.errors import InvalidInputError
from evax.metrics import Deletion


@pytest.fixture(scope="module")
def net() -> nn.Module:
    g = torch.Generator().manual_seed(0)
    m = nn.Sequential(nn.Flatten(), nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 3))
    for p in m.parameters():
        p.data = torch.randn(p.shape, generator=g)
    return m.eval()


X = torch.rand(2, 1, 4, 4, generator=torch.Generator().manual_seed(1))


def test_bound_on_empty_batch(net):
    with pytest.raises(InvalidInputError, match="empty batch"):
        evax.bound(net, evax.Ball(X[:0], eps=0.1), method="ibp")


def test_eva_on_empty_batch(net):
    with pytest.raises(InvalidInputError, match="empty batch"):
        evax.EVA(net, eps=0.1, method="ibp", groups=evax.groups.grid(2)).explain(X[:0])


@pytest.mark.parametrize("name", ["Saliency", "IntegratedGradients", "Occlusion", "RISE"])
def test_baselines_on_empty_batch(net, name):
    with pytest.raises(InvalidInputError, match="empty batch"):
        METHODS[name](net).attribute(X[:0])


@pytest.mark.parametrize("dtype", [torch.uint8, torch.int64])
def test_eva_integer_images(net, dtype):
    with pytest.raises(InvalidInputError, match="floating-point"):
        evax.EVA(net, eps=0.1, method="ibp", groups=evax.groups.grid(2)).explain((X * 255).to(dtype))


@pytest.mark.parametrize("name", ["IntegratedGradients", "Saliency", "SmoothGrad", "KernelSHAP", "RISE"])
def test_baselines_integer_images(net, name):
    with pytest.raises(InvalidInputError, match="floating-point"):
        METHODS[name](net).attribute((X * 255).to(torch.uint8))


def test_metric_integer_images(net):
    with pytest.raises(InvalidInputError, match="floating-point"):
        Deletion(net, (X * 255).to(torch.uint8))


def test_ball_integer_center():
    with pytest.raises(InvalidInputError, match="floating-point"):
        evax.Ball(torch.ones(1, 4, dtype=torch.int32), eps=0.1)


@pytest.mark.parametrize("eps", [True, False, torch.tensor([True, True])])
def test_bool_eps(eps):
    with pytest.raises(InvalidInputError, match="eps"):
        evax.Ball(X, eps=eps)


def test_bool_eps_in_eva(net):
    with pytest.raises(InvalidInputError, match="eps"):
        evax.EVA(net, eps=True)


def test_bool_batch_size_in_eva(net):
    with pytest.raises(InvalidInputError, match="batch_size"):
        evax.EVA(net, eps=0.1, batch_size=True)


def test_bool_batch_size_in_bound(net):
    with pytest.raises(InvalidInputError, match="batch_size"):
        evax.bound(net, evax.Ball(X, eps=0.1), method="ibp", batch_size=True)


def test_bool_batch_size_in_metric(net):
    with pytest.raises(InvalidInputError, match="batch_size"):
        Deletion(net, X, batch_size=True)


@pytest.mark.parametrize("target", [3.9, 1.0, True, [1, 2.5], torch.tensor([1.0, 2.0]), torch.tensor(True)])
def test_non_integer_targets(net, target):
    with pytest.raises(InvalidInputError, match="target"):
        METHODS["Saliency"](net).attribute(X, target=target)


def test_non_integer_target_in_eva(net):
    with pytest.raises(InvalidInputError, match="target"):
        evax.EVA(net, eps=0.1, method="ibp", groups=evax.groups.grid(2)).explain(X, target=1.5)


def test_non_integer_contrast_in_eva(net):
    with pytest.raises(InvalidInputError, match="contrast"):
        evax.EVA(net, eps=0.1, method="ibp", groups=evax.groups.grid(2)).explain(X, target=0, contrast=1.5)


def test_integer_targets_still_accepted(net):
    import numpy as np

    a = METHODS["Saliency"](net).attribute(X, target=1)
    b = METHODS["Saliency"](net).attribute(X, target=[1, 1])
    c = METHODS["Saliency"](net).attribute(X, target=torch.tensor([1, 1]))
    d = METHODS["Saliency"](net).attribute(X, target=np.int64(1))
    e = METHODS["Saliency"](net).attribute(X, target=np.array([1, 1]))
    assert torch.equal(a, b) and torch.equal(a, c) and torch.equal(a, d) and torch.equal(a, e)
    with pytest.raises(InvalidInputError, match="integer class indices"):
        METHODS["Saliency"](net).attribute(X, target=np.array([1.5, 1.0]))


def test_lazy_subpackages():
    code = (
        "import sys, evax\n"
        "assert 'evax.zoo' not in sys.modules\n"
        "m = evax.zoo.load_model('mnist-mlp')\n"
        "assert evax.metrics.Deletion and evax.attribution.METHODS\n"
        "model, info = evax.load_model('mnist-mlp')\n"
        "assert info.input_shape == (1, 28, 28)\n"
        "try:\n    evax.nope\nexcept AttributeError:\n    print('ok')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"
