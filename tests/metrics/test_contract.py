"""Every metric of :mod:`evax.metrics` follows the one contract (see :mod:`evax.metrics.base`):
``Cls(model, inputs, targets=None, **hyper)``; ``metric(thing)`` -> ``(N,)``;
``metric(thing, detailed=True)`` -> a frozen :class:`MetricResult` whose ``scores`` are the
default return and ``mean`` their mean; bad input -> :class:`InvalidInputError`, nothing changed."""

from __future__ import annotations

import dataclasses
import inspect

import pytest
import torch
from captum.attr import Saliency as CaptumSaliency
from torch import nn

import evax.metrics as metrics_mod
from evax.attribution.eva import EVA
from evax.errors import InvalidInputError
from evax.groups import grid
from evax.metrics import ExplainerMetric, ExplanationMetric, Metric, MetricResult

pytestmark = pytest.mark.usefixtures("one_thread")

N = 3


def _model() -> nn.Module:
    gen = torch.Generator().manual_seed(0)
    net = nn.Sequential(nn.Flatten(), nn.Linear(16, 10), nn.ReLU(), nn.Linear(10, 3))
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn(p.shape, generator=gen))
    return net.eval()


def _inputs() -> torch.Tensor:
    return torch.rand(N, 1, 4, 4, generator=torch.Generator().manual_seed(1))


def _explainer(model: nn.Module):
    sal = CaptumSaliency(model)
    return lambda x, target: sal.attribute(x, target=target, abs=False)


# the cheap settings of each metric and what it scores: "explanations" (a tensor) or an explainer
HYPER = {
    "Deletion": {"steps": 4},
    "Insertion": {"steps": 4},
    "MuFidelity": {"n_subsets": 8},
    "RobustnessSr": {"steps": 5, "max_iter": 4, "tol": 0.1, "fractions": [0.5, 1.0], "groups": grid(2)},
    "Infidelity": {"n_samples": 8},
    "MaxSensitivity": {"n_samples": 3, "radius": 0.1},
    "RandomizationSanity": {},
    "Tightness": {"eps": 0.05},
}


def _metric_classes() -> list[type]:
    return [
        obj
        for _, obj in vars(metrics_mod).items()
        if inspect.isclass(obj) and issubclass(obj, Metric) and not inspect.isabstract(obj)
    ]


def _thing(name: str, model: nn.Module, x: torch.Tensor):
    """What the metric of ``name`` scores, for ``model`` and ``x``."""
    if name == "Tightness":
        return EVA(model, eps=0.05, method="ibp", groups=grid(2))
    explainer = _explainer(model)
    if name in ("MaxSensitivity", "RandomizationSanity"):
        return explainer
    return explainer(x, model(x).argmax(1)).detach()


def test_every_metric_is_covered_here():
    assert {c.__name__ for c in _metric_classes()} == set(HYPER)


@pytest.mark.parametrize("name", sorted(HYPER))
def test_contract(name):
    cls = getattr(metrics_mod, name)
    params = list(inspect.signature(cls).parameters.values())
    assert [p.name for p in params[:3]] == ["model", "inputs", "targets"] and params[2].default is None
    assert issubclass(cls, ExplanationMetric) != issubclass(cls, ExplainerMetric)
    model, x = _model(), _inputs()
    metric = cls(model, x, None, **HYPER[name])
    assert torch.equal(metric.targets, model(x).argmax(1))
    thing = _thing(name, model, x)
    scores = metric(thing)
    assert isinstance(scores, torch.Tensor) and scores.shape == (N,)
    result = metric(thing, detailed=True)
    assert isinstance(result, MetricResult) and dataclasses.is_dataclass(result)
    assert type(result) is not MetricResult  # each family has its result class, with its details
    torch.testing.assert_close(result.scores, scores, rtol=0, atol=0)
    torch.testing.assert_close(result.mean, scores.nanmean(), rtol=0, atol=0)
    with pytest.raises(dataclasses.FrozenInstanceError):
        result.scores = scores  # type: ignore[misc]
    # explicit targets = the predicted ones give the same numbers
    explicit = cls(model, x, model(x).argmax(1).tolist(), **HYPER[name])
    torch.testing.assert_close(explicit(thing), scores, rtol=0, atol=0)


@pytest.mark.parametrize("name", sorted(n for n in HYPER if n != "Tightness"))
def test_captum_explainers_are_accepted(name):
    """A Captum attribution object and its bound ``attribute`` method are explainers everywhere."""
    model, x = _model(), _inputs()
    metric = getattr(metrics_mod, name)(model, x, **HYPER[name])
    sal = CaptumSaliency(model)
    from_object, from_method = metric(sal), metric(sal.attribute)
    torch.testing.assert_close(from_object, from_method, rtol=0, atol=0, equal_nan=True)
    if issubclass(type(metric), ExplanationMetric):  # the explainer is called once on the inputs
        explained = sal.attribute(x, target=metric.targets)  # Captum's default abs=True
        torch.testing.assert_close(metric(explained), from_object, rtol=0, atol=0)


def _bad_thing(name: str):
    if issubclass(getattr(metrics_mod, name), ExplanationMetric):
        return torch.ones(N, 5)  # the wrong shape
    return torch.ones(N, 1, 4, 4)  # explanations where an explainer is expected


@pytest.mark.parametrize("name", sorted(HYPER))
def test_bad_input_is_refused_and_changes_nothing(name):
    cls = getattr(metrics_mod, name)
    model, x = _model().train(), _inputs()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    x_copy = x.clone()
    with pytest.raises(InvalidInputError, match="out of range"):
        cls(model, x, [0, 1, 3], **HYPER[name])
    with pytest.raises(InvalidInputError):
        cls(model, x, [0, 1], **HYPER[name])  # one target too few
    metric = cls(model, x, **HYPER[name])
    before = metric(_thing(name, model, x))
    with pytest.raises(InvalidInputError):
        metric(_bad_thing(name))
    with pytest.raises(InvalidInputError):
        metric(42)
    assert model.training and all(torch.equal(v, state[k]) for k, v in model.state_dict().items())
    assert torch.equal(x, x_copy) and torch.equal(metric.inputs, x_copy)
    torch.testing.assert_close(metric(_thing(name, model, x)), before, rtol=0, atol=0, equal_nan=True)
