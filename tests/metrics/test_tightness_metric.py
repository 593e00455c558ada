"""Tightness: exact AO of a linear model, ordering of the bound methods, EVA consistency, errors."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from evax.attribution.eva import EVA
from evax.errors import InvalidInputError
from evax.groups import grid
from evax.metrics import Tightness, TightnessResult

pytestmark = pytest.mark.usefixtures("one_thread")


def test_linear_model_is_exact():
    # AO(x, B_inf(eps)) = max_c' (z_c' - z_c) + eps * ||w_c' - w_c||_1 for a linear model
    g = torch.Generator().manual_seed(0)
    lin = nn.Linear(2 * 4 * 4, 3)
    model = nn.Sequential(nn.Flatten(), lin).eval()
    x = torch.rand(4, 2, 4, 4, generator=g)
    metric = Tightness(model, x, eps=0.1)
    w, z, t = lin.weight.detach(), model(x).detach(), metric.targets
    expected = torch.tensor(
        [max(float(z[i, c] - z[i, t[i]] + 0.1 * (w[c] - w[t[i]]).abs().sum()) for c in range(3) if c != t[i])
         for i in range(4)]
    )  # fmt: skip
    # IBP folds the margin specification into the last linear layer, so it is exact here too
    # (bounding each logit on its own would give the looser |w_c'| + |w_c| weights).
    for method in ("ibp", "forward", "backward", "ibp+forward+backward"):
        torch.testing.assert_close(metric(method), expected, rtol=1e-4, atol=1e-4)


def test_tighter_methods_score_lower_and_eva_agrees():
    g = torch.Generator().manual_seed(1)
    net = nn.Sequential(
        nn.Flatten(), nn.Linear(16, 20), nn.ReLU(), nn.Linear(20, 20), nn.ReLU(), nn.Linear(20, 4)
    )
    for p in net.parameters():
        p.data = torch.randn(p.shape, generator=g) * 0.5
    x = torch.rand(5, 1, 4, 4, generator=g)
    metric = Tightness(net, x, eps=0.2)
    ibp, combo = metric("ibp", detailed=True), metric("ibp+forward+backward", detailed=True)
    assert (combo.scores <= ibp.scores + 1e-5).all() and combo.mean < ibp.mean
    assert isinstance(combo, TightnessResult) and combo.method == "ibp+forward+backward"
    assert combo.certified_robust.dtype == torch.bool and torch.equal(combo.certified_robust, combo.scores < 0)
    eva = EVA(net, eps=0.2, method="ibp+forward+backward", groups=grid(2))
    torch.testing.assert_close(metric(eva), eva.explain(x).ao)  # the first box of EVA
    # the true AO lies below every bound: check against sampled perturbations
    delta = (torch.rand(200, 5, 1, 4, 4, generator=g) * 2 - 1) * 0.2
    with torch.no_grad():
        z = net((x + delta).flatten(0, 1)).view(200, 5, 4)
    zc = z.gather(2, metric.targets.view(1, 5, 1).expand(200, 5, 1))
    sampled = (
        (z - zc).scatter(2, metric.targets.view(1, 5, 1).expand(200, 5, 1), float("-inf")).amax(2).amax(0)
    )
    assert (sampled <= combo.scores + 1e-5).all()


def test_errors():
    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 3))
    x = torch.rand(2, 1, 2, 2)
    with pytest.raises(InvalidInputError, match="eps"):
        Tightness(model, x, eps=0.0)
    with pytest.raises(InvalidInputError, match="bound method"):
        Tightness(model, x)(3)
    with pytest.raises(InvalidInputError, match="another model"):
        Tightness(model, x)(EVA(nn.Sequential(nn.Flatten(), nn.Linear(4, 3)), eps=0.1, groups=grid(2)))
    with pytest.raises(InvalidInputError, match="out of range"):
        Tightness(model, x, targets=[0, 3])
    with pytest.raises(InvalidInputError, match="two outputs"):
        Tightness(nn.Sequential(nn.Flatten(), nn.Linear(4, 1)), x)
