"""evax.bench harness: cache/resume, workers (in-process vs Ray), report, CLI, targeted figure.

Fast tests use the shipped MNIST MLP and digits (offline) with reduced budgets.
"""

from __future__ import annotations

import json
import shutil

import pytest
import torch

pytest.importorskip("pandas")

from evax.bench import cells as cells_mod  # noqa: E402
from evax.bench import tables, write_report  # noqa: E402
from evax.bench.cache import ResultCache, fingerprint  # noqa: E402
from evax.bench.components import ComponentUnavailable, method_class  # noqa: E402
from evax.bench.published import EVA_TABLE1, EVA_TABLE2  # noqa: E402

CHEAP = ["Saliency", "GradInput", "GradCAM", "EVA"]


def _by_cell(r: dict) -> tuple:
    return (r["method"], r["index"])


def test_cache_roundtrip_fingerprint_and_atomicity(tmp_path):
    cache = ResultCache(tmp_path)
    key = ("t", "s", "m/x", 3)
    fp = fingerprint({"eps": 0.5})
    assert cache.get(key, fp) is None
    cache.put(key, fp, {"values": {"a": 1.5}}, {"map": torch.arange(4.0)})
    rec = cache.get(key, fp)
    assert rec["values"] == {"a": 1.5} and torch.equal(rec["tensors"]["map"], torch.arange(4.0))
    assert cache.get(key, fingerprint({"eps": 0.25})) is None  # other configuration: recomputed
    assert not list(tmp_path.rglob(".tmp-*"))
    assert cache.count() == 1


def test_missing_component_is_an_explicit_error_not_a_number():
    with pytest.raises(ComponentUnavailable, match="NoSuchMethod"):
        method_class("NoSuchMethod")
    cell = cells_mod.Cell(
        "t", "mnist", "ghost", 0, "attribution",
        {"model": "mnist-mlp", "dataset": "mnist-samples", "method": {"cls": "NoSuchMethod"},
         "metrics": {"deletion": {"cls": "Deletion"}}, "seed": 0},
    )
    rec = cells_mod.compute_cell(cell)
    assert rec["values"] == {}
    assert rec["errors"]["deletion"].startswith("unavailable:") and not rec["permanent"]["deletion"]


def test_eva_table1_subset_resume_and_report(tmp_path, monkeypatch):
    kw = dict(n=2, out=tmp_path, settings=["mnist"], quick=True, offline=True, methods=CHEAP, progress=False)
    df = tables.eva_table1(**kw)
    assert list(df.index) == CHEAP
    assert list(df.columns.get_level_values(1)) == ["deletion", "insertion", "mufidelity", "robustness", "seconds"]
    # Grad-CAM does not apply to the dense MLP: n/a (as the paper), never a number
    assert df.loc["GradCAM"].isna().all()
    assert all(str(v).startswith("n/a") for k, v in df.attrs["errors"].items() if k[1] == "GradCAM")
    ok = df.drop(index="GradCAM")
    assert ok.notna().all().all()
    assert ((ok.xs("deletion", axis=1, level=1) >= 0) & (ok.xs("deletion", axis=1, level=1) <= 1)).all().all()
    assert (tmp_path / "eva-table1.csv").exists()
    meta = json.loads((tmp_path / "eva-table1.json").read_text())["meta"]
    assert meta["cells"] == {"cached": 0, "computed": 8}
    assert (tmp_path / "eva-table1-mnist-heatmaps.png").stat().st_size > 5000
    assert (tmp_path / "eva-table1-mnist-curves.png").stat().st_size > 5000

    # resume: nothing is recomputed (compute_cell must not be called)
    def boom(cell):
        raise AssertionError(f"recomputed {cell.key}")

    monkeypatch.setattr(cells_mod, "compute_cell", boom)
    df2 = tables.eva_table1(**kw)
    assert json.loads((tmp_path / "eva-table1.json").read_text())["meta"]["cells"] == {"cached": 8, "computed": 0}
    assert df2.equals(df)
    # a moved output folder keeps its cache valid
    moved = tmp_path.parent / f"{tmp_path.name}-moved"
    shutil.copytree(tmp_path, moved)
    tables.eva_table1(**{**kw, "out": moved})
    assert json.loads((moved / "eva-table1.json").read_text())["meta"]["cells"] == {"cached": 8, "computed": 0}

    report = write_report(tmp_path).read_text()
    assert "EVA paper, Table 1" in report and "Machine:" in report
    assert f"({EVA_TABLE1['mnist']['EVA']['deletion']:.3f})" in report  # the paper's number beside ours
    assert "n/a (n/a)" in report  # Grad-CAM on MNIST: n/a in both
    assert "seed 0" in report and "n = 2" in report


def test_partial_resume_computes_only_missing_metrics(tmp_path, monkeypatch):
    kw = dict(n=1, out=tmp_path, settings=["mnist"], quick=True, offline=True, methods=["Saliency"], progress=False)
    tables.eva_table1(**kw)
    calls = []
    real_metric_class = cells_mod.metric_class

    def spy(name):
        calls.append(name)
        return real_metric_class(name)

    # drop one metric from the cached record: only that one is recomputed, the map is reused
    js = next((tmp_path / "cache").rglob("*.json"))
    rec = json.loads(js.read_text())
    del rec["values"]["mufidelity"]
    js.write_text(json.dumps(rec))
    monkeypatch.setattr(cells_mod, "metric_class", spy)
    monkeypatch.setattr(cells_mod.Explainer, "map", lambda *a: (_ for _ in ()).throw(AssertionError("re-explained")))
    tables.eva_table1(**kw)
    assert calls == ["MuFidelity"]


def test_metric_filter_computes_only_those_and_shares_the_cache(tmp_path, monkeypatch):
    from evax.errors import InvalidInputError

    kw = dict(n=1, out=tmp_path, settings=["mnist"], quick=True, offline=True, methods=["Saliency"], progress=False)
    with pytest.raises(InvalidInputError, match="unknown metrics"):
        tables.eva_table1(metrics=["no-such-metric"], **kw)
    calls = []
    real_metric_class = cells_mod.metric_class

    def spy(name):
        calls.append(name)
        return real_metric_class(name)

    monkeypatch.setattr(cells_mod, "metric_class", spy)
    part = tables.eva_table1(metrics=["deletion"], **kw)
    assert calls == ["Deletion"]
    assert list(part.columns.get_level_values(1)) == ["deletion", "seconds"]
    assert part.notna().all().all()
    # a run without the filter reuses the cached map and Deletion, and computes only the rest
    calls.clear()
    monkeypatch.setattr(cells_mod.Explainer, "map", lambda *a: (_ for _ in ()).throw(AssertionError("re-explained")))
    full = tables.eva_table1(**kw)
    assert sorted(calls) == ["Insertion", "MuFidelity", "RobustnessSr"]
    assert full[("mnist", "deletion")].equals(part[("mnist", "deletion")])
    assert full.notna().all().all()


def test_targeted_grid_and_cli(tmp_path):
    from typer.testing import CliRunner

    from evax.cli import app

    res = CliRunner().invoke(app, ["bench", "targeted", "--n", "2", "--quick", "--offline", "--out", str(tmp_path)])
    assert res.exit_code == 0, res.output
    df_rows = (tmp_path / "targeted.csv").read_text().splitlines()
    assert len(df_rows) == 3
    assert (tmp_path / "targeted.png").stat().st_size > 10_000
    rec = next(iter(ResultCache(tmp_path / "cache").root.rglob("*.pt")))
    maps = torch.load(rec, weights_only=True)["maps"]
    assert maps.shape == (10, 28, 28)
    assert (maps < 0).any() and (maps > 0).any()  # targeted maps are signed (B+ minus B-)
    assert "Fig. 7" in (tmp_path / "report.md").read_text()

    bad = CliRunner().invoke(app, ["bench", "no-such-table", "--out", str(tmp_path)])
    assert bad.exit_code == 2 and "unknown table" in bad.output


def test_eva_table2_rows_and_published_numbers(tmp_path):
    df = tables.eva_table2(n=1, out=tmp_path, settings=["mnist"], quick=True, offline=True, progress=False,
                           methods=["ibp"])
    assert list(df.index) == ["ibp"]
    assert df.notna().all().all()
    assert df.loc["ibp", ("mnist", "tightness")] > 0
    report = write_report(tmp_path).read_text()
    assert f"({EVA_TABLE2['mnist']['ibp']['tightness']:.2f})" in report


def test_ray_and_in_process_give_equal_results(tmp_path):
    ray = pytest.importorskip("ray", reason="ray is not installed (pip install 'evax[bench]')")
    kw = dict(n=2, settings=["mnist"], quick=True, offline=True, methods=["SmoothGrad"], progress=False, threads=1)
    local = tables.eva_table1(out=tmp_path / "local", **kw)
    try:
        remote = tables.eva_table1(out=tmp_path / "ray", workers=2, **kw)
    except Exception as exc:  # pragma: no cover - depends on the CI machine
        if ray.is_initialized():
            ray.shutdown()
        pytest.skip(f"Ray could not start a 2-worker local cluster: {type(exc).__name__}: {exc}")
    meta = json.loads((tmp_path / "ray" / "eva-table1.json").read_text())["meta"]
    assert meta["workers"] == 2 and meta["cells"]["computed"] == 2
    assert remote.drop(columns="seconds", level=1).equals(local.drop(columns="seconds", level=1))
    a = json.loads((tmp_path / "local" / "eva-table1.json").read_text())["images"]
    b = json.loads((tmp_path / "ray" / "eva-table1.json").read_text())["images"]
    for ra, rb in zip(sorted(a, key=_by_cell), sorted(b, key=_by_cell), strict=True):
        for m in ("deletion", "insertion", "mufidelity", "robustness"):
            assert ra[m] == rb[m], (ra["method"], ra["index"], m)
