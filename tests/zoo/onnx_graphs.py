"""ONNX graphs and torch models for the ONNX tests (tests/zoo/test_onnx_layout.py,
tests/bounds/test_exported_models.py). Everything is seeded and small.

Three kinds of models:

* hand-built ONNX graphs (:func:`keras_mlp`, :func:`keras_conv`) that mimic what tf2onnx makes
  of a Keras model: an NHWC input ``(N, H, W, C)``, ``Reshape`` with an int64 initializer
  shape ``[-1, K]``, ``MatMul`` + ``Add`` for Dense layers, and for convolutions a
  ``Transpose`` NHWC -> NCHW before the ``Conv`` and back before the ``Reshape`` (Keras
  flattens channels-last). Each returns the ``ModelProto`` (checked with ``onnx.checker``)
  and its weights, from which :func:`nhwc_reference` (a torch model on NHWC data) and
  :func:`keras_canonical` (the same function on NCHW data) are built;
* torch models written with the ops a torch export produces (:data:`TORCH_MODELS`: reshape,
  matmul with a weight + bias add, permute/transpose, cat of two branches, F.pad,
  Conv2d + ReLU + MaxPool2d, nn.Linear = Gemm), exported with ``evax.zoo.to_onnx``;
* for every model, a *canonical* NCHW torch model computing the same function with only the
  layers the bound engine has always supported (Conv2d, Linear, ReLU, MaxPool2d, Flatten,
  ``.view``): permutations, concatenations and paddings are folded into weights. Bounds of a
  model and of its canonical form must agree (the same neurons, the same affine maps).
"""

from __future__ import annotations

import numpy as np
import onnx
import torch
import torch.nn.functional as F
from onnx import TensorProto, helper, numpy_helper
from torch import nn

OPSET = 13  # what tf2onnx emits by default


# ----------------------------------------------------------------------------- helpers


def _rng(seed: int) -> np.random.Generator:
    return np.random.default_rng(seed)


def _f32(a: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(a, dtype=np.float32)


def _model(nodes, inits, in_dims, out_dims, name: str) -> onnx.ModelProto:
    graph = helper.make_graph(
        nodes,
        name,
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(in_dims))],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, list(out_dims))],
        [numpy_helper.from_array(v, k) for k, v in inits.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    onnx.checker.check_model(model, full_check=True)
    return model


def nhwc_order(shape_hwc: tuple[int, int, int]) -> torch.Tensor:
    """``idx[j]``: the NHWC-flattened position of the element at NCHW-flattened position ``j``."""
    h, w, c = shape_hwc
    return torch.arange(h * w * c).reshape(h, w, c).permute(2, 0, 1).flatten()


def linear(weight: torch.Tensor | np.ndarray, bias: torch.Tensor | np.ndarray | None) -> nn.Linear:
    """``nn.Linear`` with the given ``(out, in)`` weight and ``(out,)`` bias."""
    weight = torch.as_tensor(weight, dtype=torch.float32)
    layer = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None)
    with torch.no_grad():
        layer.weight.copy_(weight)
        if bias is not None:
            layer.bias.copy_(torch.as_tensor(bias, dtype=torch.float32))
    return layer


def permuted_input(layer: nn.Linear, perm: torch.Tensor) -> nn.Linear:
    """``layer`` applied to ``z[perm]`` instead of ``z``: ``L(z[perm]) == permuted_input(L, perm)(z)``."""
    weight = torch.zeros_like(layer.weight)
    weight[:, perm] = layer.weight.detach()
    return linear(weight, None if layer.bias is None else layer.bias.detach())


class View(nn.Module):
    """``x.view(N, *shape)`` (a supported reshape, written as a method call)."""

    def __init__(self, *shape: int) -> None:
        super().__init__()
        self.shape = shape

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.view(x.size(0), *self.shape)


# ----------------------------------------------------------------------------- Keras-like ONNX


def keras_mlp(
    shape_hwc: tuple[int, int, int] = (28, 28, 1), hidden: int = 16, classes: int = 10, seed: int = 0
) -> tuple[onnx.ModelProto, dict[str, np.ndarray]]:
    """tf2onnx's Keras ``Flatten -> Dense(relu) -> Dense``: input ``(N, H, W, C)``.

    ``Reshape(x, [-1, H*W*C]) -> MatMul W1 -> Add b1 -> Relu -> MatMul W2 -> Add b2``.
    """
    rng = _rng(seed)
    d = int(np.prod(shape_hwc))
    w = {
        "W1": _f32(rng.normal(size=(d, hidden)) * 1.5 / np.sqrt(d)),
        "b1": _f32(rng.normal(size=hidden) * 0.1),
        "W2": _f32(rng.normal(size=(hidden, classes)) * 1.0 / np.sqrt(hidden)),
        "b2": _f32(rng.normal(size=classes) * 0.1),
    }
    inits = {**w, "flat_shape": np.array([-1, d], dtype=np.int64)}
    nodes = [
        helper.make_node("Reshape", ["x", "flat_shape"], ["flat"]),
        helper.make_node("MatMul", ["flat", "W1"], ["h1"]),
        helper.make_node("Add", ["h1", "b1"], ["h1b"]),
        helper.make_node("Relu", ["h1b"], ["r1"]),
        helper.make_node("MatMul", ["r1", "W2"], ["h2"]),
        helper.make_node("Add", ["h2", "b2"], ["logits"]),
    ]
    return _model(nodes, inits, ["N", *shape_hwc], ["N", classes], "keras_mlp"), w


def keras_conv(
    shape_hwc: tuple[int, int, int] = (16, 16, 3), channels: int = 4, classes: int = 10, seed: int = 1
) -> tuple[onnx.ModelProto, dict[str, np.ndarray]]:
    """tf2onnx's Keras ``Conv2D(3x3, stride 2, same, relu) -> MaxPool2D(2) -> Flatten -> Dense``.

    ``Transpose[0,3,1,2] -> Conv -> Relu -> MaxPool -> Transpose[0,2,3,1] -> Reshape [-1, K]
    -> MatMul -> Add``: the graph computes in NCHW but flattens channels-last, like Keras.
    """
    rng = _rng(seed)
    h, w_, c = shape_hwc
    ho, wo = (h + 1) // 2 // 2, (w_ + 1) // 2 // 2
    k = ho * wo * channels
    w = {
        "Wc": _f32(rng.normal(size=(channels, c, 3, 3)) * 1.5 / np.sqrt(9 * c)),
        "bc": _f32(rng.normal(size=channels) * 0.1),
        "Wd": _f32(rng.normal(size=(k, classes)) * 1.5 / np.sqrt(k)),
        "bd": _f32(rng.normal(size=classes) * 0.1),
    }
    inits = {**w, "flat_shape": np.array([-1, k], dtype=np.int64)}
    nodes = [
        helper.make_node("Transpose", ["x"], ["x_nchw"], perm=[0, 3, 1, 2]),
        helper.make_node(
            "Conv", ["x_nchw", "Wc", "bc"], ["conv"], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1]
        ),
        helper.make_node("Relu", ["conv"], ["relu"]),
        helper.make_node("MaxPool", ["relu"], ["pool"], kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Transpose", ["pool"], ["pool_nhwc"], perm=[0, 2, 3, 1]),
        helper.make_node("Reshape", ["pool_nhwc", "flat_shape"], ["flat"]),
        helper.make_node("MatMul", ["flat", "Wd"], ["dense"]),
        helper.make_node("Add", ["dense", "bd"], ["logits"]),
    ]
    return _model(nodes, inits, ["N", *shape_hwc], ["N", classes], "keras_conv"), w


def flatten_graph(in_dims: list[int | str]) -> onnx.ModelProto:
    """A weightless graph ``Flatten(x)`` with the given declared input dims (layout tests)."""
    if len(in_dims) >= 2 and all(isinstance(d, int) for d in in_dims[1:]):
        out = ["N", int(np.prod(in_dims[1:]))]
    else:
        out = ["N", "D"]
    nodes = [helper.make_node("Flatten", ["x"], ["logits"], axis=1)]
    return _model(nodes, {}, in_dims, out, "flatten")


class NHWCReference(nn.Module):
    """The Keras model, written in torch from the same weights, on NHWC inputs ``(N, H, W, C)``."""

    def __init__(self, weights: dict[str, np.ndarray]) -> None:
        super().__init__()
        self.w = {k: torch.from_numpy(v) for k, v in weights.items()}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.w
        if "Wc" in w:  # keras_conv
            h = F.conv2d(x.permute(0, 3, 1, 2), w["Wc"], w["bc"], stride=2, padding=1)
            h = F.max_pool2d(F.relu(h), 2)
            return h.permute(0, 2, 3, 1).reshape(x.shape[0], -1) @ w["Wd"] + w["bd"]
        h = F.relu(x.reshape(x.shape[0], -1) @ w["W1"] + w["b1"])
        return h @ w["W2"] + w["b2"]


def keras_canonical(weights: dict[str, np.ndarray], shape_hwc: tuple[int, int, int]) -> nn.Module:
    """The Keras model as a plain NCHW torch model (NHWC flatten order folded into the Dense weights)."""
    if "Wc" in weights:
        conv = nn.Conv2d(weights["Wc"].shape[1], weights["Wc"].shape[0], 3, stride=2, padding=1)
        with torch.no_grad():
            conv.weight.copy_(torch.from_numpy(weights["Wc"]))
            conv.bias.copy_(torch.from_numpy(weights["bc"]))
        h, w_, _ = shape_hwc
        pooled = ((h + 1) // 2 // 2, (w_ + 1) // 2 // 2, conv.out_channels)
        dense = linear(weights["Wd"][nhwc_order(pooled).numpy()].T, weights["bd"])
        return nn.Sequential(conv, nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), dense).eval()
    first = linear(weights["W1"][nhwc_order(shape_hwc).numpy()].T, weights["b1"])
    return nn.Sequential(nn.Flatten(), first, nn.ReLU(), linear(weights["W2"].T, weights["b2"])).eval()


# ----------------------------------------------------------------------------- torch models


class ReshapeMatMul(nn.Module):
    """``torch.reshape`` to 4-d and 2-d constant shapes with -1, ``h @ W + b``, then Gemm."""

    input_shape = (3, 6, 6)

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 3, 3)
        self.W = nn.Parameter(torch.randn(210, 16) / 14)
        self.b = nn.Parameter(torch.randn(16) * 0.1)
        self.fc = nn.Linear(16, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.reshape(x, (-1, 1, 12, 9))
        h = torch.relu(self.conv(h))  # (3, 10, 7)
        h = torch.reshape(h, (-1, 210))
        h = torch.relu(h @ self.W + self.b)
        return self.fc(h)

    def canonical(self) -> nn.Module:
        return nn.Sequential(
            View(1, 12, 9),
            self.conv,
            nn.ReLU(),
            nn.Flatten(),
            linear(self.W.detach().T, self.b.detach()),
            nn.ReLU(),
            self.fc,
        ).eval()


class Permute(nn.Module):
    """``x.permute`` (swap H and W) before a conv, ``h.transpose(1, 3)`` after it."""

    input_shape = (3, 6, 5)

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 3, padding=1)
        self.fc = nn.Linear(90, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x.permute(0, 1, 3, 2)  # (3, 5, 6)
        h = torch.relu(self.conv(h))  # (3, 5, 6)
        h = h.transpose(1, 3)  # (6, 5, 3)
        return self.fc(h.reshape(-1, 90))

    def canonical(self) -> nn.Module:
        # conv(x^T, K) = conv(x, K^T)^T (^T swaps H and W; symmetric padding)
        conv = nn.Conv2d(3, 3, 3, padding=1)
        with torch.no_grad():
            conv.weight.copy_(self.conv.weight.transpose(2, 3))
            conv.bias.copy_(self.conv.bias)
        canon = torch.arange(90).reshape(3, 6, 5)  # canonical activation positions
        perm = canon.transpose(1, 2).transpose(0, 2).flatten()  # (no batch dim: h.transpose(1, 3))
        return nn.Sequential(conv, nn.ReLU(), nn.Flatten(), permuted_input(self.fc, perm)).eval()


class Concat(nn.Module):
    """``torch.cat`` of two conv branches (channels) and of two linear branches (features)."""

    input_shape = (3, 6, 6)

    def __init__(self) -> None:
        super().__init__()
        self.conv_a = nn.Conv2d(3, 3, 3, padding=1)
        self.conv_b = nn.Conv2d(3, 2, 1)
        self.pool = nn.MaxPool2d(2)
        self.fc_a = nn.Linear(45, 6)
        self.fc_b = nn.Linear(45, 4)
        self.fc = nn.Linear(10, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(torch.cat([self.conv_a(x), self.conv_b(x)], dim=1))  # (5, 6, 6)
        h = torch.flatten(self.pool(h), 1)  # 45
        h = torch.relu(torch.cat([self.fc_a(h), self.fc_b(h)], dim=1))  # 10
        return self.fc(h)

    def canonical(self) -> nn.Module:
        conv = nn.Conv2d(3, 5, 3, padding=1)
        with torch.no_grad():
            b_kernel = F.pad(self.conv_b.weight, (1, 1, 1, 1))  # 1x1 as a centred 3x3
            conv.weight.copy_(torch.cat([self.conv_a.weight, b_kernel]))
            conv.bias.copy_(torch.cat([self.conv_a.bias, self.conv_b.bias]))
        both = linear(
            torch.cat([self.fc_a.weight, self.fc_b.weight]).detach(),
            torch.cat([self.fc_a.bias, self.fc_b.bias]).detach(),
        )
        return nn.Sequential(conv, nn.ReLU(), self.pool, nn.Flatten(), both, nn.ReLU(), self.fc).eval()


class Pad(nn.Module):
    """``F.pad`` with zeros (asymmetric) before a conv, with a constant 0.25 after the ReLU."""

    input_shape = (3, 6, 6)
    pads = (1, 2, 0, 1)  # left, right, top, bottom

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 3)
        self.fc = nn.Linear(3 * 7 * 9, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.pad(x, self.pads)  # (3, 7, 9)
        h = torch.relu(self.conv(h))  # (3, 5, 7)
        h = F.pad(h, (1, 1, 1, 1), value=0.25)  # (3, 7, 9)
        return self.fc(torch.flatten(h, 1))

    def canonical(self) -> nn.Module:
        d = int(np.prod(self.input_shape))
        with torch.no_grad():

            def affine(z: torch.Tensor) -> torch.Tensor:
                return self.conv(F.pad(z.view(-1, *self.input_shape), self.pads)).flatten(1)

            bias = affine(torch.zeros(1, d))[0]
            jac = affine(torch.eye(d)).T - bias[:, None]  # (105, 108): columns are basis images
            inner = torch.zeros(3, 7, 9, dtype=torch.bool)
            inner[:, 1:-1, 1:-1] = True
            w = self.fc.weight.detach()
            head = linear(w[:, inner.flatten()], self.fc.bias.detach() + 0.25 * w[:, ~inner.flatten()].sum(1))
        return nn.Sequential(nn.Flatten(), linear(jac, bias), nn.ReLU(), head).eval()


class ConvPoolGemm(nn.Module):
    """Conv2d + ReLU + MaxPool2d + Flatten + nn.Linear (Gemm): all supported before the ONNX work."""

    input_shape = (3, 6, 6)

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(3, 4, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Flatten(),
            nn.Linear(36, 8),
            nn.ReLU(),
            nn.Linear(8, 5),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def canonical(self) -> nn.Module:
        return self


TORCH_MODELS: dict[str, type[nn.Module]] = {
    "reshape_matmul": ReshapeMatMul,
    "permute": Permute,
    "concat": Concat,
    "pad": Pad,
    "conv_pool_gemm": ConvPoolGemm,
}


def torch_model(name: str, seed: int = 0) -> nn.Module:
    """A seeded instance of ``TORCH_MODELS[name]`` in eval mode."""
    torch.manual_seed(seed)
    return TORCH_MODELS[name]().eval()


KERAS_MODELS = {
    "keras_mlp_grey": lambda: keras_mlp((28, 28, 1), seed=0),
    "keras_mlp_colour": lambda: keras_mlp((32, 32, 3), seed=1),
    "keras_conv_colour": lambda: keras_conv((16, 16, 3), seed=2),  # 32x32: 10x slower bounds
}
KERAS_SHAPES = {"keras_mlp_grey": (28, 28, 1), "keras_mlp_colour": (32, 32, 3), "keras_conv_colour": (16, 16, 3)}
