"""The command line: the main job runs offline and writes a figure and the scores."""

from __future__ import annotations

import json

import numpy as np
from typer.testing import CliRunner

from evax.cli import app

runner = CliRunner()


def test_main_job_writes_png_and_json(tmp_path):
    result = runner.invoke(app, ["explain", "--n", "2", "--method", "ibp", "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert "AO(x,B) <=" in result.output
    png = tmp_path / "eva.png"
    assert png.stat().st_size > 10_000
    data = json.loads((tmp_path / "eva.json").read_text())
    assert len(data["images"]) == 2
    scores = np.array(data["images"][0]["scores"])
    assert scores.shape == (144,) and (scores >= 0).all() and scores.max() > 0


def test_targeted_and_image_file(tmp_path):
    from PIL import Image

    img = Image.fromarray((np.random.default_rng(0).random((40, 30)) * 255).astype("uint8"))
    path = tmp_path / "digit.png"
    img.save(path)
    result = runner.invoke(
        app,
        [
            "explain",
            "--image",
            str(path),
            "--method",
            "ibp",
            "--target",
            "3",
            "--contrast",
            "5",
            "--grid",
            "4",
            "--out",
            str(tmp_path),
        ],
    )
    assert result.exit_code == 0, result.output
    assert "targeted" in result.output


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
