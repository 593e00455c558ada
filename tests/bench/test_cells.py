"""evax.bench cells and components: defects of issue 17, each pinned by a test.

* the tightness cell takes the number of classes from the model (it assumed 10);
* the infidelity cell reuses the cached ``"raw"`` explanation it checks for (it checked ``"map"``);
* a broken evax module stops the run instead of showing up as "unavailable" cells;
* the bench's IG is the library's (with its trapezoid correction), local and global.
"""

from __future__ import annotations

import importlib

import pytest
import torch
from torch import nn

from evax.attribution import IntegratedGradients
from evax.bench import cells as cells_mod
from evax.bench import components, protocols
from evax.bench.components import ComponentBroken, ComponentUnavailable
from evax.bounds.api import bound
from evax.core.specs import margin_spec
from evax.errors import MissingDependencyError
from evax.perturbation import Ball


def _linear(k: int = 3, seed: int = 0) -> nn.Module:
    g = torch.Generator().manual_seed(seed)
    lin = nn.Linear(16, k)
    with torch.no_grad():
        lin.weight.copy_(torch.randn(k, 16, generator=g))
        lin.bias.copy_(torch.randn(k, generator=g))
    return nn.Sequential(nn.Flatten(), lin).eval()


@pytest.fixture
def three_classes(monkeypatch):
    """Cells on a 3-class linear model and one (1, 1, 4, 4) image."""
    model = _linear()
    x = torch.rand(1, 1, 4, 4, generator=torch.Generator().manual_seed(1))
    target = model(x).argmax(1)
    monkeypatch.setattr(cells_mod, "_model", lambda cfg: model)
    monkeypatch.setattr(cells_mod, "_image", lambda cell, m: (x.clone(), target, 0))
    return model, x, target


def test_tightness_cell_takes_the_number_of_classes_from_the_model(three_classes):
    model, x, target = three_classes
    cell = cells_mod.Cell("t", "s", "ibp", 0, "tightness", {"eps": 0.1, "bound_method": "ibp", "metrics": {}})
    rec = cells_mod.compute_cell(cell)
    assert rec["errors"] == {}
    expected = bound(model, Ball(x, 0.1), "ibp", margin_spec(target, 3)).upper.amax(dim=1)[0]
    assert rec["values"]["tightness"] == pytest.approx(float(expected))


def _infd_cell(prior: dict | None = None) -> cells_mod.Cell:
    config = {
        "method": {"cls": "Saliency"},
        "metrics": {"infd": {"perturbation": {"cls": "GaussianNoise", "kwargs": {"sigma": 0.1}}, "n_samples": 16}},
        "seed": 0,
    }
    return cells_mod.Cell("t", "s", "Saliency", 0, "infidelity", config, prior=prior or {})


def test_infidelity_cell_reuses_the_cached_raw_explanation(three_classes):
    fresh = cells_mod.compute_cell(_infd_cell())
    assert fresh["errors"] == {} and set(fresh["tensors"]) == {"raw", "map"}
    # a record with a map but no raw explanation (e.g. written by another kind of cell)
    only_map = cells_mod.compute_cell(_infd_cell({"tensors": {"map": fresh["tensors"]["map"]}}))
    assert only_map["errors"] == {}
    assert only_map["values"]["infd"] == pytest.approx(fresh["values"]["infd"])
    # the cached raw explanation is what gets scored (not recomputed): a doubled one gives the
    # same normalised INFD (scale invariance) and no time is measured
    raw = {"raw": 2 * fresh["tensors"]["raw"], "map": fresh["tensors"]["map"]}
    cached = cells_mod.compute_cell(_infd_cell({"tensors": raw}))
    assert cached["errors"] == {} and "seconds" not in cached["values"]
    assert cached["values"]["infd"] == pytest.approx(fresh["values"]["infd"], rel=1e-5)


def _failing_import(fail: str, exc: BaseException):
    real = importlib.import_module

    def fake(name, *args, **kwargs):
        if name == fail:
            raise exc
        return real(name, *args, **kwargs)

    return fake


def test_a_broken_module_stops_the_run(monkeypatch):
    monkeypatch.setattr(
        components.importlib, "import_module", _failing_import("evax.attribution", NameError("name 'x' is not defined"))
    )
    with pytest.raises(ComponentBroken, match="evax.attribution fails to import: NameError"):
        components.method_class("Saliency")
    cell = cells_mod.Cell(
        "t", "mnist", "Saliency", 0, "attribution",
        {"model": "mnist-mlp", "dataset": "mnist-samples", "method": {"cls": "Saliency"},
         "metrics": {"deletion": {"cls": "Deletion"}}, "seed": 0},
    )
    monkeypatch.setattr(cells_mod, "_explanation_inputs", lambda cell, rec: (None, None, None, ["deletion"]))
    with pytest.raises(ComponentBroken):
        cells_mod.compute_cell(cell)


def test_a_missing_optional_dependency_is_unavailable(monkeypatch):
    missing = ModuleNotFoundError("No module named 'captum'", name="captum")
    monkeypatch.setattr(components.importlib, "import_module", _failing_import("evax.attribution", missing))
    # found in a module that imports fine; the registry's problem is noted only if nothing is found
    assert components.method_class("Saliency").__name__ == "Saliency"
    monkeypatch.setattr(
        components.importlib, "import_module", _failing_import("evax.metrics", MissingDependencyError("pip install x"))
    )
    with pytest.raises(ComponentUnavailable, match="pip install x"):
        components.metric_class("NoSuchMetric")


@pytest.mark.parametrize("local", [True, False])
def test_bench_ig_is_the_library_ig(local):
    model = _linear()
    x = torch.rand(2, 1, 4, 4, generator=torch.Generator().manual_seed(2))
    target = torch.tensor([0, 2])
    explainer = cells_mod.Explainer(protocols._ig(local, 8).to_config(), model, seed=0)
    raw = explainer.raw(x, target)
    ours = IntegratedGradients(model, n_steps=8, multiply_by_inputs=not local).attribute_raw(x, target)
    torch.testing.assert_close(raw, ours)
    w = model[1].weight.detach()[target].view(2, 1, 4, 4)
    if local:  # the path-averaged gradient of a linear model is its weight row, exactly
        torch.testing.assert_close(raw, w, rtol=1e-5, atol=1e-6)
    else:  # completeness: sum IG = f(x) - f(0), exactly with the trapezoid correction
        with torch.no_grad():
            gap = model(x).gather(1, target.view(-1, 1)) - model(torch.zeros_like(x)).gather(1, target.view(-1, 1))
        torch.testing.assert_close(raw.flatten(1).sum(1), gap.squeeze(1), rtol=1e-5, atol=1e-5)
