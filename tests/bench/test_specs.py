"""The bench as data (issue 17): every registered table spec builds its cells, specs are
immutable, the refactor kept the cells' cache fingerprints, and the certified study (issue 18)
runs end to end at reduced budgets through ``evax bench``.
"""

from __future__ import annotations

import dataclasses
import json

import pytest

pytest.importorskip("pandas")

from evax.bench import registry, runner  # noqa: E402
from evax.bench.components import method_class, metric_class  # noqa: E402
from evax.bench.specs import MethodSpec, MetricSpec, TableSpec  # noqa: E402
from evax.errors import InvalidInputError  # noqa: E402


@pytest.fixture
def two_images(monkeypatch):
    """Cells built without reading a dataset: images 0 and 1 of every setting."""
    monkeypatch.setattr(runner, "image_indices", lambda dataset, n, seed, order="permutation": [0, 1][:n])


def _classes(spec: MethodSpec):
    if spec.inner is not None:
        yield from _classes(spec.inner)
    elif spec.kind not in ("bound",) and not spec.kind.startswith("captum:"):
        yield spec.kind


@pytest.mark.parametrize("name", registry.TABLES)
@pytest.mark.parametrize("offline", [False, True])
def test_every_table_spec_builds_its_cells_at_quick_budgets(name, offline, two_images, tmp_path):
    spec = registry.table_spec(name, quick=True, offline=offline)
    assert isinstance(spec, TableSpec) and spec.name == name and spec.title
    opts = runner.RunOptions(out=tmp_path, n=2, settings=spec.setting_keys, methods=None)
    cells = runner.build_cells(spec, opts)
    defaults = {(s.key, m.name) for s in spec.settings for m in s.methods if m.default}
    assert {(c.setting, c.method) for c in cells} == defaults
    assert len(cells) == 2 * len(defaults)
    for c in cells:
        json.dumps(c.config)  # a cell's configuration is JSON (Ray, the cache fingerprint)
        assert c.kind == spec.setting(c.setting).cell
        assert runner.cell_fingerprint(c) == runner.cell_fingerprint(dataclasses.replace(c))
    for s in spec.settings:
        for m in s.methods:  # every row's class is found by the harness
            for cls in _classes(m):
                method_class(cls)
        for metric in s.metrics:
            if metric.kind is not None:
                metric_class(metric.kind)


# fingerprints of the cells before the bench became data (commit 422a535): a cache of a run
# made with the per-table functions is reused as is
_FINGERPRINTS = {
    ("eva-table1", "mnist", "EVA", True): "8784e7ae4c52d95f",
    ("eva-table1", "mnist", "Greedy-AS", False): "d936cd6a79859ce0",
    ("eva-table2", "mnist-tiny", "exact", True): "28acfcb0da776837",
    ("infidelity-table1", "mnist-global", "Grad-SG", True): "9868154708e75331",
    ("infidelity-table2", "cifar10", "Square", False): "02cf63f47e7ef6fd",
    ("targeted", "mnist", "EVA-targeted", True): "8481ff485f8b9cda",
}


@pytest.mark.parametrize("key", list(_FINGERPRINTS))
def test_cache_fingerprints_are_the_ones_before_the_specs(key, two_images, tmp_path):
    name, setting, method, quick = key
    spec = registry.table_spec(name, quick=quick, offline=True)
    opts = runner.RunOptions(out=tmp_path, n=1, settings=(setting,), methods=(method,))
    (cell,) = runner.build_cells(spec, opts)
    assert runner.cell_fingerprint(cell) == _FINGERPRINTS[key]


def test_specs_are_immutable_and_hashable():
    spec = registry.table_spec("eva-table1", quick=True)
    with pytest.raises(dataclasses.FrozenInstanceError):
        spec.name = "other"  # type: ignore[misc]
    s = spec.setting("mnist")
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.n = 3  # type: ignore[misc]
    eva = s.method("EVA")
    with pytest.raises(TypeError):
        eva.kwargs["eps"] = 0.1  # type: ignore[index]
    rob = next(m for m in s.metrics if m.name == "robustness")
    assert isinstance(rob.kwargs["fractions"], tuple)  # lists are frozen to tuples
    assert rob.to_config()["fractions"] == [0.25, 0.5, 1.0]  # ... and thawed for the cells
    assert hash(spec) == hash(registry.table_spec("eva-table1", quick=True))
    assert spec == registry.table_spec("eva-table1", quick=True)
    # a changed spec is a new one; the registry's is untouched
    other = spec.with_method("EVA", eps=0.25)
    assert other.setting("mnist").method("EVA").kwargs["eps"] == 0.25
    assert spec.setting("mnist").method("EVA").kwargs["eps"] == 0.5
    assert registry.table_spec("eva-table1", quick=True).setting("mnist").method("EVA").kwargs["eps"] == 0.5
    with pytest.raises(KeyError):
        spec.with_method("no-such-method", eps=0.1)
    assert MetricSpec("deletion", "Deletion", {"baseline": "uniform"}).to_config() == {
        "cls": "Deletion", "baseline": "uniform"}


def test_run_options_and_registry_refuse_bad_input(tmp_path):
    with pytest.raises(InvalidInputError, match="workers"):
        runner.RunOptions(out=tmp_path, workers=0)
    with pytest.raises(InvalidInputError, match="metrics"):
        runner.RunOptions(out=tmp_path, metrics="deletion")
    with pytest.raises(InvalidInputError, match="unknown table"):
        registry.table_spec("no-such-table")
    with pytest.raises(InvalidInputError, match="no option"):
        registry.table_spec("eva-table1", method="ibp")
    spec = registry.table_spec("certified-study", quick=True, offline=True)
    with pytest.raises(InvalidInputError, match="unknown settings"):
        runner.build_cells(spec, runner.RunOptions(out=tmp_path, settings=("nope",)))
    with pytest.raises(InvalidInputError, match="unknown methods"):
        runner.build_cells(spec, runner.RunOptions(out=tmp_path, methods=("nope",)))
    with pytest.raises(ValueError, match="twice"):
        dataclasses.replace(spec, settings=spec.settings + spec.settings[:1])


def test_certified_study_spec():
    spec = registry.table_spec("certified-study")
    assert spec.reference == "EVA"
    assert set(spec.default_settings) == {registry.certified_key(m, e) for m in registry.CERTIFIED_DEFAULT
                                           for e in registry.CERTIFIED_EPS}
    s = spec.setting("fashion-mlp-cert0.1-eps0.1")
    assert (s.model, s.dataset, s.n, s.images) == ("fashion-mlp-cert0.1", "fashion-mnist", 50, "first")
    assert [m.name for m in s.methods if m.default] == ["Saliency", "GradInput", "InteGrad", "SmoothGrad",
                                                         "VarGrad", "Occlusion", "RISE", "EVA"]
    assert not s.method("Greedy-AS").default  # only on request
    assert s.method("EVA").kwargs["eps"] == 0.1
    assert [m.name for m in s.metrics] == ["deletion", "insertion", "mufidelity", "tightness", "certified"]


def test_certified_study_runs_through_the_cli(tmp_path):
    from typer.testing import CliRunner

    from evax.cli import app

    setting = "mnist-mlp-cert0.1-eps0.1"
    args = ["bench", "certified-study", "--quick", "--offline", "--n", "1", "--setting", setting,
            "--method", "Saliency", "--method", "EVA", "--out", str(tmp_path)]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    data = json.loads((tmp_path / "certified-study.json").read_text())
    by = {(r["method"], r["metric"]): r for r in data["rows"]}
    for metric in ("deletion", "insertion", "mufidelity", "seconds"):
        assert by[("Saliency", metric)]["mean"] is not None and by[("EVA", metric)]["mean"] is not None
    for metric in ("deletion", "insertion", "mufidelity"):  # paired difference to EVA, same image
        r = by[("Saliency", metric)]
        assert r["diff"] == pytest.approx(r["mean"] - by[("EVA", metric)]["mean"])
    # Tightness and the certified share are EVA's (its AO bound), n/a for a baseline
    assert by[("Saliency", "tightness")]["error"].startswith("n/a")
    ao = by[("EVA", "tightness")]["mean"]
    assert by[("EVA", "certified")]["mean"] == float(ao < 0)
    assert data["meta"]["reference"] == "EVA" and data["meta"]["settings"][setting]["eps"] == 0.1
    report = (tmp_path / "report.md").read_text()
    assert "Certified vs normal models" in report and "(Δ " in report
