"""How ops keep the model's constants (weights, biases, folded normalisation).

By default an op holds *detached* tensors: a bound is a number about the model, and no
autograd history should tie it to the parameters. Certified training needs the opposite: the
bound as a differentiable function of the live parameters (``evax.bound(...,
differentiable=True)``). Inside :func:`live_parameters` every op keeps the tensors it is given
as they are (no copy, no detach), so gradients of the bound reach ``model.parameters()``.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

import torch

_LIVE: ContextVar[bool] = ContextVar("evax_live_parameters", default=False)


@contextmanager
def live_parameters(enabled: bool = True) -> Iterator[None]:
    """Within the block, ops built from a model keep its parameters' autograd history."""
    token = _LIVE.set(bool(enabled))
    try:
        yield
    finally:
        _LIVE.reset(token)


def parameters_live() -> bool:
    """Whether ops are being built inside :func:`live_parameters`."""
    return _LIVE.get()


def constant(value: torch.Tensor) -> torch.Tensor:
    """``value`` detached, or as it is inside :func:`live_parameters`."""
    return value if _LIVE.get() else value.detach()
