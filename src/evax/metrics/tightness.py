"""Tightness of a verified perturbation analysis (EVA paper, Sec. 4.2 and Table 2), lower is better.

For the ball ``B`` of an EVA configuration (radius ``eps``, norm ``p``, optional domain) and a
bound method, the score of an input ``x`` explained for class ``c`` is the guaranteed upper
bound of its adversarial overlap (Eq. 1)::

    AO_bar(x, B) = max_{c' != c} upper(f_c' - f_c over B)

computed on the margins through EVA's specification matrix (:func:`evax.core.specs.
margin_spec`), exactly the first box of :class:`evax.EVA`. The true ``AO(x, B)`` is the same
for every method, so a lower mean ``E_x AO_bar(x, B)`` means a tighter method (Table 2:
IBP 4.58, Forward 2.66, Backward 2.36, IBP+Forward+Backward 1.55 on the paper's MNIST net).

A metric of explainers: ``Tightness(model, inputs, targets=None, eps=0.5, p=inf, domain=None)``
is configured once, then called with the explainer whose guarantees it measures -- an
:class:`evax.EVA` instance (its ``eps``, ``p``, ``domain``, bound method and ``certify`` are
used) or, as a shorthand, the name of a bound method (``"ibp"``, ``"forward"``,
``"ibp+forward+backward"``...) on the metric's own ball. It returns the per-sample ``AO_bar``
``(N,)``, or with ``detailed=True`` a :class:`TightnessResult` (``scores``, ``mean``,
``certified_robust``: ``AO_bar < 0``, no perturbation of the ball changes the decision, and
``method``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from evax.bounds.api import bound
from evax.core.checks import check_inputs
from evax.core.modes import eval_mode
from evax.core.specs import margin_spec
from evax.core.targets import TargetLike
from evax.errors import InvalidInputError
from evax.metrics.base import ExplainerMetric, MetricResult, mean_score
from evax.perturbation import Ball

__all__ = ["Tightness", "TightnessResult"]

_BALL_ATTRIBUTES = ("eps", "p", "domain", "method", "certify")


@dataclass(frozen=True, eq=False)
class TightnessResult(MetricResult):
    """Detailed result of :class:`Tightness` for ``N`` inputs.

    Attributes:
        scores: ``(N,)`` guaranteed upper bound ``AO_bar(x, B)`` (the default return); mean:
            their mean, the paper's Table 2 number.
        certified_robust: ``(N,)`` bool, ``scores < 0``.
        method: the bound method that computed the bounds.
    """

    certified_robust: torch.Tensor
    method: str


class Tightness(ExplainerMetric):
    """Mean verified adversarial overlap of a bound method; see the module docstring.

    Args:
        model: a classifier the bound engine supports.
        inputs: ``(N, ...)`` (never modified); ``targets``: ``(N,)`` or ``None`` (predicted).
        eps, p, domain: the ball (the paper: eps = 0.5, p = inf on MNIST/CIFAR); ignored when
            the metric is called with an :class:`evax.EVA`, whose own ball is used.
        batch_size: boxes per engine call (``None``: the engine's choice).
        certify: float64 bounds with a rounding margin (see :func:`evax.bound`); ignored when
            called with an :class:`evax.EVA`, whose own setting is used.

    ``metric(explainer)`` -> ``(N,)``; ``metric(explainer, detailed=True)`` ->
    :class:`TightnessResult`. ``explainer``: any object with ``eps``, ``p``, ``domain``,
    ``method`` and ``certify`` attributes, such as :class:`evax.EVA` (duck-typed, so the metrics
    do not depend on :mod:`evax.attribution`), explaining the metric's model; or a bound
    method name.
    """

    def __init__(
        self,
        model: nn.Module,
        inputs: torch.Tensor,
        targets: TargetLike = None,
        eps: float = 0.5,
        p: float = math.inf,
        domain: tuple[float, float] | None = None,
        batch_size: int | None = None,
        certify: bool = False,
    ) -> None:
        check_inputs(inputs)
        Ball(inputs.detach(), eps, p, domain=domain)  # validate the ball now, with a clear error
        super().__init__(model, inputs, targets)
        with eval_mode(model):
            with torch.no_grad():
                self.n_out = model(self.inputs[:1]).shape[1]
        if self.n_out < 2:
            raise InvalidInputError("Tightness needs a classifier with at least two outputs")
        self.eps, self.p, self.domain = eps, p, domain
        self.batch_size, self.certify = batch_size, certify

    def compute(self, obj: Any) -> TightnessResult:
        if isinstance(obj, str):
            eps, p, domain, name, certify = self.eps, self.p, self.domain, obj, self.certify
        elif all(hasattr(obj, a) for a in _BALL_ATTRIBUTES) and isinstance(obj.method, str):
            other = getattr(obj, "model", None)
            if isinstance(other, nn.Module) and other is not self.model:
                raise InvalidInputError("the explainer explains another model than the metric's")
            eps, p, domain, name, certify = obj.eps, obj.p, obj.domain, obj.method, obj.certify
        else:
            raise InvalidInputError(
                f"Tightness is called with an evax.EVA (or a bound method name), got {type(obj).__name__}"
            )
        ball = Ball(self.inputs, eps, p, domain=domain)
        spec = margin_spec(self.targets, self.n_out)
        b = bound(self.model, ball, name, spec, batch_size=self.batch_size, certify=certify, side="upper")
        ao = b.upper.amax(dim=1).to(self.inputs.dtype)
        return TightnessResult(ao, mean_score(ao), certified_robust=ao < 0, method=name)
