"""Every bad input raises a clear, specific error and changes nothing."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import evax
from bounds.nets import make
from evax.errors import InvalidInputError, UnsupportedLayerError


def _net():
    return make("mlp_relu", seed=0)


def _x(n=2):
    return torch.rand(n, 2, 6, 6)


class Softsign(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(72, 4)
        self.act = nn.Softsign()

    def forward(self, x):
        return self.act(self.fc(x.flatten(1)))


class Branchy(nn.Module):
    def forward(self, x):
        if x.sum() > 0:
            return x.flatten(1)
        return -x.flatten(1)


def test_unsupported_layer_is_named():
    with pytest.raises(UnsupportedLayerError, match=r"'act'.*Softsign"):
        evax.bound(Softsign(), evax.Ball(_x(), 0.1))


def test_unsupported_function_is_named():
    class Mul(nn.Module):
        def forward(self, x):
            h = x.flatten(1)
            return h * h

    with pytest.raises(UnsupportedLayerError, match="mul"):
        evax.bound(Mul(), evax.Ball(_x(), 0.1))


def test_untraceable_model():
    with pytest.raises(UnsupportedLayerError, match="torch.fx"):
        evax.bound(Branchy(), evax.Ball(_x(), 0.1))


@pytest.mark.parametrize("eps", [0.0, -0.1, float("nan"), float("inf"), "abc"])
def test_bad_eps(eps):
    with pytest.raises(InvalidInputError, match="eps"):
        evax.Ball(_x(), eps)


def test_bad_eps_tensor_shape():
    with pytest.raises(InvalidInputError, match="eps"):
        evax.Ball(_x(3), torch.ones(2))


@pytest.mark.parametrize("p", [3, 0, "l7", None])
def test_bad_norm(p):
    with pytest.raises(InvalidInputError, match="p must be"):
        evax.Ball(_x(), 0.1, p=p)


def test_string_norms_accepted():
    assert evax.Ball(_x(), 0.1, p="inf").p == math.inf
    assert evax.Ball(_x(), 0.1, p=2).p == 2.0


@pytest.mark.parametrize("p", [1, 2])
def test_domain_needs_linf(p):
    with pytest.raises(InvalidInputError, match="domain"):
        evax.Ball(_x(), 0.1, p=p, domain=(0, 1))


def test_center_outside_domain():
    with pytest.raises(InvalidInputError, match="outside the domain"):
        evax.Ball(_x() + 2, 0.1, domain=(0, 1))


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_nonfinite_center(bad):
    x = _x()
    x[0, 0, 0, 0] = bad
    with pytest.raises(InvalidInputError, match="NaN or inf"):
        evax.Ball(x, 0.1)


def test_center_without_batch_dim():
    with pytest.raises(InvalidInputError, match="batch dimension"):
        evax.Ball(torch.rand(5), 0.1)


def test_integer_center():
    with pytest.raises(InvalidInputError, match="floating-point"):
        evax.Ball(torch.ones(2, 3, dtype=torch.long), 0.1)


def test_fixed_wrong_shape_and_dtype():
    with pytest.raises(InvalidInputError, match="broadcast"):
        evax.Ball(_x(), 0.1, fixed=torch.zeros(3, 3, dtype=torch.bool))
    with pytest.raises(InvalidInputError, match="bool"):
        evax.Ball(_x(), 0.1, fixed=torch.zeros(2, 2, 6, 6))


def test_center_shape_mismatch_with_model():
    with pytest.raises(InvalidInputError, match=r"per-sample shape \(3, 5, 5\)"):
        evax.bound(_net(), evax.Ball(torch.rand(2, 3, 5, 5), 0.1))


def test_spec_wrong_sizes():
    ball = evax.Ball(_x(), 0.1)
    with pytest.raises(InvalidInputError, match="n_out=5"):
        evax.bound(_net(), ball, spec=torch.ones(2, 3, 4))
    with pytest.raises(InvalidInputError, match="N=2"):
        evax.bound(_net(), ball, spec=torch.ones(3, 3, 5))
    with pytest.raises(InvalidInputError, match="NaN"):
        evax.bound(_net(), ball, spec=torch.full((2, 3, 5), float("nan")))
    with pytest.raises(InvalidInputError, match="no rows"):
        evax.bound(_net(), ball, spec=torch.ones(2, 0, 5))


@pytest.mark.parametrize("method", ["", "ibp+foo", "beta-crown", 3])
def test_unknown_method(method):
    with pytest.raises(InvalidInputError, match="method"):
        evax.bound(_net(), evax.Ball(_x(), 0.1), method)


def test_bad_batch_size():
    with pytest.raises(InvalidInputError, match="batch_size"):
        evax.bound(_net(), evax.Ball(_x(), 0.1), batch_size=0)


def test_not_a_module_or_ball():
    with pytest.raises(InvalidInputError, match="Module"):
        evax.bound(lambda x: x, evax.Ball(_x(), 0.1))
    with pytest.raises(InvalidInputError, match="Ball"):
        evax.bound(_net(), _x())


def test_training_mode_restored_and_eval_used():
    net = make("mlp_mixed", seed=0)  # has BatchNorm and Dropout
    net.train()
    x = _x(3)
    ball = evax.Ball(x, 1e-6)
    b = evax.bound(net, ball, "ibp+backward")
    assert net.training and all(m.training for m in net.modules())
    net.eval()
    with torch.no_grad():
        y = net(x)
    torch.testing.assert_close(b.lower, y, atol=1e-3, rtol=1e-3)


def test_inputs_and_parameters_unchanged():
    net = make("conv_overlap_pool", seed=0)
    x = _x(3)
    fixed = torch.rand(3, 2, 6, 6) < 0.5
    spec = torch.randn(3, 2, 5)
    copies = [t.clone() for t in (x, fixed, spec)]
    params = {k: v.clone() for k, v in net.state_dict().items()}
    evax.bound(net, evax.Ball(x, 0.1, fixed=fixed, domain=(0, 1)), spec=spec)
    for a, b in zip((x, fixed, spec), copies, strict=True):
        assert torch.equal(a, b)
    for k, v in net.state_dict().items():
        assert torch.equal(v, params[k]), k


def test_cache_sees_weight_updates():
    net = _net()
    ball = evax.Ball(_x(), 1e-6)
    before = evax.bound(net, ball, "ibp").lower
    with torch.no_grad():
        net[-1].bias.add_(1.0)
    after = evax.bound(net, ball, "ibp").lower
    torch.testing.assert_close(after, before + 1.0, atol=1e-4, rtol=1e-4)


def test_batch_size_chunking_gives_same_result():
    net = make("conv_maxpool", seed=3)
    ball = evax.Ball(_x(7), 0.05, fixed=torch.rand(7, 2, 6, 6) < 0.3, domain=(0, 1))
    full = evax.bound(net, ball, "ibp+forward+backward")
    chunked = evax.bound(net, ball, "ibp+forward+backward", batch_size=3)
    torch.testing.assert_close(full.lower, chunked.lower)
    torch.testing.assert_close(full.upper, chunked.upper)
