"""``evax.load_model``: a classifier from a zoo name, an ONNX / TorchScript / torch.export file,
or a ``package.module:factory`` callable, with its input shape and class names.

>>> model, info = evax.load_model("net.onnx", classes="classes.txt")
>>> model, info = evax.load_model("mypkg.nets:SmallCNN", weights="state.pt", input_shape=(3, 32, 32),
...                               mean=[0.49, 0.48, 0.45], std=[0.25, 0.24, 0.26])

Every loaded model takes NCHW inputs in ``[0, 1]`` (NHWC ONNX graphs are wrapped in
:class:`~evax.zoo.layers.ChannelsLast`); ``mean``/``std`` prepend a
:class:`~evax.zoo.layers.Normalize` (an elementwise affine layer the bound engine supports) for
a model that expects normalised inputs and does not carry its normalisation.

What the bound engine can analyse: zoo models, ONNX graphs, ``torch.export`` programs
(rebuilt as plain torch calls, :mod:`evax.zoo.export_io`) and factories whose module torch.fx
can trace. A TorchScript module cannot be traced by torch.fx, so it is loaded for the
gradient / perturbation methods only (``info.boundable`` is False and ``info.not_boundable``
says why and what to use instead).
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import torch
from torch import nn

from evax.errors import DataSourceError, InvalidInputError, UnsupportedLayerError

TORCHSCRIPT_HINT = (
    "torch.fx (and so the bound engine) cannot trace a TorchScript module; export the model with "
    "torch.export.save (.pt2) or to ONNX, or pass its factory as package.module:function with "
    "--weights state_dict.pt"
)


@dataclass(frozen=True)
class ModelInfo:
    """What evax knows about a loaded model.

    Attributes:
        source: ``"zoo"``, ``"onnx"``, ``"torchscript"``, ``"export"`` or ``"factory"``.
        name: the name or path it was loaded from.
        input_shape: per-sample input ``(C, H, W)`` (or ``(D,)``), NCHW.
        num_classes: number of logits.
        classes: class names (index = class), or None.
        normalization: ``(mean, std)`` added by ``mean=``/``std=``, or None.
        not_boundable: why the bound engine cannot analyse it (None when it can).
    """

    source: str
    name: str
    input_shape: tuple[int, ...]
    num_classes: int
    classes: tuple[str, ...] | None = None
    normalization: tuple[tuple[float, ...], tuple[float, ...]] | None = None
    not_boundable: str | None = None

    @property
    def boundable(self) -> bool:
        return self.not_boundable is None

    def require_boundable(self, what: str = "EVA") -> None:
        """Raise :class:`UnsupportedLayerError` when the bound engine cannot analyse the model."""
        if self.not_boundable is not None:
            raise UnsupportedLayerError("<model>", self.source, f"{what} needs bounds: {self.not_boundable}")

    def to_dict(self) -> dict:
        return {
            "source": self.source,
            "name": self.name,
            "input_shape": list(self.input_shape),
            "num_classes": self.num_classes,
            "classes": None if self.classes is None else list(self.classes),
            "normalization": None if self.normalization is None else [list(v) for v in self.normalization],
        }


class LoadedModel(NamedTuple):
    """``(model, info)``: the module (eval mode, NCHW inputs in [0, 1]) and its :class:`ModelInfo`."""

    model: nn.Module
    info: ModelInfo


class Normalized(nn.Module):
    """``model(normalize(x))``: a user model that expects normalised inputs, fed [0, 1] pixels."""

    def __init__(self, normalize: nn.Module, model: nn.Module) -> None:
        super().__init__()
        self.normalize = normalize
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(self.normalize(x))


def parse_shape(shape: str | Sequence[int] | None) -> tuple[int, ...] | None:
    """``"1,28,28"`` / ``"1x28x28"`` / ``(1, 28, 28)`` -> ``(1, 28, 28)``; positive ints only."""
    if shape is None:
        return None
    parts = shape.replace("x", ",").split(",") if isinstance(shape, str) else list(shape)
    try:
        dims = tuple(int(str(p).strip()) for p in parts)
    except ValueError:
        raise InvalidInputError(f"input shape must be comma-separated positive ints like 1,28,28, got {shape!r}") from None
    if not dims or len(dims) > 3 or min(dims) < 1:
        raise InvalidInputError(f"input shape must be (C, H, W) or (D,) of positive ints, got {shape!r}")
    return dims


def parse_floats(values: str | Sequence[float] | None, name: str) -> tuple[float, ...] | None:
    """``"0.5,0.5,0.5"`` or a sequence -> floats (None passes through)."""
    if values is None:
        return None
    parts = values.split(",") if isinstance(values, str) else list(values)
    try:
        out = tuple(float(v) for v in parts)
    except (TypeError, ValueError):
        raise InvalidInputError(f"{name} must be numbers separated by commas, got {values!r}") from None
    if not out:
        raise InvalidInputError(f"{name} is empty")
    return out


def read_classes(classes: str | Path | Sequence[str] | None) -> tuple[str, ...] | None:
    """Class names from a sequence or a text file (one name per line, blank lines skipped)."""
    if classes is None:
        return None
    if isinstance(classes, (str, Path)):
        p = Path(classes).expanduser()
        if not p.is_file():
            raise DataSourceError(f"no class-names file at {str(p)!r} (one class name per line)")
        names = tuple(line.strip() for line in p.read_text().splitlines() if line.strip())
    else:
        names = tuple(str(c) for c in classes)
    if not names:
        raise InvalidInputError("the class-name list is empty")
    return names


def _import_from_cwd(name: str):
    """Import ``name``; like ``python -m``, the working directory is searched too (the ``evax``
    console script does not put it on ``sys.path``)."""
    import os
    import sys

    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as exc:
        cwd = os.getcwd()
        if cwd in sys.path or exc.name is None or not name.startswith(exc.name.split(".")[0]):
            raise
        sys.path.insert(0, cwd)
        return importlib.import_module(name)


def _from_factory(spec: str, weights: str | Path | None) -> nn.Module:
    mod_name, _, attr = spec.partition(":")
    try:
        module = _import_from_cwd(mod_name)
    except ImportError as exc:
        raise InvalidInputError(f"cannot import {mod_name!r} for model {spec!r}: {exc}") from exc
    factory = module
    for part in attr.split("."):
        factory = getattr(factory, part, None)
        if factory is None:
            raise InvalidInputError(f"{mod_name!r} has no attribute {attr!r} (model {spec!r})")
    if not callable(factory):
        raise InvalidInputError(f"{spec!r} is not callable")
    model = factory()
    if not isinstance(model, nn.Module):
        raise InvalidInputError(f"{spec}() returned {type(model).__name__}, not an nn.Module")
    if weights is not None:
        p = Path(weights).expanduser()
        if not p.is_file():
            raise DataSourceError(f"no weights file at {str(p)!r}")
        try:
            state = torch.load(p, map_location="cpu", weights_only=True)
        except Exception as exc:  # noqa: BLE001 - pickle / zip errors alike
            raise InvalidInputError(f"{p} is not a state_dict saved with torch.save: {exc}") from exc
        if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
            state = state["state_dict"]
        if not isinstance(state, dict):
            raise InvalidInputError(f"{p} holds a {type(state).__name__}, not a state_dict")
        try:
            model.load_state_dict(state, strict=True)
        except RuntimeError as exc:
            raise InvalidInputError(f"weights {p} do not fit {spec}(): {exc}") from exc
    return model


def _from_file(p: Path, layout: str) -> tuple[nn.Module, str, str | None]:
    suffix = p.suffix.lower()
    if suffix == ".onnx":
        from evax.zoo.onnx_io import from_onnx

        return from_onnx(p, layout=layout), "onnx", None
    if suffix == ".pt2":
        from evax.zoo.export_io import from_export

        return from_export(p), "export", None
    try:
        model = torch.jit.load(str(p), map_location="cpu")
    except Exception as exc:  # noqa: BLE001
        raise InvalidInputError(
            f"{p} is neither ONNX (.onnx), torch.export (.pt2) nor TorchScript ({exc}); a state_dict "
            "needs its architecture: pass package.module:factory with weights="
        ) from exc
    return model.eval(), "torchscript", TORCHSCRIPT_HINT


def load_model(
    path_or_name: str | Path,
    *,
    input_shape: str | Sequence[int] | None = None,
    weights: str | Path | None = None,
    mean: str | Sequence[float] | None = None,
    std: str | Sequence[float] | None = None,
    classes: str | Path | Sequence[str] | None = None,
    layout: str = "auto",
) -> LoadedModel:
    """Load a classifier and check it on a dummy input.

    Args:
        path_or_name: a zoo name (``evax zoo list``), a ``.onnx`` / ``.pt2`` (torch.export) /
            TorchScript file, or ``package.module:factory`` (a callable returning an ``nn.Module``).
        input_shape: per-sample NCHW shape ``(C, H, W)``; required where the model does not
            declare it (TorchScript, torch.export, factories, ONNX with symbolic dims).
        weights: a ``state_dict`` file for a factory (``torch.load(weights_only=True)``).
        mean, std: per-channel normalisation the model expects but does not contain.
        classes: class names or a text file with one per line.
        layout: ONNX input layout: ``"auto"``, ``"nchw"`` or ``"nhwc"``.

    Returns:
        :class:`LoadedModel` ``(model, info)``; ``model`` maps ``(N, *input_shape)`` in [0, 1]
        to logits ``(N, K)``, in eval mode.

    Raises:
        InvalidInputError: unreadable file, unknown name, bad shape / normalisation / classes,
            a model that does not return ``(N, K)`` logits with ``K >= 2``, or options that do
            not apply (``weights`` without a factory).
        DataSourceError: a file that does not exist.
    """
    from evax.zoo.registry import MODELS
    from evax.zoo.registry import load_model as zoo_load

    if not isinstance(path_or_name, (str, Path)):
        raise InvalidInputError(f"model must be a name or a path, got {type(path_or_name).__name__}")
    spec = str(path_or_name)
    shape = parse_shape(input_shape)
    names = read_classes(classes)
    m, s = parse_floats(mean, "mean"), parse_floats(std, "std")
    if (m is None) != (s is None):
        raise InvalidInputError("pass both mean and std (or neither)")
    p = Path(spec).expanduser()
    hint = None
    if spec in MODELS:
        model, source = zoo_load(spec), "zoo"
        declared = MODELS[spec].input_shape
    elif p.is_file():
        model, source, hint = _from_file(p, layout)
        declared = getattr(model, "input_shape", None)
    elif ":" in spec and not p.suffix:
        model, source = _from_factory(spec, weights), "factory"
        declared = getattr(model, "input_shape", None)
    else:
        from evax.zoo.registry import list_models

        raise InvalidInputError(
            f"model {spec!r} is not a zoo name ({', '.join(list_models())}), an existing file, "
            "or package.module:factory"
        )
    if weights is not None and source != "factory":
        raise InvalidInputError("weights= applies to package.module:factory models only")
    if isinstance(declared, tuple) and all(isinstance(d, int) for d in declared):
        if shape is not None and shape != declared:
            raise InvalidInputError(f"input shape {shape} given, but {spec} declares {declared}")
        shape = declared
    if shape is None:
        raise InvalidInputError(f"{spec} does not declare its input shape: pass input_shape (e.g. 1,28,28)")
    normalization = None
    if m is not None:
        from evax.zoo.layers import Normalize

        if len(m) != len(s) or (len(shape) == 3 and len(m) not in (1, shape[0])):
            raise InvalidInputError(f"mean/std need 1 or {shape[0]} values each, got {len(m)} and {len(s)}")
        model = Normalized(Normalize(m, s, image=len(shape) == 3), model).eval()
        normalization = (m, s)
    model.eval()
    k = _check_runs(model, shape, spec)
    if names is not None and len(names) != k:
        raise InvalidInputError(f"{len(names)} class names given, the model has {k} outputs")
    info = ModelInfo(source, spec, shape, k, names, normalization, hint)
    return LoadedModel(model, info)


def _check_runs(model: nn.Module, shape: tuple[int, ...], spec: str) -> int:
    """Run batches of 1 and 3 zeros; the number of logits ``K``."""
    for n in (1, 3):
        try:
            with torch.no_grad():
                out = model(torch.zeros(n, *shape))
        except Exception as exc:  # noqa: BLE001 - whatever the user's model raises
            extra = (
                " (was the torch.export program exported with a dynamic batch? "
                "dynamic_shapes={'x': {0: torch.export.Dim('batch')}})"
                if Path(spec).suffix == ".pt2"
                else ""
            )
            raise InvalidInputError(f"{spec} fails on inputs of shape {(n, *shape)}: {exc}{extra}") from exc
        if not isinstance(out, torch.Tensor) or out.ndim != 2 or out.shape[0] != n or out.shape[1] < 2:
            got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
            raise InvalidInputError(f"{spec} must return logits (N, K) with K >= 2, got {got} for N = {n}")
    return int(out.shape[1])
