"""Bring your own model: ``from_onnx(path)`` loads an ONNX image classifier as a torch module.

Keras / TensorFlow users (the EVA paper's own stack) export with ``tf2onnx``; PyTorch users
with ``torch.onnx.export(..., dynamo=False)``. The conversion is onnx2torch's; the result is in
eval mode and always takes channel-first images ``(N, C, H, W)``, the layout evax works with:

* an NCHW graph (a torch export) comes back as the converted ``torch.fx.GraphModule``;
* an NHWC graph (a Keras export: input ``(N, H, W, C)``, usually followed by a Transpose to
  NCHW before the first Conv) comes back wrapped in :class:`evax.zoo.layers.ChannelsLast`,
  which permutes NCHW inputs to NHWC before running the graph. Without it, an NCHW tensor
  given to an NHWC MLP runs without error and reads the pixels in the wrong order.

The layout is read from the graph's declared input shape (``layout="auto"``), or given. Both
kinds of returned module carry ``input_layout`` (the ONNX graph's layout: ``"NCHW"``,
``"NHWC"``, or None for a non-image input such as ``(N, D)``) and ``input_shape`` (the
per-sample shape the returned module takes, NCHW order; None where the ONNX graph leaves a
dimension symbolic), and their repr says both.

onnx2torch imports torchvision at import time only for its NMS and RoiAlign converters.
Where torchvision is missing, or installed but unusable (e.g. a CUDA build beside a CPU-only
torch), a stand-in is used while onnx2torch is imported; a graph that actually contains NMS
or RoiAlign then raises :class:`MissingDependencyError` when run.
"""

from __future__ import annotations

import functools
import importlib
import operator
import sys
import types
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from evax.errors import DataSourceError, InvalidInputError
from evax.zoo.deps import MissingDependencyError
from evax.zoo.layers import ChannelsLast

_INSTALL = (
    "pip install torch==<your torch version> 'evax[zoo]' (naming your torch keeps pip from "
    "replacing it with the one another torchvision wants)"
)


def _torchvision_usable() -> bool:
    try:
        importlib.import_module("torchvision.ops")
    except Exception:  # noqa: BLE001 - any failure (missing, ABI mismatch) means unusable
        return False
    return True


def _unavailable(*args: Any, **kwargs: Any) -> Any:
    raise MissingDependencyError(
        "this ONNX graph uses NMS / RoiAlign, which onnx2torch runs with torchvision; "
        "install a torchvision matching your torch"
    )


def _import_onnx2torch() -> tuple[Any, Any]:
    """Import ``onnx`` and ``onnx2torch``, standing in for torchvision when it is unusable."""
    try:
        onnx = importlib.import_module("onnx")
    except ImportError as exc:
        raise MissingDependencyError(f"from_onnx needs the onnx package: {_INSTALL}") from exc
    if "onnx2torch" in sys.modules:
        return onnx, sys.modules["onnx2torch"]
    if importlib.util.find_spec("onnx2torch") is None:
        raise MissingDependencyError(f"from_onnx needs the onnx2torch package: {_INSTALL}")
    if _torchvision_usable():
        return onnx, importlib.import_module("onnx2torch")
    saved = {
        k: v for k, v in sys.modules.items() if k == "torchvision" or k.startswith("torchvision.")
    }
    for k in saved:
        del sys.modules[k]
    stub, ops = types.ModuleType("torchvision"), types.ModuleType("torchvision.ops")
    ops.nms = ops.box_convert = ops.roi_align = _unavailable  # type: ignore[attr-defined]
    stub.ops = ops  # type: ignore[attr-defined]
    sys.modules["torchvision"], sys.modules["torchvision.ops"] = stub, ops
    try:
        return onnx, importlib.import_module("onnx2torch")
    finally:
        sys.modules.pop("torchvision", None)
        sys.modules.pop("torchvision.ops", None)
        sys.modules.update(saved)


def from_onnx(path: str | Path, layout: str = "auto") -> nn.Module:
    """Load the ONNX model at ``path`` as a torch module (eval mode) taking NCHW images.

    Args:
        path: an ``.onnx`` file.
        layout: the layout of the graph's image input. ``"auto"`` (default) reads the declared
            input shape: a rank-4 input ``(N, a, b, c)`` is NHWC when ``c`` is a channel count
            (1, 3 or 4) and ``a`` is not, NCHW when ``a`` is one and ``c`` is not; anything
            else (both or neither plausible, a symbolic or undeclared ``a`` or ``c``) is
            ambiguous and raises. ``"nchw"`` / ``"nhwc"`` (any case) say it, for a graph whose
            input has rank 4 or no declared shape. Inputs of another rank, such as ``(N, D)``,
            and graphs with several inputs are used as they are (``"auto"`` only).

    Returns:
        For an NCHW (or non-image) graph, the ``torch.fx.GraphModule`` computing the ONNX
        graph. For an NHWC graph, :class:`evax.zoo.layers.ChannelsLast` around it: it takes
        ``(N, C, H, W)`` and permutes to ``(N, H, W, C)`` itself, so pass evax (balls, bounds,
        attributions) NCHW tensors as for any other model. Either way the module has
        ``input_layout`` (``"NCHW"``, ``"NHWC"``, or None for a non-image input) and
        ``input_shape`` (the per-sample shape it takes, NCHW order, or None where the ONNX
        graph leaves a dimension symbolic), and its repr says both.

    Raises:
        DataSourceError: no such file.
        InvalidInputError: the file is not a valid ONNX model, uses an op onnx2torch cannot
            convert (the message names it), ``layout`` is not one of the values above, or
            ``layout="auto"`` cannot tell NCHW from NHWC (the message says to pass
            ``layout="nchw"`` or ``layout="nhwc"``).
        MissingDependencyError: onnx / onnx2torch are not installed.
    """
    wanted = _check_layout(layout)
    p = Path(path).expanduser()
    if not p.is_file():
        raise DataSourceError(f"no ONNX file at {str(p)!r}")
    onnx, onnx2torch = _import_onnx2torch()
    try:
        proto = onnx.load(str(p))
        onnx.checker.check_model(proto)
    except Exception as exc:  # noqa: BLE001 - onnx raises several unrelated types
        raise InvalidInputError(f"{p} is not a valid ONNX model: {exc}") from exc
    dims = _declared_input(proto)
    resolved = _resolve_layout(wanted, dims, p)
    try:
        module = onnx2torch.convert(proto)
    except NotImplementedError as exc:
        raise InvalidInputError(f"{p}: onnx2torch cannot convert it: {exc}") from exc
    module = _plain_arithmetic(module).eval()
    source = f"onnx {p.name!r}"
    known = isinstance(dims, list) and len(dims) > 1 and all(d is not None for d in dims[1:])
    per_sample = tuple(dims[1:]) if known else None
    if resolved == "NHWC":
        return ChannelsLast(module, per_sample, source=source).eval()
    _tag(module, resolved, per_sample, source)
    return module


_LAYOUTS = {"auto": "auto", "nchw": "NCHW", "nhwc": "NHWC"}
_CHANNELS = {1, 3, 4}  # channel counts that mark the channel axis (grey, RGB, RGBA)
_ASK = 'pass layout="nchw" or layout="nhwc" to from_onnx'


def _check_layout(layout: object) -> str:
    key = layout.strip().lower() if isinstance(layout, str) else None
    if key not in _LAYOUTS:
        raise InvalidInputError(f'layout must be "auto", "nchw" or "nhwc", got {layout!r}')
    return _LAYOUTS[key]


def _declared_input(proto: Any) -> list[int | None] | None | int:
    """The declared dims of the graph's single input (None entries: symbolic).

    None where the input's shape is not declared; the number of inputs where there are
    several (or none).
    """
    initializers = {t.name for t in proto.graph.initializer}
    inputs = [v for v in proto.graph.input if v.name not in initializers]
    if len(inputs) != 1:
        return len(inputs)
    tensor = inputs[0].type.tensor_type
    if not tensor.HasField("shape"):
        return None
    return [d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else None for d in tensor.shape.dim]


def _show(dims: list[int | None]) -> str:
    return "(" + ", ".join("?" if d is None else str(d) for d in dims) + ")"


def _resolve_layout(wanted: str, dims: list[int | None] | None | int, path: Path) -> str | None:
    """``"NCHW"``, ``"NHWC"``, or None (not an image input: used as it is)."""
    if isinstance(dims, int):
        if wanted != "auto":
            raise InvalidInputError(
                f"{path}: layout={wanted.lower()!r} needs a graph with one image input, this one has {dims}"
            )
        return None
    if dims is not None and len(dims) != 4:
        if wanted != "auto":
            raise InvalidInputError(
                f"{path}: layout={wanted.lower()!r} is for image inputs (N, C, H, W) or (N, H, W, C); "
                f"this graph's input is {_show(dims)}: leave layout='auto'"
            )
        return None
    if wanted != "auto":
        return wanted
    if dims is None:
        raise InvalidInputError(f"{path}: the ONNX graph does not declare its input shape; {_ASK}")
    second, last = dims[1], dims[3]
    first_is_channel = second in _CHANNELS
    last_is_channel = last in _CHANNELS
    if second is None or last is None:
        why = "has symbolic dimensions"
    elif last_is_channel and not first_is_channel:
        return "NHWC"
    elif first_is_channel and not last_is_channel:
        return "NCHW"
    elif first_is_channel:
        why = "could be either NCHW or NHWC"
    else:
        why = "has no dimension that looks like a channel count (1, 3 or 4)"
    raise InvalidInputError(f"{path}: cannot tell the image layout: the input {_show(dims)} {why}; {_ASK}")


def _constant_text(text: str) -> str:
    return text


def _tag(
    module: torch.fx.GraphModule, layout: str | None, shape: tuple[int, ...] | None, source: str
) -> None:
    """Set ``input_layout``, ``input_shape`` and a repr line on a converted GraphModule.

    They are also listed as user-preserved attributes, which ``copy.deepcopy`` of a
    GraphModule keeps (it rebuilds the module and drops other attributes). A pickled copy
    keeps ``input_layout`` and ``input_shape`` but not the repr line.
    """
    shown = "(per-sample shape not declared)" if shape is None else str(shape)
    text = f"{source}, input {layout} {shown}" if layout else f"{source}, input {shown}"
    attrs = {
        "input_layout": layout,
        "input_shape": shape,
        "extra_repr": functools.partial(_constant_text, text),
    }
    for name, value in attrs.items():
        setattr(module, name, value)
    key = getattr(torch.fx.graph_module, "_USER_PRESERVED_ATTRIBUTES_KEY", None)
    meta = getattr(module, "meta", None)
    if key is not None and isinstance(meta, dict):
        meta.setdefault(key, {}).update(attrs)


_BINARY_OPS = {torch.add: operator.add, torch.sub: operator.sub, torch.mul: operator.mul}


def _plain_arithmetic(gm: torch.fx.GraphModule) -> torch.fx.GraphModule:
    """Replace onnx2torch's Add/Sub/Mul/Div modules by plain ``+ - * /`` graph nodes.

    onnx2torch wraps them in a module with Python control flow, which torch.fx (and so the
    bound engine, which re-traces models) cannot trace; as plain operators, an input
    normalisation ``(x - mean) / std`` is arithmetic with constants the engine supports.
    Only modern-opset nodes (no legacy ``broadcast``/``axis`` attributes) are rewritten.
    """
    changed = False
    for node in list(gm.graph.nodes):
        if node.op != "call_module":
            continue
        mod = gm.get_submodule(node.target)
        if type(mod).__name__ != "OnnxBinaryMathOperation" or mod.broadcast is not None:
            continue
        fn = mod.math_op_function
        op = _BINARY_OPS.get(fn, operator.truediv if fn.__name__ == "_onnx_div" else None)
        if op is None:
            continue
        with gm.graph.inserting_after(node):
            new = gm.graph.call_function(op, tuple(node.args), dict(node.kwargs))
        node.replace_all_uses_with(new)
        gm.graph.erase_node(node)
        changed = True
    if changed:
        gm.delete_all_unused_submodules()
        gm.recompile()
    return gm


def to_onnx(model: nn.Module, path: str | Path, input_shape: tuple[int, ...]) -> Path:
    """Export ``model`` (inputs ``(N, *input_shape)``) to ONNX with a dynamic batch axis.

    Uses torch's TorchScript exporter (``dynamo=False``, needs no onnxscript) at opset 17,
    whose ops onnx2torch converts (it lacks e.g. opset-19 ``Identity``).
    """
    p = Path(path).expanduser()
    example = torch.rand(2, *input_shape)
    was_training = model.training
    model.eval()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # TorchScript exporter notices
            torch.onnx.export(
                model, (example,), str(p), dynamo=False, opset_version=17, input_names=["input"],
                output_names=["logits"],
                dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
            )
    finally:
        model.train(was_training)
    return p
