"""Shared argument checks (the core layer: imports nothing from evax but the errors).

Every public entry point validates its arguments here, so one bad input gets the same clear
:class:`~evax.errors.InvalidInputError` wherever it is passed:

* :func:`check_inputs`: a floating-point tensor ``(N, ...)`` with ``N >= 1``, finite values.
* :func:`as_class_index`: targets / contrasts as int64 ``(N,)``; bools, floats (``3.9``) and
  floating tensors are refused instead of being truncated.
* :func:`check_int` / :func:`check_number`: Python numbers, ``True``/``False`` refused (``bool``
  is a subclass of ``int`` in Python, so ``batch_size=True`` would otherwise mean 1).
* :func:`check_tensor`, :func:`check_positive_int`, :func:`check_positive_float`,
  :func:`check_clip`: the lighter checks of the noise distributions and the metrics built on
  them (a batch of any size, a Python ``int``, a finite non-negative number, a domain pair).
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from typing import Any

import torch

from evax.errors import InvalidInputError


def check_inputs(inputs: object, name: str = "inputs") -> None:
    """Reject non-tensors, a missing or empty batch dimension, integer dtypes and NaN/inf."""
    if not isinstance(inputs, torch.Tensor):
        raise InvalidInputError(f"{name} must be a torch.Tensor, got {type(inputs).__name__}")
    if inputs.ndim < 2:
        raise InvalidInputError(
            f"{name} must have a batch dimension (N, ...), got shape {tuple(inputs.shape)}; "
            "use x.unsqueeze(0) for a single input"
        )
    if inputs.shape[0] == 0:
        raise InvalidInputError(f"{name}: an empty batch (N = 0): pass at least one input")
    if not inputs.is_floating_point():
        raise InvalidInputError(
            f"{name} must be a floating-point tensor, got {inputs.dtype}; "
            "convert images with x.float() / 255 (evax expects values in [0, 1])"
        )
    if not torch.isfinite(inputs).all():
        raise InvalidInputError(f"{name}: NaN or inf values")


def check_int(name: str, value: object, minimum: int | None = None, optional: bool = False) -> int | None:
    """``value`` as an ``int`` (Python or numpy integer, not ``bool``) ``>= minimum``."""
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        kind = "an int" + (" or None" if optional else "")
        raise InvalidInputError(f"{name} must be {kind}, got {value!r} ({type(value).__name__})")
    if minimum is not None and value < minimum:
        raise InvalidInputError(f"{name} must be >= {minimum}, got {value!r}")
    return int(value)


def check_number(name: str, value: object, positive: bool = False, finite: bool = True) -> float:
    """``value`` as a ``float`` (a real number, not ``bool``), optionally ``> 0`` and finite."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise InvalidInputError(f"{name} must be a number, got {value!r} ({type(value).__name__})")
    v = float(value)
    if finite and not math.isfinite(v):
        raise InvalidInputError(f"{name} must be finite, got {value!r}")
    if positive and not v > 0:
        raise InvalidInputError(f"{name} must be > 0, got {value!r}")
    return v


def as_class_index(
    value: int | Sequence[int] | torch.Tensor, n: int, device: torch.device, name: str = "target"
) -> torch.Tensor:
    """Class indices as int64 ``(N,)`` on ``device``: an int (or one-element list/tensor) for every
    input, or one per input. Refuses bools and non-integer values rather than truncating them."""
    if not isinstance(value, (torch.Tensor, list, tuple)) and hasattr(value, "__array__") and getattr(value, "ndim", 0):
        value = torch.as_tensor(value)  # numpy arrays: checked as tensors
    if isinstance(value, torch.Tensor):
        if value.dtype == torch.bool or value.is_floating_point() or value.is_complex():
            raise InvalidInputError(f"{name} must hold integer class indices, got a {value.dtype} tensor")
        t = value.detach().to(device=device, dtype=torch.long)
    else:
        items = list(value) if isinstance(value, (list, tuple)) else [value]
        for v in items:
            if isinstance(v, bool) or not isinstance(v, numbers.Integral):
                raise InvalidInputError(
                    f"{name} must be an int class index (or one per input), got {v!r} ({type(v).__name__})"
                )
        t = torch.as_tensor([int(v) for v in items], dtype=torch.long, device=device)
        if not isinstance(value, (list, tuple)):
            t = t.reshape(())
    if t.numel() == 1 and t.ndim <= 1:
        t = t.reshape(()).expand(n).clone()
    if t.ndim != 1 or t.shape[0] != n:
        raise InvalidInputError(f"{name} must be an int or have shape ({n},), got {tuple(t.shape)}")
    return t


def check_tensor(inputs: Any, what: str = "inputs") -> None:
    """A floating-point tensor ``(N, ...)`` with finite values (``N = 0`` allowed)."""
    if not isinstance(inputs, torch.Tensor):
        raise InvalidInputError(f"{what} must be a torch.Tensor, got {type(inputs).__name__}")
    if inputs.ndim < 2:
        raise InvalidInputError(f"{what} need a batch dimension (N, ...), got {tuple(inputs.shape)}")
    if not inputs.is_floating_point():
        raise InvalidInputError(f"{what} must be a floating-point tensor, got {inputs.dtype}")
    if not torch.isfinite(inputs).all():
        raise InvalidInputError(f"{what} contain NaN or inf")


def check_positive_int(value: Any, name: str, minimum: int = 1) -> int:
    """``value`` if it is a Python ``int`` (not ``bool``) ``>= minimum``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise InvalidInputError(f"{name} must be an int >= {minimum}, got {value!r}")
    return value


def check_positive_float(value: Any, name: str, allow_zero: bool = False) -> float:
    """``value`` as a ``float``: a finite number ``> 0`` (``>= 0`` with ``allow_zero``)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise InvalidInputError(f"{name} must be a finite number, got {value!r}")
    if value < 0 or (value == 0 and not allow_zero):
        raise InvalidInputError(f"{name} must be {'>= 0' if allow_zero else '> 0'}, got {value!r}")
    return float(value)


def check_clip(clip: Any) -> tuple[float, float] | None:
    """``None`` or a domain ``(lo, hi)`` with ``lo < hi``, as floats."""
    if clip is None:
        return None
    try:
        lo, hi = (float(c) for c in clip)
    except (TypeError, ValueError) as exc:
        raise InvalidInputError(f"clip must be None or a pair (lo, hi), got {clip!r}") from exc
    if not lo < hi:
        raise InvalidInputError(f"clip must satisfy lo < hi, got {clip!r}")
    return lo, hi
