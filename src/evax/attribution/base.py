"""Common interface of every attribution method in evax.

``Method(model, **hyper).attribute(inputs, target=None) -> (N, H, W)`` for images (channels
reduced), or ``(N, D)`` for flat inputs; ``attribute_raw`` keeps the input's shape
``(N, C, H, W)``. ``target`` is an int, a sequence or an int tensor ``(N,)``; ``None`` means the
model's predicted class.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence

import torch
from torch import nn

from evax._checks import as_class_index
from evax._checks import check_inputs as check_inputs
from evax.errors import InvalidInputError

TargetLike = int | Sequence[int] | torch.Tensor | None


def resolve_target(model: nn.Module, inputs: torch.Tensor, target: TargetLike) -> torch.Tensor:
    """Turn ``target`` into an int64 tensor ``(N,)`` on ``inputs.device``.

    ``None`` -> ``argmax model(inputs)``; an int or a one-element tensor/list -> that class for
    every input (Captum's ``sensitivity_max`` passes ``(1,)`` targets with ``N`` perturbed
    copies of one image); otherwise one class per input. Raises :class:`InvalidInputError` for a wrong length, a
    non-integer value (``3.9``, ``True``, a float tensor) or a class index outside ``[0, n_classes)``.
    """
    check_inputs(inputs)
    n = inputs.shape[0]
    if target is None:
        with torch.no_grad():
            return model(inputs).argmax(dim=1)
    t = as_class_index(target, n, inputs.device)
    with torch.no_grad():
        n_classes = model(inputs[:1]).shape[1]
    if (t < 0).any() or (t >= n_classes).any():
        raise InvalidInputError(f"target out of range [0, {n_classes}): {t.tolist()}")
    return t


def reduce_channels(attr: torch.Tensor, how: str = "sum") -> torch.Tensor:
    """(N, C, H, W) -> (N, H, W) by summing (``"sum"``), summing absolute values (``"abs"``) or
    taking the max absolute value (``"max_abs"``) over channels; other shapes are returned as is.
    """
    if attr.ndim != 4:
        return attr
    if how == "sum":
        return attr.sum(dim=1)
    if how == "abs":
        return attr.abs().sum(dim=1)
    if how == "max_abs":
        return attr.abs().amax(dim=1)
    raise InvalidInputError(f"unknown channel reduction {how!r}: use 'sum', 'abs' or 'max_abs'")


class Attribution(ABC):
    """Base class: subclasses implement :meth:`attribute_raw`.

    Args:
        model: a classifier mapping ``(N, ...)`` inputs to ``(N, n_classes)`` logits.
        reduce: channel reduction used by :meth:`attribute` (see :func:`reduce_channels`).
    """

    name: str = "attribution"

    def __init__(self, model: nn.Module, reduce: str = "sum") -> None:
        self.model = model
        self.reduce = reduce

    @abstractmethod
    def attribute_raw(self, inputs: torch.Tensor, target: TargetLike = None) -> torch.Tensor:
        """Attributions with the input's shape ``(N, C, H, W)`` (or ``(N, D)``)."""

    def attribute(self, inputs: torch.Tensor, target: TargetLike = None) -> torch.Tensor:
        """Attributions ``(N, H, W)`` for images (channels reduced), ``(N, D)`` for flat inputs."""
        return reduce_channels(self.attribute_raw(inputs, target), self.reduce)

    def __call__(self, inputs: torch.Tensor, target: TargetLike = None) -> torch.Tensor:
        return self.attribute(inputs, target)
