"""Calling any explainer the same way: evax methods, Captum attribution objects, callables.

An *explainer* is an object with ``.attribute(inputs, target)`` (evax methods, Captum
``Saliency(model)``..., :class:`evax.attribution.Smoothed`) or a callable
``explain(inputs, target) -> Tensor`` (``captum.attr.Saliency(model).attribute``, a lambda).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from evax.errors import InvalidInputError

Explainer = Callable[..., torch.Tensor] | Any

__all__ = ["Explainer", "call_explainer", "find_model", "is_explainer"]


def is_explainer(obj: Any) -> bool:
    """Whether ``obj`` can be called as an explainer (has ``.attribute`` or is callable; a
    tensor is an explanation, not an explainer)."""
    return not isinstance(obj, torch.Tensor) and (hasattr(obj, "attribute") or callable(obj))


def call_explainer(explainer: Explainer, inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """``Phi(inputs)`` ``(M, ...)`` for ``targets`` ``(M,)``, detached.

    The explainer's ``.attribute`` is used when it has one, the explainer itself otherwise;
    ``target`` is passed by keyword when the callable has a parameter of that name (Captum's
    ``attribute`` methods), positionally otherwise. A tuple result (Captum with
    ``return_convergence_delta``) gives its first element.
    """
    fn = explainer.attribute if hasattr(explainer, "attribute") else explainer
    if not callable(fn):
        raise InvalidInputError(
            f"explainer must have .attribute(inputs, target) or be a callable, got {type(explainer).__name__}"
        )
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        params = {}
    out = fn(inputs, target=targets) if "target" in params else fn(inputs, targets)
    if isinstance(out, tuple):
        out = out[0]
    if not isinstance(out, torch.Tensor):
        raise InvalidInputError(f"the explainer returned {type(out).__name__}, expected a tensor")
    return out.detach()


def find_model(explainer: Any, depth: int = 0) -> nn.Module | None:
    """The ``nn.Module`` an explainer explains, when it exposes one: ``.model`` (evax),
    ``.forward_func`` (Captum), the wrapped ``.explainer`` (:class:`~evax.attribution.Smoothed`)
    or the object a bound ``.attribute`` method belongs to; ``None`` otherwise."""
    if depth > 4 or explainer is None:
        return None
    if isinstance(explainer, nn.Module):
        return explainer
    for attr in ("model", "forward_func"):
        m = getattr(explainer, attr, None)
        if isinstance(m, nn.Module):
            return m
    owner = getattr(explainer, "__self__", None)
    if owner is not None and owner is not explainer:
        found = find_model(owner, depth + 1)
        if found is not None:
            return found
    inner = getattr(explainer, "explainer", None)
    return find_model(inner, depth + 1) if inner is not None and inner is not explainer else None
