"""Score functions: the model output a method or a metric explains or measures."""

from __future__ import annotations

from collections.abc import Callable

import torch

from evax.errors import InvalidInputError

ActivationLike = str | None | Callable[[torch.Tensor], torch.Tensor]
ScoreFunction = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

__all__ = ["ActivationLike", "ScoreFunction", "score_function"]


def score_function(activation: ActivationLike) -> ScoreFunction:
    """``score(logits (M, K), target (M,)) -> (M,)``: the score of the explained class.

    ``"softmax"`` (the EVA paper, App. F: the probability after the softmax), ``"sigmoid"``,
    ``None`` (the raw logit) or a callable ``logits -> scores (M, K)``.
    """
    if activation == "softmax":
        act: Callable[[torch.Tensor], torch.Tensor] = lambda z: torch.softmax(z, dim=1)  # noqa: E731
    elif activation == "sigmoid":
        act = torch.sigmoid
    elif activation is None:
        act = lambda z: z  # noqa: E731
    elif callable(activation):
        act = activation
    else:
        raise InvalidInputError(
            f"activation must be 'softmax', 'sigmoid', None or a callable, got {activation!r}"
        )

    def score(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if logits.ndim != 2:
            raise InvalidInputError(f"the model must return logits (N, K), got {tuple(logits.shape)}")
        return act(logits).gather(1, target.view(-1, 1)).squeeze(1)

    return score
