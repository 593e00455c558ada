"""Softplus: ``f(x) = log(1 + exp(beta x)) / beta``, and ``x`` where ``beta x > threshold``.

That switch is torch's implementation (``(x * beta) > threshold ? x : log1p(exp(x * beta)) /
beta``): the function the network computes is the smooth softplus ``sp`` except on the linear
part, where it is ``x = sp(x) - log1p(exp(-beta x)) / beta``, so it lies in
``[sp(x) - gap, sp(x)]`` with ``gap = log1p(exp(-threshold)) / beta`` (``~2e-9 / beta`` for the
default threshold 20) -- a small downward jump at ``threshold / beta``, so it is not exactly
monotone or convex. The rules account for it:

* ``interval``: ``[f(l), f(u)]`` unless the interval reaches the switch, where the range is
  widened to ``[min(f(l), sp(l) - gap), sp(u)]``;
* ``relax``: ``sp`` is convex and increasing. The upper line is the chord of ``sp`` (its offset
  the max of ``sp(x) - k x`` at the end points); the lower line is the tangent of ``sp`` with the
  same slope ``k``, at the point where ``sp'(t) = sigmoid(beta t) = k`` (``t = logit(k) / beta``,
  clamped into ``[l, u]``): the best lower line of that slope. Where the interval reaches the
  switch the lower line is moved down by ``gap``; on an interval entirely past the switch both
  lines are ``y = x`` (exact).

``beta`` must be a finite number > 0; ``threshold`` must be at most 88 (torch's float32
softplus overflows to ``inf`` for ``88.7 < beta x <= threshold``).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from evax.bounds.ops._smooth import slack
from evax.bounds.ops.base import ElementwiseOp, Interval
from evax.bounds.ops.registry import Call, register

_F64 = torch.float64
_NARROW = 1e-6
MAX_THRESHOLD = 88.0


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _log1p_exp(y: torch.Tensor) -> torch.Tensor:
    """``log(1 + exp(y))`` without overflow."""
    return y.clamp_min(0) + torch.log1p(torch.exp(-y.abs()))


@register(nn.Softplus, F.softplus, signature="(input, beta=1.0, threshold=20.0)",
          doc="Softplus (beta > 0, threshold <= 88)")
class Softplus(ElementwiseOp):
    """``log(1 + exp(beta x)) / beta``, reverting to ``x`` above ``threshold / beta``."""

    kind = "softplus"
    monotone = True  # up to the jump of the switch, which interval() accounts for

    def __init__(self, beta: float, threshold: float) -> None:
        self.beta = float(beta)
        self.threshold = float(threshold)
        # torch's f(x) >= sp(x) - gap everywhere (computed without overflow for any threshold).
        self.gap = float(_log1p_exp(torch.tensor(-self.threshold, dtype=_F64))) / self.beta

    @classmethod
    def convert(cls, call: Call) -> Softplus:
        call.input("input")
        if call.module is not None:
            beta, threshold = call.module.beta, call.module.threshold
        else:
            beta, threshold = call.const("beta"), call.const("threshold")
        if not (_number(beta) and beta > 0):
            raise call.unsupported(f"argument beta={beta!r} is not supported (expected a finite number > 0)")
        if not (_number(threshold) and threshold <= MAX_THRESHOLD):
            raise call.unsupported(
                f"argument threshold={threshold!r} is not supported (expected a finite number <= "
                f"{MAX_THRESHOLD:g}: torch's float32 softplus overflows to inf above beta * x = 88.7)"
            )
        return cls(beta, threshold)

    def evaluate(self, x: torch.Tensor) -> torch.Tensor:
        return F.softplus(x, self.beta, self.threshold)

    def smooth(self, x: torch.Tensor) -> torch.Tensor:
        """The softplus without the switch, ``sp(x)``."""
        return _log1p_exp(self.beta * x) / self.beta

    def _linear(self, x: torch.Tensor) -> torch.Tensor:
        """Where torch takes the linear branch at ``x`` (and, the product's rounding being
        monotone, at every point above it)."""
        return x * self.beta > self.threshold

    def _reaches_switch(self, u: torch.Tensor) -> torch.Tensor:
        """Where ``[., u]`` may contain linear-branch points (with a margin for rounding)."""
        return self.beta * u.to(_F64) > self.threshold - 1e-4 * (1 + abs(self.threshold))

    def interval(self, iv: Interval) -> Interval:
        lo, hi = iv
        f_l, f_u = self.evaluate(lo), self.evaluate(hi)
        cross = self._reaches_switch(hi) & ~self._linear(lo)
        if not bool(cross.any()):
            return f_l, f_u
        dt = lo.dtype
        s_l = self.smooth(lo.to(_F64))
        s_u = self.smooth(hi.to(_F64))
        low = (s_l - self.gap - slack(dt, s_l)).to(dt)
        high = (s_u + slack(dt, s_u)).to(dt)
        return (torch.where(cross, torch.minimum(f_l, low), f_l),
                torch.where(cross, torch.maximum(f_u, high), f_u))

    def relax(self, lower: torch.Tensor, upper: torch.Tensor):
        dt = lower.dtype
        l, u = lower.to(_F64), upper.to(_F64)
        s_l, s_u = self.smooth(l), self.smooth(u)
        width = u - l
        narrow = width < _NARROW
        mid = 0.5 * (l + u)
        k = torch.where(narrow, torch.sigmoid(self.beta * mid), (s_u - s_l) / width.clamp_min(1e-300))
        k = k.clamp(0.0, 1.0).to(dt).to(_F64)  # offsets for the slope actually returned
        g_l, g_u = s_l - k * l, s_u - k * u
        b_u = torch.maximum(g_l, g_u)  # sp - k x is convex: its max is at an end point
        t = (torch.logit(k) / self.beta).clamp(l, u)  # its min: sp'(t) = k
        b_l = torch.minimum(self.smooth(t) - k * t, torch.minimum(g_l, g_u))
        b_l = b_l - self._reaches_switch(upper).to(_F64) * self.gap  # (a float64 product)
        s = slack(dt, s_l, s_u, k * l, k * u)
        a_l, b_l, a_u, b_u = k.to(dt), (b_l - s).to(dt), k.to(dt), (b_u + s).to(dt)
        linear = self._linear(lower)  # f(x) = x on the whole interval
        one, zero = torch.ones_like(a_l), torch.zeros_like(a_l)
        return (torch.where(linear, one, a_l), torch.where(linear, zero, b_l),
                torch.where(linear, one, a_u), torch.where(linear, zero, b_u))
