"""Common interface of every attribution method in evax.

``Method(model, **hyper).attribute(inputs, target=None) -> (N, H, W)`` for images (channels
reduced), or ``(N, D)`` for flat inputs; ``attribute_raw`` keeps the input's shape
``(N, C, H, W)``. ``target`` is an int, a sequence or an int tensor ``(N,)``; ``None`` means the
model's predicted class.

``TargetLike``, ``resolve_target`` and ``reduce_channels`` live in :mod:`evax.core` and are
re-exported here for the methods and their users.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import torch
from torch import nn

from evax.core.checks import check_inputs as check_inputs
from evax.core.targets import TargetLike as TargetLike
from evax.core.targets import resolve_target as resolve_target
from evax.core.variables import reduce_channels as reduce_channels


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
