"""Elementwise nonlinearities and their sound linear relaxations.

* ReLU / LeakyReLU (CROWN): the upper line is the chord through ``(l, f(l))`` and
  ``(u, f(u))``; the lower line passes through the origin with the slope of the larger piece
  (1 if ``u >= -l``, else the negative slope) -- the adaptive choice of Zhang et al. 2018.
* Sigmoid / Tanh: both lines have the chord's slope ``k``; their offsets are the exact min and
  max of ``f(x) - k x`` on ``[l, u]``, found among the end points and the (closed-form) points
  where ``f'(x) = k``. This is sound for every interval, including ones that straddle the
  inflection point, and equals the chord and the parallel tangent on the convex/concave parts.
"""

from __future__ import annotations

from abc import abstractmethod

import torch

from evax.bounds.ops.base import ElementwiseOp, batched_dot

_TINY = 1e-12


class ReLU(ElementwiseOp):
    """``max(x, 0)``."""

    kind = "relu"

    def evaluate(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(x)

    def relax(self, lower: torch.Tensor, upper: torch.Tensor):
        return _leaky_relax(lower, upper, 0.0)

    def backward(self, lam: torch.Tensor, relaxation=None):
        # Specialised: the lower line has no offset (b_l = 0).
        a_l, _, a_u, b_u = relaxation
        neg = lam.clamp_max(0)
        lam_in = lam * a_l.unsqueeze(1)
        lam_in.addcmul_(neg, (a_u - a_l).unsqueeze(1))
        return [lam_in], batched_dot(neg, b_u)


class LeakyReLU(ElementwiseOp):
    """``max(x, s x)`` with negative slope ``0 <= s <= 1``."""

    kind = "leaky_relu"

    def __init__(self, negative_slope: float) -> None:
        self.negative_slope = float(negative_slope)

    def evaluate(self, x: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.leaky_relu(x, self.negative_slope)

    def relax(self, lower: torch.Tensor, upper: torch.Tensor):
        return _leaky_relax(lower, upper, self.negative_slope)


def _leaky_relax(lower: torch.Tensor, upper: torch.Tensor, slope: float):
    """Relaxation of ``max(x, slope x)`` (convex for ``slope <= 1``) on ``[lower, upper]``."""
    active = lower >= 0
    dead = upper <= 0
    unstable = ~(active | dead)
    width = (upper - lower).clamp_min(_TINY)
    chord = (upper - slope * lower) / width
    a_u = torch.where(active, 1.0, torch.where(dead, slope, chord))
    b_u = torch.where(unstable, (slope - chord) * lower, 0.0)
    a_l = torch.where(active, 1.0, torch.where(dead, slope, torch.where(upper >= -lower, 1.0, slope)))
    b_l = torch.zeros_like(lower)
    return a_l.to(lower.dtype), b_l, a_u.to(lower.dtype), b_u.to(lower.dtype)


class _SShaped(ElementwiseOp):
    """Common relaxation of sigmoid-like functions (odd-symmetric derivative, max at 0)."""

    @abstractmethod
    def derivative(self, x: torch.Tensor) -> torch.Tensor:
        """``f'(x)``."""

    @abstractmethod
    def inverse_derivative(self, k: torch.Tensor) -> torch.Tensor:
        """The ``x >= 0`` with ``f'(x) = k`` (for ``0 < k <= f'(0)``)."""

    def relax(self, lower: torch.Tensor, upper: torch.Tensor):
        f_l, f_u = self.evaluate(lower), self.evaluate(upper)
        width = upper - lower
        narrow = width < 1e-6
        mid = (lower + upper) / 2
        k = torch.where(narrow, self.derivative(mid), (f_u - f_l) / width.clamp_min(_TINY))
        k_max = float(self.derivative(torch.zeros((), dtype=k.dtype)))
        k = k.clamp(min=torch.finfo(k.dtype).tiny, max=k_max)
        x_star = self.inverse_derivative(k)
        candidates = torch.stack([lower, upper, x_star.clamp(lower, upper), (-x_star).clamp(lower, upper)])
        g = self.evaluate(candidates) - k * candidates
        # Guard against rounding in f, k and x*: widen by a few ulps of the values involved.
        slack = 4 * torch.finfo(k.dtype).eps * (1 + f_l.abs() + f_u.abs() + k * (lower.abs() + upper.abs()))
        b_l = g.amin(dim=0) - slack
        b_u = g.amax(dim=0) + slack
        return k, b_l, k, b_u


class Sigmoid(_SShaped):
    """Logistic sigmoid."""

    kind = "sigmoid"

    def evaluate(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(x)

    def derivative(self, x: torch.Tensor) -> torch.Tensor:
        s = torch.sigmoid(x)
        return s * (1 - s)

    def inverse_derivative(self, k: torch.Tensor) -> torch.Tensor:
        # s (1 - s) = k  ->  s = (1 + sqrt(1 - 4k)) / 2  (the root with x >= 0)
        s = (1 + torch.sqrt((1 - 4 * k).clamp_min(0))) / 2
        s = s.clamp(max=1 - torch.finfo(k.dtype).eps)
        return torch.log(s / (1 - s))


class Tanh(_SShaped):
    """Hyperbolic tangent."""

    kind = "tanh"

    def evaluate(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(x)

    def derivative(self, x: torch.Tensor) -> torch.Tensor:
        return 1 - torch.tanh(x) ** 2

    def inverse_derivative(self, k: torch.Tensor) -> torch.Tensor:
        t = torch.sqrt((1 - k).clamp_min(0)).clamp(max=1 - torch.finfo(k.dtype).eps)
        return torch.atanh(t)
