"""evax.load_model: zoo names, torch.export / TorchScript / ONNX files, factories, normalisation."""

from __future__ import annotations

import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import evax
from evax.errors import DataSourceError, InvalidInputError, UnsupportedLayerError
from evax.zoo.loaders import load_model


def small_cnn() -> nn.Module:
    torch.manual_seed(0)  # only for the factory's default init; tests load weights anyway
    return nn.Sequential(
        nn.Conv2d(1, 3, 3, padding=1), nn.BatchNorm2d(3), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(3 * 4 * 4, 5),
    ).eval()


@pytest.fixture
def factory_module(monkeypatch):
    mod = types.ModuleType("evax_test_factory16")
    mod.small_cnn = small_cnn  # type: ignore[attr-defined]
    mod.not_a_model = lambda: 3  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "evax_test_factory16", mod)
    return mod


X = torch.rand(3, 1, 8, 8, generator=torch.Generator().manual_seed(2))


def _bounds(model, method="ibp+forward+backward"):
    return evax.bound(model, evax.Ball(X, eps=0.05), method=method)


def test_zoo_name():
    model, info = load_model("mnist-mlp")
    assert info.source == "zoo" and info.input_shape == (1, 28, 28) and info.num_classes == 10
    assert info.boundable


def test_factory_with_weights_and_classes(tmp_path: Path, factory_module):
    ref = small_cnn()
    with torch.no_grad():
        for p in ref.parameters():
            p.add_(0.5)
    torch.save(ref.state_dict(), tmp_path / "w.pt")
    (tmp_path / "classes.txt").write_text("a\nb\nc\n\nd\ne\n")
    model, info = load_model("evax_test_factory16:small_cnn", weights=tmp_path / "w.pt",
                             input_shape="1,8,8", classes=tmp_path / "classes.txt")
    assert info.classes == ("a", "b", "c", "d", "e") and info.source == "factory"
    assert torch.equal(model(X), ref(X))


def test_mean_std_wrap(factory_module):
    model, info = load_model("evax_test_factory16:small_cnn", input_shape=(1, 8, 8), mean="0.5", std="0.25")
    inner = small_cnn()
    inner.load_state_dict(model.model.state_dict())
    assert torch.allclose(model(X), inner((X - 0.5) / 0.25))
    assert info.normalization == ((0.5,), (0.25,))
    b = _bounds(model)  # the normalisation layer is bounded like any affine layer
    assert (b.lower <= model(X) + 1e-5).all() and (model(X) <= b.upper + 1e-5).all()


def test_torch_export_file_is_bounded_like_the_original(tmp_path: Path):
    net = small_cnn()
    ep = torch.export.export(net, (X,), dynamic_shapes=({0: torch.export.Dim("batch")},))
    torch.export.save(ep, tmp_path / "m.pt2")
    model, info = load_model(tmp_path / "m.pt2", input_shape="1,8,8")
    assert info.source == "export" and info.boundable
    assert torch.allclose(model(X), net(X), atol=1e-6)
    for method in ("ibp", "ibp+forward+backward"):
        a, b = _bounds(model, method), _bounds(net, method)
        assert torch.allclose(a.lower, b.lower, atol=1e-5) and torch.allclose(a.upper, b.upper, atol=1e-5)


class ViewNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(64, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x.view(x.shape[0], -1))  # exported with a static batch: view(2, -1)


def test_torch_export_static_batch_is_refused(tmp_path: Path):
    ep = torch.export.export(ViewNet().eval(), (X[:2],))
    torch.export.save(ep, tmp_path / "m.pt2")
    with pytest.raises(InvalidInputError, match="dynamic batch"):
        load_model(tmp_path / "m.pt2", input_shape="1,8,8")


def test_torchscript_loads_but_is_not_boundable(tmp_path: Path):
    net = small_cnn()
    torch.jit.save(torch.jit.trace(net, X), tmp_path / "m.ts")
    model, info = load_model(tmp_path / "m.ts", input_shape="1,8,8")
    assert info.source == "torchscript" and not info.boundable
    assert torch.allclose(model(X), net(X), atol=1e-6)  # gradient methods can use it
    with pytest.raises(UnsupportedLayerError, match="torch.export.save"):
        info.require_boundable("EVA")


def test_missing_input_shape(tmp_path: Path, factory_module):
    with pytest.raises(InvalidInputError, match="input_shape"):
        load_model("evax_test_factory16:small_cnn")


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"path_or_name": "nope"}, "not a zoo name"),
        ({"path_or_name": "evax_test_factory16:missing", "input_shape": "1,8,8"}, "no attribute"),
        ({"path_or_name": "evax_test_factory16:not_a_model", "input_shape": "1,8,8"}, "not an nn.Module"),
        ({"path_or_name": "no_such_pkg_16:f"}, "cannot import"),
        ({"path_or_name": "evax_test_factory16:small_cnn", "input_shape": "1,8"}, "fails on inputs"),
        ({"path_or_name": "evax_test_factory16:small_cnn", "input_shape": "1,x,8"}, "input shape"),
        ({"path_or_name": "evax_test_factory16:small_cnn", "input_shape": "1,8,8", "mean": "0.5"}, "both mean and std"),
        ({"path_or_name": "evax_test_factory16:small_cnn", "input_shape": "1,8,8", "mean": "0,0", "std": "1,1"},
         "1 or 1 values"),
        ({"path_or_name": "evax_test_factory16:small_cnn", "input_shape": "1,8,8", "classes": ["a", "b"]},
         "2 class names"),
        ({"path_or_name": "mnist-mlp", "input_shape": "1,8,8"}, "declares"),
        ({"path_or_name": "mnist-mlp", "weights": "w.pt"}, "factory models only"),
    ],
)
def test_bad_specs(factory_module, kwargs, match):
    with pytest.raises(InvalidInputError, match=match):
        load_model(**kwargs)


def test_bad_files(tmp_path: Path, factory_module):
    (tmp_path / "junk.pt").write_bytes(b"not a model")
    with pytest.raises(InvalidInputError, match="neither ONNX"):
        load_model(tmp_path / "junk.pt", input_shape="1,8,8")
    (tmp_path / "junk.pt2").write_bytes(b"not a model")
    with pytest.raises(InvalidInputError, match="torch.export"):
        load_model(tmp_path / "junk.pt2", input_shape="1,8,8")
    with pytest.raises(DataSourceError, match="weights"):
        load_model("evax_test_factory16:small_cnn", input_shape="1,8,8", weights=tmp_path / "none.pt")
    torch.save({"x": torch.zeros(2)}, tmp_path / "bad.pt")
    with pytest.raises(InvalidInputError, match="do not fit"):
        load_model("evax_test_factory16:small_cnn", input_shape="1,8,8", weights=tmp_path / "bad.pt")


def test_nhwc_onnx_with_normalisation(tmp_path: Path):
    onnx = pytest.importorskip("onnx")
    from evax.zoo import MissingDependencyError
    from evax.zoo.onnx_io import _import_onnx2torch

    try:
        _import_onnx2torch()
    except MissingDependencyError as exc:
        pytest.skip(str(exc))
    from zoo.onnx_graphs import keras_mlp

    proto, w = keras_mlp((8, 8, 1), hidden=6, classes=3)
    onnx.save(proto, tmp_path / "keras.onnx")
    model, info = load_model(tmp_path / "keras.onnx", mean="0.5", std="0.2")
    assert info.source == "onnx" and info.input_shape == (1, 8, 8) and info.num_classes == 3
    # the NCHW input, normalised, then read in NHWC order by the Keras graph
    z = ((X - 0.5) / 0.2).permute(0, 2, 3, 1).reshape(3, -1).numpy()
    want = torch.from_numpy(np.maximum(z @ w["W1"] + w["b1"], 0) @ w["W2"] + w["b2"])
    assert torch.allclose(model(X), want, atol=1e-5)
    b = evax.bound(model, evax.Ball(X, eps=0.01), method="ibp+forward+backward")
    assert (b.lower <= want + 1e-4).all() and (want <= b.upper + 1e-4).all()


def test_factory_found_in_the_working_directory(tmp_path: Path, monkeypatch):
    (tmp_path / "cwd_net16.py").write_text(
        "from torch import nn\n\ndef build():\n    return nn.Sequential(nn.Flatten(), nn.Linear(64, 4))\n"
    )
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", str(tmp_path))])
    monkeypatch.delitem(sys.modules, "cwd_net16", raising=False)
    model, info = load_model("cwd_net16:build", input_shape="1,8,8")
    assert info.source == "factory" and info.num_classes == 4
