"""The command line: the main job runs offline and writes a figure and the scores."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from evax.cli import app

runner = CliRunner()


def _api_eva(x, method, grid_side, equal=False, **kw):
    """The API's EVA explanation of ``x`` on the zoo's MNIST MLP, as the CLI configures it."""
    from evax.attribution.eva import EVA
    from evax.groups import grid
    from evax.zoo.loaders import load_model

    net, _ = load_model("mnist-mlp")
    net = net.eval()
    with torch.no_grad():
        pred = net(x).argmax(1)
    return EVA(net, eps=0.5, method=method, groups=grid(grid_side, equal=equal)).explain(x, **kw), pred


def _png_size(path):
    from PIL import Image

    with Image.open(path) as img:
        assert img.format == "PNG"
        return img.size


def test_main_job_writes_png_and_json(tmp_path):
    from evax import zoo

    result = runner.invoke(app, ["explain", "--n", "2", "--method", "ibp", "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    data = json.loads((tmp_path / "eva.json").read_text())
    config = {k: v for k, v in data["config"].items() if k != "model_info"}
    assert config == {"model": "mnist-mlp", "method": "ibp", "eps": 0.5, "p": "inf", "grid": 12,
                      "equal_cells": True, "cells": [14, 14]}
    assert data["config"]["model_info"]["input_shape"] == [1, 28, 28]
    digits = zoo.load_dataset("mnist-samples")
    assert [r["name"] for r in data["images"]] == ["mnist-samples[0]", "mnist-samples[1]"]
    lines = [line for line in result.output.splitlines() if "AO(x,B) <=" in line]
    assert len(lines) == 2
    for k, r in enumerate(data["images"]):
        want, pred = _api_eva(digits.images[k : k + 1], "ibp", 12, equal=True)
        assert r["label"] == int(digits.labels[k])
        assert r["prediction"] == int(pred[0]) == r["target"]  # the predicted class is explained
        assert r["method"] == "ibp" and r["seconds"] > 0
        assert r["ao"] == pytest.approx(float(want.ao[0]), abs=1e-5)
        assert r["certified_robust"] == bool(want.ao[0] < 0)
        scores = np.array(r["scores"])
        assert scores.shape == (196,) and (scores >= 0).all() and scores.max() > 0  # 14x14 equal cells
        assert np.allclose(scores, want.scores[0].numpy(), atol=1e-5)
        status = "CERTIFIED ROBUST (proof)" if r["certified_robust"] else "not certified"
        assert lines[k].startswith(f"{r['name']}: label {digits.classes[r['label']]}, predicted {r['prediction']}, ")
        assert f"AO(x,B) <= {r['ao']:.4g}, {status}" in lines[k]
    assert f"wrote {tmp_path / 'eva.png'} and {tmp_path / 'eva.json'}" in result.output
    width, height = _png_size(tmp_path / "eva.png")
    assert (tmp_path / "eva.png").stat().st_size > 10_000 and width > 300 and height > 300


def test_paper_grid_keeps_12_by_12(tmp_path):
    from evax import zoo

    result = runner.invoke(app, ["explain", "--n", "1", "--method", "ibp", "--paper-grid", "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    data = json.loads((tmp_path / "eva.json").read_text())
    assert data["config"]["cells"] == [12, 12] and data["config"]["equal_cells"] is False
    want, _ = _api_eva(zoo.load_dataset("mnist-samples").images[:1], "ibp", 12)
    assert np.allclose(data["images"][0]["scores"], want.scores[0].numpy(), atol=1e-5)


def test_targeted_and_image_file(tmp_path):
    from PIL import Image

    from evax.zoo.images import load_images

    img = Image.fromarray((np.random.default_rng(0).random((40, 30)) * 255).astype("uint8"))
    path = tmp_path / "digit.png"
    img.save(path)
    args = ["explain", "--image", str(path), "--method", "ibp", "--target", "3", "--contrast", "5", "--grid", "4"]
    result = runner.invoke(app, [*args, "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    data = json.loads((tmp_path / "eva.json").read_text())
    assert data["config"]["grid"] == 4 and len(data["images"]) == 1
    r = data["images"][0]
    x = load_images(str(path), (1, 28, 28)).images[:1]
    want, pred = _api_eva(x, "ibp", 4, target=3, contrast=5)
    assert r["name"] == "digit.png" and r["prediction"] == int(pred[0])
    assert r["target"] == 3 and r["contrast"] == 5
    assert r["certified_robust"] is None  # a targeted explanation certifies nothing
    assert r["ao"] == pytest.approx(float(want.ao[0]), abs=1e-5)
    scores = np.array(r["scores"])
    assert scores.shape == (16,) and np.allclose(scores, want.scores[0].numpy(), atol=1e-5)
    line = next(line for line in result.output.splitlines() if "AO(x,B) <=" in line)
    assert line.startswith("digit.png: ") and "explained 3 vs 5" in line and line.split(", ")[-2] == "targeted"
    _png_size(tmp_path / "eva.png")


def test_bad_inputs_give_clear_errors(tmp_path):
    bad = tmp_path / "not-an-image.png"
    bad.write_text("hello")
    result = runner.invoke(app, ["explain", "--image", str(bad), "--out", str(tmp_path)])
    assert result.exit_code == 2 and "cannot read image" in result.output
    result = runner.invoke(app, ["explain", "--eps", "0", "--out", str(tmp_path)])
    assert result.exit_code == 2 and "eps" in result.output
    result = runner.invoke(app, ["explain", "--model", "nope", "--out", str(tmp_path)])
    assert result.exit_code == 2 and "mnist-mlp" in result.output
    result = runner.invoke(app, ["explain", "--index", "99", "--out", str(tmp_path)])
    assert result.exit_code == 2 and "out of range" in result.output
    result = runner.invoke(app, ["explain", "--target", "12", "--method", "ibp", "--out", str(tmp_path)])
    assert result.exit_code == 2 and "target out of range" in result.output


def test_zoo_list_is_mounted():
    result = runner.invoke(app, ["zoo", "list"])
    assert result.exit_code == 0 and "mnist-mlp" in result.output


# ---------------------------------------------------------------- every bad input: one line, exit 2
def _fails(args, match):
    result = runner.invoke(app, args)
    assert result.exit_code == 2, result.output
    lines = [ln for ln in result.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    assert match in lines[0], lines[0]
    assert "Traceback" not in result.output


def test_out_is_a_file(tmp_path):
    f = tmp_path / "file.txt"
    f.write_text("x")
    _fails(["explain", "--out", str(f)], "is a file")
    _fails(["evaluate", "--out", str(f)], "is a file")
    _fails(["bench", "eva-table1", "--out", str(f)], "is a file")


def test_out_unwritable():
    _fails(["explain", "--method", "ibp", "--out", "/proc/evax-out"], "cannot be written")
    _fails(["bench", "eva-table1", "--out", "/proc/evax-out"], "cannot be written")
    _fails(["evaluate", "--out", "/proc/evax-out"], "cannot be written")


def test_n_zero(tmp_path):
    _fails(["explain", "--n", "0", "--out", str(tmp_path)], "--n must be >= 1")
    _fails(["bench", "eva-table1", "--n", "0", "--out", str(tmp_path)], "--n must be >= 1")
    _fails(["evaluate", "--n", "0", "--out", str(tmp_path)], "--n must be >= 1")


def test_unknown_device(tmp_path):
    _fails(["explain", "--device", "tpu", "--out", str(tmp_path)], "unknown --device 'tpu'")
    _fails(["bench", "eva-table1", "--device", "tpu", "--out", str(tmp_path)], "unknown --device")


def test_zoo_fetch_unknown():
    _fails(["zoo", "fetch", "nope"], "unknown model or dataset 'nope'")


def test_bad_input_creates_nothing(tmp_path):
    out = tmp_path / "never"
    _fails(["explain", "--model", "nope", "--out", str(out)], "not a zoo name")
    _fails(["evaluate", "--metric", "nope", "--out", str(out)], "unknown metric")
    _fails(["evaluate", "--method", "Nope", "--out", str(out)], "unknown method 'Nope'")
    _fails(["evaluate", "--method", "Saliency", "--reference", "EVA", "--out", str(out)], "--reference 'EVA'")
    assert not out.exists()


def test_model_file_errors(tmp_path):
    _fails(["explain", "--model", str(tmp_path / "missing.onnx"), "--out", str(tmp_path)], "not a zoo name")
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"junk")
    _fails(["explain", "--model", str(junk), "--input-shape", "1,28,28", "--out", str(tmp_path)], "neither ONNX")
    _fails(["explain", "--images", str(tmp_path / "none"), "--method", "ibp", "--out", str(tmp_path)],
           "no images found")


# ---------------------------------------------------------------- evax evaluate: numbers = the Python API's
def test_evaluate_numbers_equal_the_api(tmp_path):
    import csv

    import torch

    from evax.attribution import Saliency
    from evax.groups import grid
    from evax.metrics import Deletion, Insertion
    from evax.zoo import default_samples, load_model

    out = tmp_path / "ev"
    args = ["evaluate", "--n", "2", "--method", "Saliency", "--method", "EVA", "--bound-method", "ibp",
            "--metric", "deletion", "--metric", "insertion", "--quick", "--seed", "3", "--out", str(out)]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    for f in ("report.md", "report.html", "table.md", "table.csv", "results.csv", "heatmaps.png", "curves.png"):
        assert (out / f).stat().st_size > 100, f
    rows = list(csv.DictReader((out / "results.csv").open()))
    assert len(rows) == 4
    model = load_model("mnist-mlp")
    x, _, _ = default_samples()
    by = {(r["method"], int(r["image"])): r for r in rows}
    for i in range(2):
        xi = x[i : i + 1]
        target = model(xi).argmax(1)
        phi = Saliency(model).attribute(xi, target)
        for name, cls in (("deletion", Deletion), ("insertion", Insertion)):
            metric = cls(model, xi, target, groups=grid(12), seed=3 + i, progress=False, baseline="uniform")
            want = float(metric(phi, detailed=True).scores[0])
            assert abs(float(by[("Saliency", i)][name]) - want) < 1e-6
    # the summary: mean and paired difference to the reference (EVA) from the per-image values
    table = {(r["method"], r["metric"]): r for r in csv.DictReader((out / "table.csv").open())}
    sal = torch.tensor([float(by[("Saliency", i)]["deletion"]) for i in range(2)], dtype=torch.float64)
    eva = torch.tensor([float(by[("EVA", i)]["deletion"]) for i in range(2)], dtype=torch.float64)
    assert abs(float(table[("Saliency", "deletion")]["mean"]) - float(sal.mean())) < 1e-9
    assert abs(float(table[("Saliency", "deletion")]["diff"]) - float((sal - eva).mean())) < 1e-9
    assert abs(float(table[("Saliency", "deletion")]["diff_se"]) - float((sal - eva).std() / 2**0.5)) < 1e-9
    html = (out / "report.html").read_text()
    assert "data:image/png;base64," in html and "Saliency" in html and "uniform" in html
    # a rerun reuses every cell
    result = runner.invoke(app, args)
    assert result.exit_code == 0 and "cells: 0 computed, 4 from the cache" in (out / "report.md").read_text()


# ---------------------------------------------------------------- end to end: a user's own model and images
def _user_model_and_images(tmp_path):
    """A tiny MLP trained a few steps on the shipped digits, exported three ways, and an
    ImageFolder tree of PNGs of 6 digits."""
    import torch
    from PIL import Image
    from torch import nn

    from evax.zoo import load_dataset, to_onnx

    data = load_dataset("mnist-samples")
    g = torch.Generator().manual_seed(0)
    net = nn.Sequential(nn.Flatten(), nn.Linear(784, 16), nn.ReLU(), nn.Linear(16, 10))
    for p in net.parameters():
        p.data = torch.randn(p.shape, generator=g) * 0.05
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    for _ in range(30):
        loss = nn.functional.cross_entropy(net(data.images), data.labels)
        opt.zero_grad()
        loss.backward()
        opt.step()
    net.eval()
    x = data.images[:6]
    files = {"onnx": to_onnx(net, tmp_path / "net.onnx", (1, 28, 28)), "pt2": tmp_path / "net.pt2",
             "ts": tmp_path / "net.ts"}
    ep = torch.export.export(net, (x,), dynamic_shapes=({0: torch.export.Dim("batch")},))
    torch.export.save(ep, files["pt2"])
    torch.jit.save(torch.jit.trace(net, x), files["ts"])
    root = tmp_path / "imgs"
    for i in range(6):
        d = root / str(int(data.labels[i]))
        d.mkdir(parents=True, exist_ok=True)
        Image.fromarray((x[i, 0].numpy() * 255).round().astype("uint8")).save(d / f"{i}.png")
    (tmp_path / "classes.txt").write_text("\n".join(str(c) for c in range(10)))
    return net, files, root


def test_end_to_end_user_model(tmp_path):
    import csv

    import torch

    from evax.attribution import EVA
    from evax.groups import grid
    from evax.zoo.images import load_images

    net, files, root = _user_model_and_images(tmp_path)
    images = load_images(root, (1, 28, 28))
    # explain: ONNX model on the ImageFolder tree
    out = tmp_path / "explain"
    result = runner.invoke(app, ["explain", "--model", str(files["onnx"]), "--images", str(root), "--n", "2",
                                 "--classes", str(tmp_path / "classes.txt"), "--method", "ibp", "--eps", "0.1",
                                 "--grid", "4", "--out", str(out)])
    assert result.exit_code == 0, result.output
    data = json.loads((out / "eva.json").read_text())
    assert [r["name"] for r in data["images"]] == images.names[:2]
    assert [r["label"] for r in data["images"]] == [int(images.classes[v]) for v in images.labels[:2]]
    want = EVA(net, eps=0.1, method="ibp", groups=grid(4)).explain(images.images[:1])
    assert np.allclose(data["images"][0]["scores"], want.scores[0].tolist(), atol=1e-4)
    # evaluate: the torch.export model, two methods, metrics with small budgets
    out = tmp_path / "evaluate"
    result = runner.invoke(app, ["evaluate", "--model", str(files["pt2"]), "--input-shape", "1,28,28",
                                 "--images", str(root), "--n", "3", "--method", "Saliency", "--method", "EVA",
                                 "--bound-method", "ibp", "--eps", "0.1", "--grid", "4", "--metric", "deletion",
                                 "--metric", "mufidelity", "--quick", "--out", str(out)])
    assert result.exit_code == 0, result.output
    rows = list(csv.DictReader((out / "results.csv").open()))
    assert len(rows) == 6 and all(r["deletion"] and r["mufidelity"] and not r["errors"] for r in rows)
    assert [r["name"] for r in rows if r["method"] == "EVA"] == images.names[:3]
    # TorchScript: gradient methods run, EVA is refused with what to do instead
    out = tmp_path / "ts"
    result = runner.invoke(app, ["evaluate", "--model", str(files["ts"]), "--input-shape", "1,28,28",
                                 "--images", str(root), "--n", "2", "--grid", "4", "--method", "Saliency", "--metric",
                                 "deletion", "--quick", "--out", str(out)])
    assert result.exit_code == 0, result.output
    ts_rows = list(csv.DictReader((out / "results.csv").open()))
    sal_pt2 = [float(r["deletion"]) for r in rows if r["method"] == "Saliency"][:2]
    assert np.allclose([float(r["deletion"]) for r in ts_rows], sal_pt2, atol=1e-5)
    _fails(["evaluate", "--model", str(files["ts"]), "--input-shape", "1,28,28", "--images", str(root),
            "--method", "EVA", "--out", str(out)], "torch.export.save")
    assert torch.isfinite(torch.tensor([float(r["deletion"]) for r in ts_rows])).all()


@pytest.mark.slow
def test_evaluate_over_ray_equals_in_process(tmp_path):
    pytest.importorskip("ray")
    import csv

    base = ["evaluate", "--n", "2", "--method", "Saliency", "--method", "GradInput", "--metric", "deletion",
            "--quick"]
    for name, extra in (("local", []), ("ray", ["--workers", "2"])):
        result = runner.invoke(app, [*base, *extra, "--out", str(tmp_path / name)])
        assert result.exit_code == 0, result.output
    local, ray = (list(csv.DictReader((tmp_path / d / "results.csv").open())) for d in ("local", "ray"))
    assert [r["deletion"] for r in local] == [r["deletion"] for r in ray]


def test_evaluate_infidelity_and_sensitivity_equal_the_api(tmp_path):
    import csv

    from evax.attribution import Saliency
    from evax.core.noise import NoisyBaseline
    from evax.metrics import Infidelity, MaxSensitivity
    from evax.zoo import default_samples, load_model

    out = tmp_path / "ev"
    result = runner.invoke(app, ["evaluate", "--n", "1", "--method", "Saliency", "--metric", "infidelity",
                                 "--metric", "sensitivity", "--quick", "--out", str(out)])
    assert result.exit_code == 0, result.output
    (row,) = csv.DictReader((out / "results.csv").open())
    model = load_model("mnist-mlp")
    x = default_samples().images[:1]
    target = model(x).argmax(1)
    sal = Saliency(model)
    raw = sal.attribute_raw(x, target)
    pert = NoisyBaseline(sigma=0.2, baseline=0.0, clip=(0.0, 1.0))
    infd = Infidelity(model, x, target, pert, seed=0, progress=False, n_samples=64)(raw)
    sens = MaxSensitivity(model, x, target, seed=0, progress=False, radius=0.2, n_samples=3)(
        sal.attribute_raw, explanations=raw
    )
    assert abs(float(row["infidelity"]) - float(infd[0])) < 1e-6 * max(1.0, abs(float(infd[0])))
    assert abs(float(row["sensitivity"]) - float(sens[0])) < 1e-6 * max(1.0, abs(float(sens[0])))


def test_explain_factory_with_weights_and_normalisation(tmp_path, monkeypatch):
    import torch

    from evax.attribution import EVA
    from evax.groups import grid
    from evax.zoo import default_samples
    from evax.zoo.layers import Normalize

    (tmp_path / "usernet16.py").write_text(
        "from torch import nn\n\n"
        "def build():\n"
        "    return nn.Sequential(nn.Flatten(), nn.Linear(784, 12), nn.ReLU(), nn.Linear(12, 10))\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    import usernet16

    net = usernet16.build().eval()
    torch.save(net.state_dict(), tmp_path / "w.pt")
    out = tmp_path / "out"
    result = runner.invoke(app, ["explain", "--model", "usernet16:build", "--weights", str(tmp_path / "w.pt"),
                                 "--input-shape", "1,28,28", "--mean", "0.13", "--std", "0.31", "--n", "1",
                                 "--method", "ibp", "--eps", "0.05", "--grid", "4", "--out", str(out)])
    assert result.exit_code == 0, result.output
    data = json.loads((out / "eva.json").read_text())
    assert data["config"]["model_info"]["normalization"] == [[0.13], [0.31]]
    ref = torch.nn.Sequential(Normalize([0.13], [0.31]), net).eval()
    want = EVA(ref, eps=0.05, method="ibp", groups=grid(4)).explain(default_samples().images[:1])
    assert np.allclose(data["images"][0]["scores"], want.scores[0].tolist(), rtol=1e-5, atol=1e-6)
    assert abs(data["images"][0]["ao"] - float(want.ao[0])) < 1e-5


def test_evaluate_rerun_with_more_images_and_metrics_reuses_cells(tmp_path):
    base = ["evaluate", "--method", "Saliency", "--quick", "--out", str(tmp_path)]
    assert runner.invoke(app, [*base, "--n", "1", "--metric", "deletion"]).exit_code == 0
    assert "1 computed, 0 from the cache" in (tmp_path / "report.md").read_text()
    assert runner.invoke(app, [*base, "--n", "2", "--metric", "deletion"]).exit_code == 0
    assert "1 computed, 1 from the cache" in (tmp_path / "report.md").read_text()
    assert runner.invoke(app, [*base, "--n", "2", "--metric", "deletion", "--metric", "insertion"]).exit_code == 0
    text = (tmp_path / "table.md").read_text()
    assert "insertion" in text and "error:" not in text and "missing" not in text


def test_sufficient_kind_writes_the_kept_set_the_api_finds(tmp_path):
    """``--kind sufficient``: the figure, and JSON whose sizes and certificates are the Python
    API's on the same digits."""
    import evax
    from evax import zoo

    args = ["explain", "--kind", "sufficient", "--n", "2", "--method", "backward", "--eps", "0.05",
            "--grid", "6", "--order", "verix", "--out", str(tmp_path)]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "cells" in result.output and (tmp_path / "sufficient.png").stat().st_size > 5_000
    data = json.loads((tmp_path / "sufficient.json").read_text())
    net = zoo.load_model("mnist-mlp")
    x = zoo.load_dataset("mnist-samples").images[:2]
    ex = evax.Sufficient(net, 0.05, method="backward", groups=evax.groups.grid(6, equal=True),
                            order="verix").explain(x)
    assert data["size"] == ex.size.tolist() and data["certified"] == ex.certified.tolist()
    assert data["config"]["cells"] == [7, 7] and data["cells"] == 49  # equal cells of 4x4 pixels
    assert data["config"]["order"] == "verix" and len(data["names"]) == 2


def test_sufficient_kind_bad_order(tmp_path):
    result = runner.invoke(app, ["explain", "--kind", "sufficient", "--order", "best", "--out", str(tmp_path)])
    assert result.exit_code == 2 and "error: --order" in result.output
    result = runner.invoke(app, ["explain", "--kind", "nope", "--out", str(tmp_path)])
    assert result.exit_code == 2 and "error: --kind" in result.output
