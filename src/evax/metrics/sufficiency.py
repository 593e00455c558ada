"""Metrics of sufficient explanations: size, certified rate, and the fidelity of the order.

For :class:`evax.SufficientExplanation` results of ``N`` inputs over ``G`` cells:

* ``size``: kept cells per input ``(N,)``, and ``fraction = size / G``; smaller is better (a
  smaller set that is still proven sufficient says more about what the decision rests on);
* ``certified_rate``: the share of inputs whose kept set the engine proved sufficient;
* ``deletion`` / ``insertion``: Deletion and Insertion AUCs (:mod:`evax.metrics.fidelity`) of
  the *order* the search used (its per-cell scores), over the same cells: how faithful the
  ranking that drove the search is, on the usual causal curves (lower / higher is better).
"""

from __future__ import annotations

import torch
from torch import nn

from evax.core.baselines import BaselineLike
from evax.errors import InvalidInputError
from evax.metrics.fidelity import Deletion, Insertion


def sufficiency_scores(
    model: nn.Module,
    inputs: torch.Tensor,
    explanation,
    baseline: BaselineLike = "uniform",
    steps: int | None = 20,
    activation: str | None = "softmax",
    seed: int = 0,
) -> dict[str, torch.Tensor | float]:
    """Size, certified rate and Deletion/Insertion of the order of ``explanation``.

    Args:
        model: the explained classifier; ``inputs`` ``(N, C, H, W)`` or ``(N, D)`` the inputs
            the explanation was computed for.
        explanation: a :class:`evax.SufficientExplanation` of ``inputs``.
        baseline, steps, activation, seed: see :class:`evax.metrics.Deletion` (``steps=None``:
            one cell per step).

    Returns:
        ``{"size": (N,), "fraction": (N,), "certified": (N,), "deletion": (N,),
        "insertion": (N,)}`` and the means ``"mean_size"``, ``"mean_fraction"``,
        ``"certified_rate"``, ``"mean_deletion"``, ``"mean_insertion"`` (floats).
    """
    kept = explanation.kept
    if inputs.shape[0] != kept.shape[0]:
        raise InvalidInputError(
            f"the explanation has {kept.shape[0]} inputs, got {inputs.shape[0]} inputs to score"
        )
    n, g = kept.shape
    spatial = tuple(inputs.shape[2:]) if inputs.ndim == 4 else (inputs.shape[1],)
    if explanation.masks is None:
        groups, scores = None, explanation.scores.reshape(n, *spatial)
    else:
        m = explanation.masks
        groups, scores = m.reshape(m.shape[0], g, *spatial), explanation.scores
    common = {"baseline": baseline, "activation": activation, "groups": groups, "steps": steps,
              "seed": seed, "progress": False}
    deletion = Deletion(model, inputs, explanation.target, **common)(scores)
    insertion = Insertion(model, inputs, explanation.target, **common)(scores)
    size = explanation.size
    fraction = size.double() / g
    certified = explanation.certified
    return {
        "size": size,
        "fraction": fraction,
        "certified": certified,
        "deletion": deletion,
        "insertion": insertion,
        "mean_size": float(size.double().mean()),
        "mean_fraction": float(fraction.mean()),
        "certified_rate": float(certified.double().mean()),
        "mean_deletion": float(deletion.double().mean()),
        "mean_insertion": float(insertion.double().mean()),
    }
