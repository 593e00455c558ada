"""Baselines ``x0``: the state a removed variable is set to (one set of accepted values).

A baseline is

* ``"zero"`` or a number: that constant;
* ``"uniform"``: ``x0 ~ U(0, 1)`` drawn independently for every entry of every sample (the
  EVA paper's random baseline, following Hsieh et al.) -- random, so it needs a generator;
* a tensor broadcastable to the inputs (``(*S)`` or ``(N, *S)``);
* a callable ``baseline(inputs) -> tensor`` broadcastable to the inputs.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch

from evax.errors import InvalidInputError

BaselineLike = str | float | int | torch.Tensor | Callable[[torch.Tensor], torch.Tensor]

__all__ = ["BaselineLike", "check_baseline", "make_baseline"]

_NAMES = ("zero", "uniform")


def check_baseline(baseline: Any, random: bool = True) -> BaselineLike:
    """Early check of a baseline's kind (shapes are checked against the inputs by
    :func:`make_baseline`). ``random=False`` refuses ``"uniform"`` (for objects that have no
    generator to draw it from)."""
    if isinstance(baseline, str):
        allowed = _NAMES if random else ("zero",)
        if baseline not in allowed:
            extra = "" if random else " (a random 'uniform' baseline is not available here)"
            raise InvalidInputError(
                f"unknown baseline {baseline!r}: use {', '.join(map(repr, allowed))}, a number, "
                f"a tensor or a callable{extra}"
            )
        return baseline
    if isinstance(baseline, bool) or not isinstance(baseline, (int, float, torch.Tensor)) and not callable(baseline):
        raise InvalidInputError(
            f"baseline must be a str, a number, a tensor or a callable, got {type(baseline).__name__}"
        )
    if isinstance(baseline, (int, float)) and not math.isfinite(baseline):
        raise InvalidInputError(f"baseline must be finite (no NaN or inf), got {baseline!r}")
    return baseline


def make_baseline(
    baseline: BaselineLike, inputs: torch.Tensor, generator: torch.Generator | None = None
) -> torch.Tensor:
    """The baseline ``x0`` ``(N, *S)`` for ``inputs`` ``(N, *S)`` (a new tensor, never a view of
    the inputs). ``generator`` draws ``"uniform"`` (on the CPU, then moved to the inputs'
    device, so the draws do not depend on the device)."""
    check_baseline(baseline)
    if isinstance(baseline, str):
        if baseline == "zero":
            x0 = torch.zeros_like(inputs)
        else:
            if generator is None:
                raise InvalidInputError("the 'uniform' baseline is random: it needs a torch.Generator")
            x0 = torch.rand(inputs.shape, generator=generator, dtype=inputs.dtype).to(inputs.device)
    elif isinstance(baseline, (int, float)):
        x0 = torch.full_like(inputs, float(baseline))
    else:
        x0 = baseline if isinstance(baseline, torch.Tensor) else baseline(inputs)
        if not isinstance(x0, torch.Tensor):
            raise InvalidInputError(f"the baseline callable must return a tensor, got {type(x0).__name__}")
        try:
            x0 = torch.broadcast_to(x0.to(inputs.device, inputs.dtype), inputs.shape).clone()
        except RuntimeError as exc:
            raise InvalidInputError(
                f"baseline of shape {tuple(x0.shape)} does not broadcast to the inputs {tuple(inputs.shape)}"
            ) from exc
    if not torch.isfinite(x0).all():
        raise InvalidInputError("the baseline contains NaN or inf")
    return x0
