"""Bring your own model: ``from_onnx(path)`` loads an ONNX image classifier as a torch module.

Keras / TensorFlow users (the EVA paper's own stack) export with ``tf2onnx``; PyTorch users
with ``torch.onnx.export(..., dynamo=False)``. The conversion is onnx2torch's; the result is a
``torch.fx.GraphModule`` in eval mode taking the same input layout as the ONNX graph (NCHW
for a torch export; a Keras export is usually NHWC and contains a Transpose).

onnx2torch imports torchvision at import time only for its NMS and RoiAlign converters.
Where torchvision is missing, or installed but unusable (e.g. a CUDA build beside a CPU-only
torch), a stand-in is used while onnx2torch is imported; a graph that actually contains NMS
or RoiAlign then raises :class:`MissingDependencyError` when run.
"""

from __future__ import annotations

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

_INSTALL = (
    "pip install onnx && pip install --no-deps onnx2torch (--no-deps keeps pip from pulling a "
    "torchvision that may replace your torch)"
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


def from_onnx(path: str | Path) -> nn.Module:
    """Load the ONNX model at ``path`` as a torch module (eval mode).

    Args:
        path: an ``.onnx`` file.

    Returns:
        ``torch.fx.GraphModule`` computing the same function as the ONNX graph.

    Raises:
        DataSourceError: no such file.
        InvalidInputError: the file is not a valid ONNX model, or uses an op onnx2torch cannot
            convert (the message names it).
        MissingDependencyError: onnx / onnx2torch are not installed.
    """
    p = Path(path).expanduser()
    if not p.is_file():
        raise DataSourceError(f"no ONNX file at {str(p)!r}")
    onnx, onnx2torch = _import_onnx2torch()
    try:
        proto = onnx.load(str(p))
        onnx.checker.check_model(proto)
    except Exception as exc:  # noqa: BLE001 - onnx raises several unrelated types
        raise InvalidInputError(f"{p} is not a valid ONNX model: {exc}") from exc
    try:
        module = onnx2torch.convert(proto)
    except NotImplementedError as exc:
        raise InvalidInputError(f"{p}: onnx2torch cannot convert it: {exc}") from exc
    return _plain_arithmetic(module).eval()


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
