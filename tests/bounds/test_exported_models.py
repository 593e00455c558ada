"""Bounds of ONNX models (torch exports and Keras/tf2onnx-style graphs) loaded with from_onnx.

Every model has a *canonical* torch form (tests/zoo/onnx_graphs.py) that computes the same
function with only the layers the engine supported before ONNX support (permutations,
concatenations and paddings folded into the weights). The ONNX model, and for torch exports
the original torch model, must get the same bounds as the canonical form for every method:
the same neurons are the same affine functions of the input, so every relaxation is the same.

These tests need the engine to support what onnx2torch graphs contain once re-traced
(torch.reshape with constant shapes, torch.matmul with a constant right operand, ``+`` of a
constant bias, permute of non-batch dims, torch.cat of input-dependent tensors, F.pad with
a constant); until it does they fail with UnsupportedLayerError.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from torch import nn

import evax
from evax.zoo import from_onnx, to_onnx

onnx = pytest.importorskip("onnx")

from zoo.onnx_graphs import KERAS_MODELS, KERAS_SHAPES, TORCH_MODELS, keras_canonical, torch_model  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread", "onnx_stack")

METHODS = ["ibp", "forward", "backward", "ibp+forward+backward"]
MODELS = list(TORCH_MODELS) + list(KERAS_MODELS)


@pytest.fixture
def onnx_stack() -> None:
    """Skip when onnx2torch is not installed (it is in the `zoo` extra)."""
    from evax.zoo import MissingDependencyError
    from evax.zoo.onnx_io import _import_onnx2torch

    try:
        _import_onnx2torch()
    except MissingDependencyError as exc:
        pytest.skip(str(exc))


class _Models:
    """name -> (ONNX model via from_onnx, canonical torch model, original torch model or None)."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.cache: dict[str, tuple[nn.Module, nn.Module, nn.Module | None]] = {}

    def __getitem__(self, name: str):
        if name not in self.cache:
            path = self.folder / f"{name}.onnx"
            if name in TORCH_MODELS:
                original = torch_model(name, seed=MODELS.index(name))
                to_onnx(original, path, TORCH_MODELS[name].input_shape)
                canonical = original.canonical()
            else:
                proto, weights = KERAS_MODELS[name]()
                onnx.save(proto, str(path))
                original, canonical = None, keras_canonical(weights, KERAS_SHAPES[name])
            self.cache[name] = (from_onnx(path), canonical, original)
        return self.cache[name]


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> _Models:
    return _Models(tmp_path_factory.mktemp("onnx_models"))


def _shape(model: nn.Module) -> tuple[int, ...]:
    return tuple(model.input_shape)  # from_onnx's per-sample NCHW shape


def _balls(shape: tuple[int, ...], seed: int) -> list[evax.Ball]:
    """Three random balls of 3 centres: L-inf with per-sample eps, L2, L-inf with fixed pixels + domain."""
    gen = torch.Generator().manual_seed(seed)
    center = torch.rand((3, *shape), generator=gen)
    d = math.prod(shape)
    eps_inf = (0.5 + torch.rand(3, generator=gen)) * min(0.05, 2.0 / math.sqrt(d))
    fixed = torch.rand((3, *shape), generator=gen) < 0.5
    return [
        evax.Ball(center, eps_inf),
        evax.Ball(center, 0.5, p=2),
        evax.Ball(center, 0.1, fixed=fixed, domain=(0.0, 1.0)),
    ]


def _assert_same_bounds(got: evax.Bounds, want: evax.Bounds, what: str) -> None:
    scale = 1.0 + max(want.lower.abs().max().item(), want.upper.abs().max().item())
    for side in ("lower", "upper"):
        torch.testing.assert_close(
            getattr(got, side), getattr(want, side), rtol=1e-5, atol=1e-5 * scale, msg=lambda m, s=side: f"{what} {s}: {m}"
        )


def test_models_declare_their_input(models: _Models) -> None:
    """from_onnx gives every model its NCHW per-sample shape (torch exports: NCHW; Keras: wrapped)."""
    for name in MODELS:
        model = models[name][0]
        assert model.input_layout == ("NHWC" if name in KERAS_MODELS else "NCHW")
        h, w, c = KERAS_SHAPES.get(name, (0, 0, 0))
        assert _shape(model) == (TORCH_MODELS[name].input_shape if name in TORCH_MODELS else (c, h, w))


@pytest.mark.parametrize("name", MODELS)
def test_canonical_form_is_the_same_function(models: _Models, name: str) -> None:
    """Checks the test's own reference: the canonical model computes the ONNX model's function."""
    model, canonical, original = models[name]
    x = torch.rand((16, *_shape(model)), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        out = model(x)
        torch.testing.assert_close(canonical(x), out, rtol=1e-5, atol=1e-5)
        if original is not None:
            torch.testing.assert_close(original(x), out, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("name", MODELS)
def test_onnx_bounds_equal_torch_bounds(models: _Models, name: str, method: str) -> None:
    model, canonical, _ = models[name]
    for i, ball in enumerate(_balls(_shape(model), seed=MODELS.index(name))):
        want = evax.bound(canonical, ball, method)
        got = evax.bound(model, ball, method)
        _assert_same_bounds(got, want, f"{name} {method} ball {i}")


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("name", list(TORCH_MODELS))
def test_original_torch_bounds_equal_canonical(models: _Models, name: str, method: str) -> None:
    """The torch models themselves (torch.reshape, @, permute/transpose, torch.cat, F.pad in torch code)."""
    model, canonical, original = models[name]
    for i, ball in enumerate(_balls(_shape(model), seed=MODELS.index(name))):
        _assert_same_bounds(
            evax.bound(original, ball, method), evax.bound(canonical, ball, method), f"{name} {method} ball {i}"
        )


@pytest.mark.parametrize("name", MODELS)
def test_sampled_outputs_inside_bounds(models: _Models, name: str) -> None:
    model = models[name][0]
    gen = torch.Generator().manual_seed(7)
    for ball in _balls(_shape(model), seed=100 + MODELS.index(name)):
        pts = ball.sample(200, generator=gen)  # (200, 3, C, H, W), corners included
        with torch.no_grad():
            out = model(pts.reshape(-1, *ball.shape)).reshape(pts.shape[0], ball.batch_size, -1)
        for method in METHODS:
            b = evax.bound(model, ball, method)
            tol = 1e-5 * (1 + out.abs())
            assert (b.lower <= b.upper).all(), method
            below = (out < b.lower - tol).sum().item()
            above = (out > b.upper + tol).sum().item()
            assert below == 0 and above == 0, f"{name} {method}: {below} below / {above} above the bounds"
