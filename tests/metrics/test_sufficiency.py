"""Metrics of sufficient explanations, and their figure."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import evax
from evax.errors import InvalidInputError
from evax.metrics.fidelity import Deletion
from evax.metrics.sufficiency import sufficiency_scores

pytestmark = pytest.mark.usefixtures("one_thread")


def _net() -> nn.Module:
    gen = torch.Generator().manual_seed(0)
    a, b = nn.Linear(36, 8), nn.Linear(8, 3)
    with torch.no_grad():
        for layer in (a, b):
            layer.weight.copy_(torch.randn(layer.weight.shape, generator=gen) / math.sqrt(layer.in_features))
            layer.bias.zero_()
    return nn.Sequential(nn.Flatten(), a, nn.ReLU(), b).eval()


@pytest.mark.parametrize("groups", [None, evax.groups.grid(3)])
def test_sufficiency_scores(groups):
    model = _net()
    x = torch.rand(3, 1, 6, 6, generator=torch.Generator().manual_seed(1))
    e = evax.Sufficient(model, 0.15, groups=groups, order="verix", domain=(0, 1)).explain(x)
    out = sufficiency_scores(model, x, e, steps=None)
    g = e.n_cells
    assert torch.equal(out["size"], e.size)
    assert out["mean_fraction"] == pytest.approx(float(e.size.double().mean()) / g)
    assert out["certified_rate"] == 1.0
    # the order's Deletion equals the metric run directly on the order's scores
    scores = e.scores if groups is not None else e.scores.view(3, 6, 6)
    masks = None if groups is None else e.masks.view(1, g, 6, 6)
    direct = Deletion(model, x, e.target, groups=masks, steps=None, progress=False)(scores)
    assert torch.allclose(out["deletion"], direct)
    assert ((out["insertion"] >= 0) & (out["insertion"] <= 1)).all()
    with pytest.raises(InvalidInputError, match="inputs"):
        sufficiency_scores(model, x[:2], e)


def test_sufficient_figure(tmp_path):
    from evax.viz import sufficient_figure

    model = _net()
    x = torch.rand(2, 1, 6, 6, generator=torch.Generator().manual_seed(2))
    e = evax.Sufficient(model, 0.15, groups=evax.groups.grid(3), order="verix", domain=(0, 1)).explain(x)
    eva = evax.EVA(model, 0.15, method="backward", groups=evax.groups.grid(3), domain=(0, 1)).attribute(x)
    e_eva = evax.Sufficient(model, 0.15, method="backward", groups=evax.groups.grid(3), order="eva",
                            domain=(0, 1)).explain(x)
    assert torch.allclose(e_eva.order_map(), eva, atol=1e-6)  # the order's map is the EVA map
    path = tmp_path / "sufficient.png"
    fig = sufficient_figure(x, e, eva_maps=eva, path=path)
    assert path.stat().st_size > 1000
    assert len(fig.axes) >= 6  # 2 rows x 3 columns (+ colorbars)
