"""Tightness of a verified perturbation analysis (EVA paper, Sec. 4.2 and Table 2), lower is better.

For the ball ``B`` of an EVA configuration (radius ``eps``, norm ``p``, optional domain) and a
bound method, the score of an input ``x`` explained for class ``c`` is the guaranteed upper
bound of its adversarial overlap (Eq. 1)::

    AO_bar(x, B) = max_{c' != c} upper(f_c' - f_c over B)

computed on the margins through EVA's specification matrix (:func:`evax.core.specs.
margin_spec`), exactly the first box of :class:`evax.EVA`. The true ``AO(x, B)`` is the same
for every method, so a lower mean ``E_x AO_bar(x, B)`` means a tighter method (Table 2:
IBP 4.58, Forward 2.66, Backward 2.36, IBP+Forward+Backward 1.55 on the paper's MNIST net).

``Tightness(model, inputs, targets=None, eps=0.5, p=inf, domain=None)`` is configured once,
then called with a bound method (``"ibp"``, ``"forward"``, ``"ibp+forward+backward"``...) or
an :class:`evax.EVA` instance (its ``eps``, ``p``, ``domain`` and method are used); it
returns the per-sample ``AO_bar`` ``(N,)``, or with ``detailed=True`` a dict with
``"scores"``, ``"mean"``, ``"ao"`` and ``"certified_robust"`` (``ao < 0``: no perturbation of
the ball changes the decision).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from evax.bounds.api import DEFAULT_METHOD, bound
from evax.core.checks import check_inputs
from evax.core.modes import eval_mode
from evax.core.specs import margin_spec
from evax.core.targets import TargetLike, resolve_target
from evax.errors import InvalidInputError
from evax.perturbation import Ball

_BALL_ATTRIBUTES = ("eps", "p", "domain", "method", "certify")


class Tightness:
    """Mean verified adversarial overlap of a bound method; see the module docstring.

    Args:
        model: a classifier the bound engine supports.
        inputs: ``(N, ...)`` (never modified); ``targets``: ``(N,)`` or ``None`` (predicted).
        eps, p, domain: the ball (the paper: eps = 0.5, p = inf on MNIST/CIFAR); ignored when
            the metric is called with an :class:`evax.EVA`, whose own ball is used.
        batch_size: boxes per engine call (``None``: the engine's choice).
        certify: float64 bounds with a rounding margin (see :func:`evax.bound`).
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
        self.inputs = inputs.detach().clone()
        Ball(self.inputs, eps, p, domain=domain)  # validate the ball now, with a clear error
        self.model = model
        self.targets = resolve_target(model, self.inputs, targets)
        with eval_mode(model):
            with torch.no_grad():
                self.n_out = model(self.inputs[:1]).shape[1]
        if self.n_out < 2:
            raise InvalidInputError("Tightness needs a classifier with at least two outputs")
        self.eps, self.p, self.domain = eps, p, domain
        self.batch_size, self.certify = batch_size, certify

    def __call__(self, method: Any = DEFAULT_METHOD, detailed: bool = False) -> Any:
        """``AO_bar(x, B)`` per sample ``(N,)`` for ``method``: a bound method name, or an
        explainer configured with a ball -- any object with ``eps``, ``p``, ``domain``,
        ``method`` and ``certify`` attributes, such as :class:`evax.EVA` (duck-typed, so the
        metrics do not depend on :mod:`evax.attribution`)."""
        if isinstance(method, str):
            eps, p, domain, name, certify = self.eps, self.p, self.domain, method, self.certify
        elif all(hasattr(method, a) for a in _BALL_ATTRIBUTES) and isinstance(method.method, str):
            eps, p, domain, name = method.eps, method.p, method.domain, method.method
            certify = method.certify
        else:
            raise InvalidInputError(
                f"Tightness is called with a bound method name or an evax.EVA, got {type(method).__name__}"
            )
        ball = Ball(self.inputs, eps, p, domain=domain)
        spec = margin_spec(self.targets, self.n_out)
        b = bound(self.model, ball, name, spec, batch_size=self.batch_size, certify=certify, side="upper")
        ao = b.upper.amax(dim=1).to(self.inputs.dtype)
        if not detailed:
            return ao
        return {"scores": ao, "ao": ao, "mean": ao.mean(), "certified_robust": ao < 0, "method": name}
