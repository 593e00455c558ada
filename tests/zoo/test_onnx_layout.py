"""from_onnx's input layout: NHWC graphs (Keras / tf2onnx exports) are wrapped to take NCHW.

Also pins down what onnx2torch-converted graphs look like once re-traced by torch.fx (what
the bound engine sees): :func:`test_retraced_graph`.
"""

from __future__ import annotations

import copy
import operator
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from evax.errors import InvalidInputError
from evax.zoo import from_onnx, load_model, to_onnx
from evax.zoo.layers import ChannelsLast

onnx = pytest.importorskip("onnx")

from onnx.reference import ReferenceEvaluator  # noqa: E402

from zoo.onnx_graphs import (  # noqa: E402
    KERAS_MODELS,
    KERAS_SHAPES,
    TORCH_MODELS,
    NHWCReference,
    flatten_graph,
    keras_canonical,
    keras_mlp,
    torch_model,
)


@pytest.fixture(autouse=True)
def onnx_stack() -> None:
    """Skip when onnx2torch is not installed (it is in the `zoo` extra)."""
    from evax.zoo import MissingDependencyError
    from evax.zoo.onnx_io import _import_onnx2torch

    try:
        _import_onnx2torch()
    except MissingDependencyError as exc:
        pytest.skip(str(exc))


def _save(proto, tmp_path: Path, name: str) -> Path:
    path = tmp_path / f"{name}.onnx"
    onnx.save(proto, str(path))
    return path


def _keras(name: str, tmp_path: Path):
    proto, weights = KERAS_MODELS[name]()
    return proto, weights, _save(proto, tmp_path, name)


def _nchw(shape_hwc, n: int = 4, seed: int = 0) -> torch.Tensor:
    h, w, c = shape_hwc
    return torch.rand((n, c, h, w), generator=torch.Generator().manual_seed(seed))


# ----------------------------------------------------------------------------- detection


@pytest.mark.parametrize(
    ("dims", "layout", "shape"),
    [
        (["N", 28, 28, 1], "NHWC", (1, 28, 28)),
        (["N", 32, 32, 3], "NHWC", (3, 32, 32)),
        (["N", 16, 12, 4], "NHWC", (4, 16, 12)),
        ([2, 8, 6, 3], "NHWC", (3, 8, 6)),
        (["N", 1, 28, 28], "NCHW", (1, 28, 28)),
        (["N", 3, 32, 32], "NCHW", (3, 32, 32)),
        ([1, 4, 5, 6], "NCHW", (4, 5, 6)),
    ],
)
def test_auto_layout(tmp_path: Path, dims, layout: str, shape) -> None:
    model = from_onnx(_save(flatten_graph(dims), tmp_path, "g"))
    assert model.input_layout == layout
    assert model.input_shape == shape
    assert not model.training
    if layout == "NHWC":
        assert isinstance(model, ChannelsLast)
        assert model.onnx_input_shape == tuple(dims[1:])
    else:
        assert isinstance(model, torch.fx.GraphModule)  # unchanged for NCHW callers
    x = torch.rand(2, *shape)
    expected = x.permute(0, 2, 3, 1) if layout == "NHWC" else x
    with torch.no_grad():
        torch.testing.assert_close(model(x), expected.flatten(1))


@pytest.mark.parametrize(
    "dims",
    [
        ["N", 3, 4, 4],  # both plausible
        ["N", 1, 8, 3],
        ["N", 8, 8, 8],  # neither
        ["N", 2, 6, 6],
        ["N", "C", "H", "W"],  # symbolic
        ["N", 3, "H", "W"],
        ["N", "H", "W", 3],
    ],
)
def test_ambiguous_layout_raises(tmp_path: Path, dims) -> None:
    path = _save(flatten_graph(dims), tmp_path, "g")
    with pytest.raises(InvalidInputError, match='layout="nchw" or layout="nhwc"'):
        from_onnx(path)


def test_unknown_dims(tmp_path: Path) -> None:
    """Dims with neither a value nor a name (onnx.checker rejects an input without any shape)."""
    graph = onnx.helper.make_graph(
        [onnx.helper.make_node("Relu", ["x"], ["y"])],
        "unknown",
        [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [None] * 4)],
        [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [None] * 4)],
    )
    proto = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 13)])
    onnx.checker.check_model(proto)
    path = _save(proto, tmp_path, "unknown")
    with pytest.raises(InvalidInputError, match=r'\(\?, \?, \?, \?\) has symbolic dimensions.*layout="nchw"'):
        from_onnx(path)
    model = from_onnx(path, layout="nhwc")
    assert isinstance(model, ChannelsLast) and model.input_shape is None
    x = torch.randn(2, 3, 4, 5)
    torch.testing.assert_close(model(x), x.permute(0, 2, 3, 1).relu())  # any NCHW shape goes
    assert from_onnx(path, layout="nchw").input_shape is None


@pytest.mark.parametrize(
    ("dims", "layout", "shape"),
    [
        (["N", 3, 4, 4], "nchw", (3, 4, 4)),
        (["N", 3, 4, 4], "NHWC", (4, 3, 4)),
        (["N", 28, 28, 1], "nchw", (28, 28, 1)),  # the caller knows better
        (["N", 1, 28, 28], " NHWC ", (28, 1, 28)),
        (["N", 8, 8, 8], "nhwc", (8, 8, 8)),
        (["N", "H", "W", 3], "nhwc", None),
        (["N", 3, "H", "W"], "nchw", None),
    ],
)
def test_explicit_layout(tmp_path: Path, dims, layout: str, shape) -> None:
    model = from_onnx(_save(flatten_graph(dims), tmp_path, "g"), layout=layout)
    assert model.input_layout == layout.strip().upper()
    assert isinstance(model, ChannelsLast) == (model.input_layout == "NHWC")
    assert model.input_shape == shape


@pytest.mark.parametrize("layout", ["NHW", "channels_last", "", 3, None])
def test_bad_layout_value_raises(tmp_path: Path, layout) -> None:
    path = _save(flatten_graph(["N", 28, 28, 1]), tmp_path, "g")
    with pytest.raises(InvalidInputError, match='layout must be "auto", "nchw" or "nhwc"'):
        from_onnx(path, layout=layout)
    with pytest.raises(InvalidInputError, match="layout must be"):  # checked before the file
        from_onnx(tmp_path / "missing.onnx", layout=layout)


def test_flat_input_used_as_is(tmp_path: Path) -> None:
    path = _save(flatten_graph(["N", 784]), tmp_path, "flat")
    model = from_onnx(path)
    assert isinstance(model, torch.fx.GraphModule)
    assert model.input_layout is None and model.input_shape == (784,)
    assert "input (784,)" in repr(model)
    for layout in ("nchw", "nhwc"):
        with pytest.raises(InvalidInputError, match="leave layout='auto'"):
            from_onnx(path, layout=layout)


# ----------------------------------------------------------------------------- the wrapper


@pytest.mark.parametrize("name", list(KERAS_MODELS))
def test_wrapper_matches_onnx_on_nhwc_data(tmp_path: Path, name: str) -> None:
    proto, weights, path = _keras(name, tmp_path)
    model = from_onnx(path)
    assert isinstance(model, ChannelsLast) and model.input_layout == "NHWC"
    x = _nchw(KERAS_SHAPES[name])
    x_nhwc = x.permute(0, 2, 3, 1).contiguous()
    onnx_out = torch.from_numpy(ReferenceEvaluator(proto).run(None, {"x": x_nhwc.numpy()})[0])
    with torch.no_grad():
        out = model(x)
        torch.testing.assert_close(out, onnx_out, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(out, NHWCReference(weights)(x_nhwc), atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(out, keras_canonical(weights, KERAS_SHAPES[name])(x), atol=1e-5, rtol=1e-5)


def test_colour_pixel_order(tmp_path: Path) -> None:
    """An NCHW tensor given to the colour model is read as the picture it is.

    The raw graph accepts the same tensor (its Reshape takes any layout) and silently reads
    the pixels in the wrong order: that is what the wrapper is for.
    """
    proto, weights, path = _keras("keras_mlp_colour", tmp_path)
    model = from_onnx(path)
    reference = NHWCReference(weights)
    x = _nchw((32, 32, 3), seed=3)
    with torch.no_grad():
        expected = reference(x.permute(0, 2, 3, 1))
        torch.testing.assert_close(model(x), expected, atol=1e-5, rtol=1e-5)
        wrong = model.model(x)  # the unwrapped graph, fed NCHW: runs, but scrambles the pixels
        assert (wrong - expected).abs().max() > 0.05

    # one pixel at a time: channel c of pixel (h, w) drives the NHWC row h*W*C + w*C + c of W1
    x = torch.zeros(1, 3, 32, 32, requires_grad=True)
    model(x)[0, 0].backward()
    grad = x.grad[0]
    for c, h, w in [(0, 0, 1), (2, 5, 7), (1, 31, 30)]:
        x_ref = torch.zeros(1, 32, 32, 3, requires_grad=True)
        reference(x_ref)[0, 0].backward()
        assert torch.isclose(grad[c, h, w], x_ref.grad[0, h, w, c], atol=1e-6)
    assert not torch.allclose(grad.flatten(), x_ref.grad.flatten())  # the two orders do differ


def test_repr_says_the_layout(tmp_path: Path) -> None:
    _, _, path = _keras("keras_mlp_grey", tmp_path)
    model = from_onnx(path)
    assert repr(model) == (
        "ChannelsLast(onnx 'keras_mlp_grey.onnx', input NHWC (28, 28, 1) -> takes NCHW (1, 28, 28))"
    )
    nchw = from_onnx(_save(flatten_graph(["N", 1, 28, 28]), tmp_path, "nchw"))
    assert repr(nchw).splitlines()[1].strip() == "onnx 'nchw.onnx', input NCHW (1, 28, 28)"
    bare = ChannelsLast(nn.Flatten())
    assert repr(bare) == "ChannelsLast(input NHWC -> takes NCHW)"


def test_wrapper_checks_eager_inputs(tmp_path: Path) -> None:
    _, _, path = _keras("keras_mlp_colour", tmp_path)
    model = from_onnx(path)
    x = _nchw((32, 32, 3))
    with pytest.raises(InvalidInputError, match="looks like an NHWC tensor"):
        model(x.permute(0, 2, 3, 1))
    with pytest.raises(InvalidInputError, match=r"per-sample shape \(3, 32, 32\), got \(3, 16, 16\)"):
        model(x[:, :, :16, :16])
    with pytest.raises(InvalidInputError, match="takes images"):
        model(x[0])
    with pytest.raises(InvalidInputError, match="positive sizes"):
        ChannelsLast(nn.Flatten(), (28, 28))


@pytest.mark.parametrize("name", list(KERAS_MODELS))
def test_wrapper_is_fx_traceable(tmp_path: Path, name: str) -> None:
    _, _, path = _keras(name, tmp_path)
    model = from_onnx(path)
    traced = torch.fx.symbolic_trace(model)
    first = next(n for n in traced.graph.nodes if n.op != "placeholder")
    assert (first.op, first.target, first.args[1:]) == ("call_method", "permute", (0, 2, 3, 1))
    x = _nchw(KERAS_SHAPES[name])
    with torch.no_grad():
        torch.testing.assert_close(traced(x), model(x))


def test_attributes_survive_copies(tmp_path: Path) -> None:
    nchw = from_onnx(_save(flatten_graph(["N", 3, 8, 8]), tmp_path, "nchw"))
    clone = copy.deepcopy(nchw)  # a GraphModule deepcopy rebuilds the module
    assert (clone.input_layout, clone.input_shape) == ("NCHW", (3, 8, 8))
    assert "input NCHW (3, 8, 8)" in repr(clone)
    _, _, path = _keras("keras_conv_colour", tmp_path)
    wrapped = copy.deepcopy(from_onnx(path))
    assert (wrapped.input_layout, wrapped.input_shape) == ("NHWC", (3, 16, 16))


@pytest.mark.parametrize("name,pretrained", [("mnist-mlp", True), ("mnist-lenet5", False)])
def test_torch_export_is_nchw(tmp_path: Path, name: str, pretrained: bool) -> None:
    model = load_model(name, pretrained=pretrained)
    loaded = from_onnx(to_onnx(model, tmp_path / f"{name}.onnx", (1, 28, 28)))
    assert isinstance(loaded, torch.fx.GraphModule)
    assert (loaded.input_layout, loaded.input_shape) == ("NCHW", (1, 28, 28))


def test_keras_mlp_repro_shape(tmp_path: Path) -> None:
    """The issue's model: (N, 28, 28, 1), Reshape [-1, 784], MatMul + Add (checked by onnx.checker)."""
    proto, _ = keras_mlp()
    dims = [d.dim_param or d.dim_value for d in proto.graph.input[0].type.tensor_type.shape.dim]
    assert dims == ["N", 28, 28, 1]
    assert [n.op_type for n in proto.graph.node] == ["Reshape", "MatMul", "Add", "Relu", "MatMul", "Add"]


# ----------------------------------------------------------------------------- what the engine sees


def _ops(gm: torch.fx.GraphModule) -> list[torch.fx.Node]:
    return [n for n in gm.graph.nodes if n.op in ("call_function", "call_method", "call_module")]


def _attr(gm: torch.fx.GraphModule, node: torch.fx.Node) -> torch.Tensor:
    value = gm
    for part in node.target.split("."):
        value = getattr(value, part)
    return value


def _kind(gm: torch.fx.GraphModule, n: torch.fx.Node):
    if n.op == "call_module":
        return type(gm.get_submodule(n.target))
    return n.target


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("exports")
    return {
        name: to_onnx(torch_model(name), folder / f"{name}.onnx", TORCH_MODELS[name].input_shape)
        for name in TORCH_MODELS
    }


def test_retraced_graph_keras(tmp_path: Path) -> None:
    """tf2onnx-style ops, re-traced (ChannelsLast's permute comes first)."""
    mlp = torch.fx.symbolic_trace(from_onnx(_keras("keras_mlp_colour", tmp_path)[2]))
    ops = _ops(mlp)
    assert [_kind(mlp, n) for n in ops] == [
        "permute", torch.reshape, torch.matmul, operator.add, nn.ReLU, torch.matmul, operator.add
    ]
    permute, reshape, matmul, add = ops[:4]
    assert permute.op == "call_method" and permute.args[1:] == (0, 2, 3, 1)
    assert reshape.args[1] == (-1, 3072)  # the int64 initializer, folded to a tuple literal
    assert matmul.args[0] is reshape and matmul.args[1].op == "get_attr"
    assert tuple(_attr(mlp, matmul.args[1]).shape) == (3072, 16)
    assert add.args[0] is matmul and add.args[1].op == "get_attr"

    conv = torch.fx.symbolic_trace(from_onnx(_keras("keras_conv_colour", tmp_path)[2]))
    ops = _ops(conv)
    assert [_kind(conv, n) for n in ops] == [
        "permute", "permute", nn.Conv2d, nn.ReLU, nn.MaxPool2d, "permute", torch.reshape, torch.matmul,
        operator.add,
    ]
    assert ops[1].args[1] == [0, 3, 1, 2]  # ONNX Transpose: one list argument
    assert ops[5].args[1] == [0, 2, 3, 1]
    assert ops[6].args[1] == (-1, 64)  # 4 x 4 x 4 after the stride-2 conv and the pool


@pytest.mark.parametrize(
    ("name", "kinds"),
    [
        ("reshape_matmul", [torch.reshape, nn.Conv2d, nn.ReLU, torch.reshape, torch.matmul, operator.add,
                            nn.ReLU, nn.Linear]),
        ("permute", ["permute", nn.Conv2d, nn.ReLU, "permute", torch.reshape, nn.Linear]),
        ("concat", [nn.Conv2d, nn.Conv2d, torch.cat, nn.ReLU, nn.MaxPool2d, nn.Flatten, nn.Linear,
                    nn.Linear, torch.cat, nn.ReLU, nn.Linear]),
        ("pad", [F.pad, nn.Conv2d, nn.ReLU, F.pad, nn.Flatten, nn.Linear]),
        ("conv_pool_gemm", [nn.Conv2d, nn.ReLU, nn.MaxPool2d, nn.Flatten, nn.Linear, nn.ReLU, nn.Linear]),
    ],
)
def test_retraced_graph_torch_export(exported: dict[str, Path], name: str, kinds) -> None:
    """torch.onnx.export -> onnx2torch -> torch.fx.symbolic_trace, op by op.

    Constant subgraphs (the Shape/ConstantOfShape/Slice/Concat/Cast chain the exporter makes
    for F.pad's pads, Constant nodes of Reshape shapes) are evaluated while tracing and vanish:
    their values appear as Python literals.
    """
    gm = torch.fx.symbolic_trace(from_onnx(exported[name]))
    ops = _ops(gm)
    assert [_kind(gm, n) for n in ops] == kinds
    by_kind = {}
    for n in ops:
        by_kind.setdefault(_kind(gm, n), []).append(n)
    if name == "reshape_matmul":
        assert [n.args[1] for n in by_kind[torch.reshape]] == [(-1, 1, 12, 9), (-1, 210)]
        assert by_kind[torch.matmul][0].args[1].op == "get_attr"
    if name == "permute":
        assert [n.args[1] for n in by_kind["permute"]] == [[0, 1, 3, 2], [0, 3, 2, 1]]
        assert by_kind[torch.reshape][0].args[1] == (-1, 90)
    if name == "concat":
        for cat in by_kind[torch.cat]:
            assert isinstance(cat.args[0], tuple) and len(cat.args[0]) == 2 and cat.args[1] == 1
    if name == "pad":
        zero, const = by_kind[F.pad]
        assert zero.args[1] == [1, 2, 0, 1, 0, 0, 0, 0]  # torch order, padded to all 4 dims
        assert zero.kwargs == {"mode": "constant", "value": 0.0}
        assert const.args[1] == [1, 1, 1, 1, 0, 0, 0, 0]
        value = const.kwargs["value"]  # a 0-d tensor constant, not a float
        assert value.op == "get_attr" and float(_attr(gm, value)) == 0.25
