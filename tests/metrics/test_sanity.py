"""Model-randomisation sanity check (Sec. 5, Table 2)."""

from __future__ import annotations

import pytest
import torch
from captum.attr import Saliency as CaptumSaliency
from scipy.stats import spearmanr
from torch import nn

from evax.errors import InvalidInputError
from evax.metrics.sanity import RandomizationSanity, SanityResult, spearman


def _net(seed=0):
    gen = torch.Generator().manual_seed(seed)
    net = nn.Sequential(nn.Flatten(), nn.Linear(16, 12), nn.ReLU(), nn.Linear(12, 3))
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn(p.shape, generator=gen))
    return net.eval()


def _x(n=4):
    return torch.rand(n, 1, 4, 4, generator=torch.Generator().manual_seed(1))


def test_spearman_matches_scipy():
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(3, 20, generator=gen)
    b = a + 0.7 * torch.randn(3, 20, generator=gen)
    b[0, :5] = b[0, 0]  # ties
    ours = spearman(a, b)
    for i in range(3):
        assert ours[i].item() == pytest.approx(spearmanr(a[i].numpy(), b[i].numpy()).statistic, abs=1e-12)
    assert torch.isnan(spearman(torch.ones(1, 5), torch.randn(1, 5)))[0]
    with pytest.raises(InvalidInputError, match="shapes"):
        spearman(torch.ones(2, 3), torch.ones(2, 4))


def test_gradient_changes_an_input_only_explanation_does_not():
    model = _net()
    x = _x()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    sal = CaptumSaliency(model)
    check = RandomizationSanity(model, x, layer="last", seed=0)
    assert check.layers[0][0] == "3"

    res = check(lambda i, t: sal.attribute(i, target=t, abs=False), detailed=True)
    assert isinstance(res, SanityResult)
    assert res.scores.shape == (4,) and res.scores_abs.shape == (4,)
    assert res.original.shape == res.randomized.shape == x.shape
    assert (res.scores < 0.9).all()  # the gradient follows the new last layer: passes
    assert res.mean == res.scores.mean() and res.mean_abs == res.scores_abs.mean()
    # an explanation blind to the model (x itself) is unchanged: correlation 1, fails the check
    blind = check(lambda i, t: i.clone())
    assert torch.allclose(blind, torch.ones(4, dtype=torch.float64))
    # the model is restored exactly; the check is deterministic
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())
    again = check(lambda i, t: sal.attribute(i, target=t, abs=False))
    assert torch.equal(again, res.scores)
    # Captum explainers as objects and as bound methods: the same numbers (abs=True by default)
    assert torch.equal(check(sal), check(sal.attribute))
    # the original model's prediction is the explained class in both runs
    seen = []
    check(lambda i, t: seen.append(t.clone()) or i.clone())
    assert torch.equal(seen[0], seen[1]) and torch.equal(seen[0], model(x).argmax(1))


def test_named_layers_and_restoration_on_error():
    model = _net().train()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    check = RandomizationSanity(model, _x(), layer=["1", model[3]])
    assert [n for n, _ in check.layers] == ["1", "3"]
    calls = []

    def failing(inputs, target):
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("boom")
        return inputs.clone()

    with pytest.raises(RuntimeError, match="boom"):
        check(failing)
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())
    assert model.training


def test_sanity_bad_inputs():
    model = _net()
    with pytest.raises(InvalidInputError, match="no layer named"):
        RandomizationSanity(model, _x(), layer="fc9")
    with pytest.raises(InvalidInputError, match="no parameters"):
        RandomizationSanity(model, _x(), layer="2")
    with pytest.raises(InvalidInputError, match="nn.Module"):
        RandomizationSanity("model", _x())
    with pytest.raises(InvalidInputError, match="out of range"):
        RandomizationSanity(model, _x(), targets=3)
    check = RandomizationSanity(model, _x())
    shapes = iter([(4, 16), (4, 8)])
    with pytest.raises(InvalidInputError, match="after randomisation"):
        check(lambda i, t: torch.ones(next(shapes)))
    with pytest.raises(InvalidInputError, match="explainer"):
        check(torch.ones(4, 16))
