"""Explained classes: one resolution of ``target`` for every method and metric.

``target`` is an int (the same class for every input), a sequence or an int tensor ``(N,)``
(one class per input), or ``None`` (the model's predicted class).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from evax.core.checks import as_class_index, check_inputs
from evax.core.modes import eval_mode
from evax.errors import InvalidInputError

TargetLike = int | Sequence[int] | torch.Tensor | None

__all__ = ["TargetLike", "resolve_target"]


def resolve_target(model: nn.Module | None, inputs: torch.Tensor, target: TargetLike) -> torch.Tensor:
    """Turn ``target`` into an int64 tensor ``(N,)`` on ``inputs.device``.

    ``None`` -> ``argmax model(inputs)`` (in eval mode, the model's modes restored after); an
    int or a one-element tensor/list -> that class for every input (Captum's
    ``sensitivity_max`` passes ``(1,)`` targets with ``N`` perturbed copies of one image);
    otherwise one class per input. With a model, class indices outside ``[0, n_classes)`` are
    refused; without one (an explainer that does not expose its model) only explicit targets
    can be resolved and their range is not checked.

    Raises:
        InvalidInputError: a wrong length, a non-integer value (``3.9``, ``True``, a float
            tensor), a class out of range, or ``target=None`` without a model.
    """
    if model is None:
        if target is None:
            raise InvalidInputError(
                "target=None needs the model to predict the class, and the explainer does not expose "
                "one: pass model=... or an explicit target"
            )
        return as_class_index(target, inputs.shape[0], inputs.device)
    check_inputs(inputs)
    n = inputs.shape[0]
    with eval_mode(model), torch.no_grad():
        if target is None:
            return model(inputs).argmax(dim=1)
        t = as_class_index(target, n, inputs.device)
        n_classes = model(inputs[:1]).shape[1]
    if (t < 0).any() or (t >= n_classes).any():
        raise InvalidInputError(f"target out of range [0, {n_classes}): {t.tolist()}")
    return t
