"""Empirical and hybrid EVA: lower estimates of the verified AO, splits, errors."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import evax
from evax.attribution.empirical import EmpiricalEVA, HybridEVA, split_tail
from evax.errors import InvalidInputError, UnsupportedLayerError
from evax.groups import grid


def test_empirical_ao_never_exceeds_verified_bound_on_mnist_mlp():
    from evax.zoo import default_samples, load_model

    model = load_model("mnist-mlp")
    x = default_samples().images[:3]
    for eps in (0.05, 0.5):
        emp = EmpiricalEVA(model, eps=eps, n_samples=100, domain=(0, 1)).explain(x)
        ver = evax.EVA(model, eps=eps, method="backward", domain=(0, 1)).explain(x)
        assert (emp.ao <= ver.ao + 1e-4).all()
        assert (emp.ao_fixed <= ver.ao_fixed + 1e-4).all()
        assert (emp.scores >= 0).all()


def test_empirical_is_seeded():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(72, 10), nn.ReLU(), nn.Linear(10, 3)).eval()
    x = torch.rand(2, 2, 6, 6)
    a = EmpiricalEVA(model, eps=0.2, n_samples=50, groups=grid(3), seed=3).explain(x)
    b = EmpiricalEVA(model, eps=0.2, n_samples=50, groups=grid(3), seed=3, batch_size=37).explain(x)
    torch.testing.assert_close(a.scores, b.scores)
    c = EmpiricalEVA(model, eps=0.2, n_samples=50, groups=grid(3), seed=4).explain(x)
    assert not torch.equal(a.ao, c.ao)


def _mlp():
    torch.manual_seed(1)
    return nn.Sequential(
        nn.Flatten(), nn.Linear(72, 16), nn.ReLU(), nn.Linear(16, 12), nn.ReLU(), nn.Linear(12, 4)
    ).eval()


def test_hybrid_with_ibp_is_below_verified_ibp():
    model = _mlp()
    x = torch.rand(3, 2, 6, 6)
    hyb = HybridEVA(model, split="2", eps=0.1, n_samples=200, method="ibp", groups=grid(3)).explain(x)
    ver = evax.EVA(model, eps=0.1, method="ibp", groups=grid(3)).explain(x)
    # IBP is monotone in the input box, and the sampled activation box lies inside IBP's box
    assert (hyb.ao <= ver.ao + 1e-4).all()
    assert (hyb.scores >= 0).all() and hyb.certified_robust is None


def test_split_tail_reproduces_the_network():
    model = _mlp()
    tail = split_tail(model, "2")
    x = torch.rand(5, 2, 6, 6)
    with torch.no_grad():
        h = model[2](model[1](model[0](x)))
        torch.testing.assert_close(tail(h), model(x))


def test_split_errors():
    model = _mlp()
    with pytest.raises(InvalidInputError, match="valid names"):
        HybridEVA(model, split="nope")

    class Skip(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Linear(4, 4)
            self.b = nn.Linear(4, 2)

        def forward(self, x):
            h = self.a(x)
            return self.b(h + x)

    with pytest.raises(UnsupportedLayerError, match="before 'a'"):
        split_tail(Skip(), "a")
    with pytest.raises(InvalidInputError, match="n_samples"):
        EmpiricalEVA(model, n_samples=0)


@pytest.mark.slow
def test_hybrid_on_efficientnet_penultimate_layer():
    from evax.errors import DataSourceError
    from evax.zoo import load_dataset, load_model

    try:
        model = load_model("imagenet-efficientnet-lite0", progress=False)
        data = load_dataset("imagenet-samples")
    except DataSourceError as exc:
        pytest.skip(f"EfficientNet weights or ImageNet samples unreachable: {exc}")
    x = data.images[:1]
    ex = HybridEVA(model, split="flatten", eps=0.05, n_samples=4, groups=grid(4), domain=(0, 1)).explain(x)
    assert ex.scores.shape == (1, 16) and (ex.scores >= 0).all() and ex.scores.max() > 0
    assert torch.isfinite(ex.ao).all()
