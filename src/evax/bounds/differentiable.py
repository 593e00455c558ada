"""Bounds as differentiable functions of the model's parameters (certified training).

``evax.bound(model, ball, method, differentiable=True)`` computes the same bounds as the
default path, but with autograd on and with the ops holding the model's live parameters
(:func:`evax.bounds.ops.constants.live_parameters`) instead of detached copies, so that
``loss(bounds).backward()`` reaches ``model.parameters()`` (IBP training, Gowal et al. 2018;
CROWN-IBP, Zhang et al. 2020). The gradient flows through every relaxation too (a ReLU's
CROWN slopes depend on its IBP bounds, hence on the weights), as in auto_LiRPA.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch

from evax.bounds.ops.constants import live_parameters
from evax.bounds.propagate import parse_method
from evax.errors import InvalidInputError

DIFFERENTIABLE_METHODS = frozenset({"ibp", "crown-ibp"})
"""Base methods with a tested differentiable path; ``+``-combinations of them are accepted."""


def check_differentiable(method: str, differentiable: bool) -> None:
    """Raise :class:`~evax.errors.InvalidInputError` when ``differentiable`` is not a bool, or
    is True for a method outside :data:`DIFFERENTIABLE_METHODS` (alpha-CROWN optimises its
    slopes with an inner autograd loop, ``exact`` is a MILP; neither is differentiable here)."""
    if not isinstance(differentiable, bool):
        raise InvalidInputError(f"differentiable must be True or False, got {differentiable!r}")
    if not differentiable:
        return
    key = method.strip().lower() if isinstance(method, str) else method
    methods = frozenset({"exact"}) if key == "exact" else parse_method(method)
    unsupported = sorted(methods - DIFFERENTIABLE_METHODS)
    if unsupported:
        raise InvalidInputError(
            f"differentiable=True supports methods {sorted(DIFFERENTIABLE_METHODS)} (and their "
            f"'+'-combinations), not {unsupported} of {method!r}"
        )


@contextmanager
def grad_mode(differentiable: bool) -> Iterator[None]:
    """Autograd off (the default path), or on with the ops keeping the live parameters."""
    if not differentiable:
        with torch.no_grad():
            yield
        return
    with torch.enable_grad(), live_parameters():
        yield
