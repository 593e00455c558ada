"""Elementwise nonlinearities and their sound linear relaxations.

* ReLU / LeakyReLU (CROWN): for ``f(x) = x`` (``x >= 0``), ``s x`` (``x < 0``) the chord through
  ``(l, f(l))`` and ``(u, f(u))`` bounds ``f`` on one side, and a line through the origin with
  the slope of the larger piece (1 if ``u >= -l``, else ``s``) on the other -- the adaptive
  choice of Zhang et al. 2018. For ``s <= 1`` (convex) the chord is the upper line; for
  ``s > 1`` (concave) it is the lower one. ``s < 0`` is not monotone (its IBP range has its
  minimum at 0).
* Sigmoid / Tanh: both lines have the chord's slope ``k``; their offsets are the exact min and
  max of ``f(x) - k x`` on ``[l, u]``, found among the end points and the (closed-form) points
  where ``f'(x) = k``. This is sound for every interval, including ones that straddle the
  inflection point, and equals the chord and the parallel tangent on the convex/concave parts.
"""

from __future__ import annotations

from abc import abstractmethod

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from evax.bounds.ops.base import ElementwiseOp, Interval, batched_dot, per_row
from evax.bounds.ops.registry import Call, register

_TINY = 1e-12


def _one_input(cls, call: Call):
    """Converter of a parameter-free activation: reads the input and ignores ``inplace``."""
    call.input("input")
    call.ignore(*(k for k in ("inplace",) if k in call.bound))
    return cls()


@register(nn.ReLU, F.relu, torch.relu, F.relu_, torch.relu_, "relu", "relu_",
          signatures={F.relu: "(input, inplace=False)", torch.relu: "(input)", F.relu_: "(input)",
                      torch.relu_: "(input)", "relu": "(input)", "relu_": "(input)"},
          doc="ReLU")
class ReLU(ElementwiseOp):
    """``max(x, 0)``."""

    kind = "relu"
    monotone = True
    kink_at_zero = True

    @classmethod
    def convert(cls, call: Call) -> ReLU:
        return _one_input(cls, call)

    def evaluate(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(x)

    def relax(self, lower: torch.Tensor, upper: torch.Tensor):
        return relu_relax(lower, upper)

    def backward(self, lam: torch.Tensor, relaxation=None):
        # Specialised: the lower line has no offset (b_l = 0).
        a_l, _, a_u, b_u = relaxation
        a_l, a_u = per_row(a_l, lam), per_row(a_u, lam)
        neg = lam.clamp_max(0)
        lam_in = lam * a_l
        lam_in = lam_in.addcmul_(neg, a_u - a_l) if not lam_in.requires_grad else lam_in + neg * (a_u - a_l)
        return [lam_in], batched_dot(neg, b_u)

    def alpha_parameters(self, lower, upper, relaxation):
        return origin_line_slopes(lower, upper, relaxation, 0.0)

    def alpha_relaxation(self, relaxation, alpha):
        return with_origin_slopes(relaxation, alpha, 0.0)

    def milp(self, model, ins, out, in_bounds) -> None:
        lo, hi = (b.reshape(-1) for b in in_bounds[0])
        model.relu(ins[0].reshape(-1), lo, hi, out=out.reshape(-1))


@register(nn.LeakyReLU, F.leaky_relu, F.leaky_relu_,
          signatures={F.leaky_relu: "(input, negative_slope=0.01, inplace=False)",
                      F.leaky_relu_: "(input, negative_slope=0.01)"},
          doc="LeakyReLU (any negative slope)")
class LeakyReLU(ElementwiseOp):
    """``x`` for ``x >= 0``, ``s x`` for ``x < 0``, any finite slope ``s``."""

    kind = "leaky_relu"
    monotone = True  # per instance: False for s < 0
    kink_at_zero = True

    def __init__(self, negative_slope: float) -> None:
        self.negative_slope = float(negative_slope)
        self.monotone = self.negative_slope >= 0

    @classmethod
    def convert(cls, call: Call) -> LeakyReLU:
        call.input("input")
        if call.module is not None:
            slope = call.module.negative_slope
        else:
            slope = call.const("negative_slope")
            call.ignore(*(k for k in ("inplace",) if k in call.bound))
        if isinstance(slope, bool) or not isinstance(slope, (int, float)) or not np.isfinite(slope):
            raise call.unsupported(f"negative_slope={slope!r} (expected a finite number)")
        return cls(slope)

    def evaluate(self, x: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.leaky_relu(x, self.negative_slope)

    def interval(self, iv: Interval) -> Interval:
        lo, hi = iv
        f_l, f_u = self.evaluate(lo), self.evaluate(hi)
        if self.monotone:
            return f_l, f_u
        # s < 0: convex with its minimum f(0) = 0.
        straddle = (lo <= 0) & (hi >= 0)
        return torch.where(straddle, torch.zeros_like(f_l), torch.minimum(f_l, f_u)), torch.maximum(f_l, f_u)

    def relax(self, lower: torch.Tensor, upper: torch.Tensor):
        return leaky_relax(lower, upper, self.negative_slope)

    def alpha_parameters(self, lower, upper, relaxation):
        return origin_line_slopes(lower, upper, relaxation, self.negative_slope)

    def alpha_relaxation(self, relaxation, alpha):
        return with_origin_slopes(relaxation, alpha, self.negative_slope)

    def milp(self, model, ins, out, in_bounds) -> None:
        # leaky_relu(z, s) = z + (1 - s) relu(-z), for every s.
        z = ins[0].reshape(-1)
        lo, hi = (b.reshape(-1) for b in in_bounds[0])
        r = model.relu(z, lo, hi, scale=-1.0)
        model.add_rows([(out.reshape(-1), 1.0), (z, -1.0), (r, -(1.0 - self.negative_slope))], 0.0, 0.0)


def relu_relax(lower: torch.Tensor, upper: torch.Tensor):
    """CROWN's relaxation ``(a_l, b_l, a_u, b_u)`` of ``relu`` on ``[lower, upper]``: the chord
    above, the line through the origin with slope ``1`` if ``u >= -l`` else ``0`` below.

    The same lines as :func:`leaky_relax` with slope 0 (bitwise, but for ``l = u = 0``, where
    every line through the origin is exact), in half the passes over the bounds: with
    ``l- = min(l, 0)`` and ``u+ = max(u, 0)`` the chord ``u+ / (u+ - l-)`` is ``1`` on active
    neurons and ``0`` on dead ones, and its offset ``-l- a_u`` is ``0`` on both.
    """
    lo, hi = lower.clamp_max(0), upper.clamp_min(0)
    a_u = hi / (hi - lo).clamp_min_(_TINY)
    b_u = torch.mul(lo, a_u).neg_()
    a_l = (hi >= -lo).to(lower.dtype)
    return a_l, torch.zeros_like(lower), a_u, b_u


def leaky_relax(lower: torch.Tensor, upper: torch.Tensor, slope: float):
    """Relaxation ``(a_l, b_l, a_u, b_u)`` of ``leaky_relu(x, slope)`` on ``[lower, upper]``."""
    active = lower >= 0
    dead = upper <= 0
    unstable = ~(active | dead)
    width = (upper - lower).clamp_min(_TINY)
    chord = (upper - slope * lower) / width
    chord_b = torch.where(unstable, (slope - chord) * lower, 0.0)
    exact = torch.where(active, 1.0, slope)
    origin = torch.where(active, 1.0, torch.where(dead, slope, torch.where(upper >= -lower, 1.0, slope)))
    chord_a = torch.where(unstable, chord, exact)
    zero = torch.zeros_like(lower)
    if slope <= 1:  # convex: chord above, a line through the origin below
        a_l, b_l, a_u, b_u = origin, zero, chord_a, chord_b
    else:  # concave: chord below, a line through the origin above
        a_l, b_l, a_u, b_u = chord_a, chord_b, origin, zero
    dt = lower.dtype
    return a_l.to(dt), b_l.to(dt), a_u.to(dt), b_u.to(dt)


def origin_line_slopes(lower: torch.Tensor, upper: torch.Tensor, relaxation, slope: float):
    """alpha-CROWN's free parameter of ``leaky_relu(x, slope)``: the slope of the relaxation's
    line through the origin (the lower line for ``slope <= 1``, the upper one above), in
    ``[min(slope, 1), max(slope, 1)]``; ``None`` when no neuron is unstable."""
    unstable = (lower < 0) & (upper > 0)
    if not bool(unstable.any()):
        return None
    a_l, _, a_u, _ = relaxation
    init = a_l if slope <= 1 else a_u
    lo, hi = min(slope, 1.0), max(slope, 1.0)
    # Stable neurons: the range collapses to the exact slope, so Adam cannot move them.
    lo_t = torch.where(unstable, torch.full_like(init, lo), init)
    hi_t = torch.where(unstable, torch.full_like(init, hi), init)
    return init, lo_t, hi_t


def with_origin_slopes(relaxation, alpha: torch.Tensor, slope: float):
    """The relaxation of ``leaky_relu(x, slope)`` whose origin line has slopes ``alpha``."""
    a_l, b_l, a_u, b_u = relaxation
    if slope <= 1:
        return alpha, b_l, a_u, b_u
    return a_l, b_l, alpha, b_u


class _SShaped(ElementwiseOp):
    """Common relaxation of sigmoid-like functions (odd-symmetric derivative, max at 0)."""

    monotone = True

    @classmethod
    def convert(cls, call: Call) -> _SShaped:
        return _one_input(cls, call)

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


@register(nn.Sigmoid, torch.sigmoid, F.sigmoid, "sigmoid", "sigmoid_", signature="(input)", doc="Sigmoid")
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


@register(nn.Tanh, torch.tanh, F.tanh, "tanh", "tanh_", signature="(input)", doc="Tanh")
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
