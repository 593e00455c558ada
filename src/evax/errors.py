"""Exceptions raised by evax.

Every error says what went wrong and, where possible, what to do about it. All derive from
:class:`EvaxError` so callers can catch the whole family; the ones about bad arguments also
derive from :class:`ValueError` so generic code keeps working.
"""

from __future__ import annotations


class EvaxError(Exception):
    """Base class of every evax exception."""


class InvalidInputError(EvaxError, ValueError):
    """An argument has the wrong shape, type or value (NaN/inf, eps <= 0, bad norm...)."""


class UnsupportedLayerError(EvaxError, TypeError):
    """The model contains an operation the bound engine cannot relax.

    The message names the module path (as in ``model.named_modules()``) and its type.
    """

    def __init__(self, path: str, kind: str, hint: str = "") -> None:
        self.path = path
        self.kind = kind
        msg = f"unsupported layer {path!r} of type {kind}"
        if hint:
            msg += f": {hint}"
        super().__init__(msg)


class NotApplicableError(EvaxError, ValueError):
    """A method does not apply to this model (e.g. Grad-CAM on a dense network)."""


class DataSourceError(EvaxError, RuntimeError):
    """A dataset or weight file could not be found or fetched; the message says how to get it."""


class MissingDependencyError(EvaxError, ImportError):
    """An optional dependency (h5py, scikit-learn, onnx, onnx2torch, captum...) is missing.

    The message says what needs it and the command that installs it.
    """
