"""Shared relaxation of smooth, non-monotone, non-convex activations (GELU, SiLU).

Such an ``f`` has one global minimum ``x*`` (``f' < 0`` left of it, ``f' > 0`` right of it) and
two inflection points ``-c < x* ... < c`` with ``f'' < 0`` outside ``[-c, c]`` and ``f'' > 0``
inside, so ``f'`` is monotone on each of ``(-inf, -c]``, ``[-c, c]`` and ``[c, inf)``.

* ``interval``: the minimum is ``f(clamp(x*, l, u))`` (widened by a rounding slack when ``x*``
  lies inside ``[l, u]``), the maximum ``max(f(l), f(u))``.
* ``relax``: both lines have one slope ``k`` (the chord's, or ``f'`` at the midpoint of a narrow
  interval), and their offsets are the exact min and max of ``g(x) = f(x) - k x`` on
  ``[l, u]``. ``g``'s extrema lie among ``l``, ``u`` and the roots of ``f'(x) = k``; there is at
  most one root per monotone segment of ``f'``, found by a vectorised bisection (a fixed number
  of steps, in float64) on the segment clamped to ``[l, u]``. Any slope is sound with these
  offsets, so the bisection only has to land near the critical points, and a point it returns
  off a root is still a point of ``[l, u]`` (it can only make the max smaller by a second-order
  amount, covered by the slack). Beyond ``|x| = tail`` the function is ``0`` or ``x`` to double
  precision, so the outer segments stop there. Where the constant bounds ``[min f, max f]`` have
  a smaller gap than the lines, the slope is 0 (never looser than IBP's bounds).

Everything is computed in float64 from the inputs, the slope is first rounded to the inputs'
dtype (so that the offsets are exact for the slope actually returned), and the offsets are
widened by a few ulps of the values involved, as in the sigmoid relaxation.
"""

from __future__ import annotations

import math
from abc import abstractmethod
from collections.abc import Callable

import torch

from evax.bounds.ops.base import ElementwiseOp, Interval

_F64 = torch.float64
BISECTION_STEPS = 64
_NARROW = 1e-6


def scalar_root(fun: Callable[[float], float], a: float, b: float) -> float:
    """The root of ``fun`` in ``[a, b]`` (``fun(a)`` and ``fun(b)`` of opposite signs), to the
    last bit of a double (bisection until the midpoint no longer moves)."""
    fa = fun(a)
    if fa == 0:
        return a
    if (fa > 0) == (fun(b) > 0):
        raise ValueError("scalar_root: no sign change")
    for _ in range(2000):
        m = 0.5 * (a + b)
        if m in (a, b):
            break
        fm = fun(m)
        if fm == 0:
            return m
        if (fm > 0) == (fa > 0):
            a, fa = m, fm
        else:
            b = m
    return 0.5 * (a + b)


def slack(dtype: torch.dtype, *terms: torch.Tensor, ulps: float = 4.0) -> torch.Tensor:
    """``ulps`` ulps (of ``dtype``) of ``1 + sum |terms|``: covers the rounding of ``f`` in the
    network's dtype and of the returned offsets."""
    total = torch.ones_like(terms[0])
    for t in terms:
        total = total + t.abs()
    return ulps * torch.finfo(dtype).eps * total


class SmoothOp(ElementwiseOp):
    """An activation with the shape described in the module docstring.

    Subclasses set ``x_min`` (the argmin), ``inflection`` (``c``), ``tail`` and implement
    :meth:`evaluate` (the network's function, in its dtype), :meth:`f64` and :meth:`d64`
    (``f`` and ``f'`` on float64 tensors, accurate in the tails).
    """

    monotone = False
    # How far torch's own f may be from the exact one, in ulps of 1 + |f| (measured on a dense
    # grid of [-60, 60]: F.silu 0.9, F.gelu 9.5 in float32 -- its vectorised erf).
    rounding_ulps: float = 4.0
    x_min: float = 0.0
    inflection: float = 1.0
    tail: float = 50.0

    @abstractmethod
    def f64(self, x: torch.Tensor) -> torch.Tensor:
        """``f(x)`` in float64."""

    @abstractmethod
    def d64(self, x: torch.Tensor) -> torch.Tensor:
        """``f'(x)`` in float64."""

    # -- IBP -------------------------------------------------------------------------------------
    def interval(self, iv: Interval) -> Interval:
        lo, hi = iv
        f_l, f_u = self.evaluate(lo), self.evaluate(hi)
        x_star = torch.full_like(lo, self.x_min).clamp(lo, hi)
        f_star = self.evaluate(x_star)
        # torch's f is only monotone on each side of x* up to its own rounding: widen both ends.
        low = torch.minimum(f_star, torch.minimum(f_l, f_u))
        high = torch.maximum(f_l, f_u)
        ulps = self.rounding_ulps
        return low - slack(lo.dtype, low, ulps=ulps), high + slack(lo.dtype, high, ulps=ulps)

    # -- relaxation ------------------------------------------------------------------------------
    def critical_points(self, l: torch.Tensor, u: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        """``(3, *shape)`` points of ``[l, u]`` (float64): on each monotone segment of ``f'``
        (clamped to ``[l, u]`` and to ``[-tail, tail]``) the root of ``f' = k``, or the segment's
        end where ``f' - k`` keeps one sign."""
        c, t = self.inflection, self.tail
        seg_lo = torch.stack([l.clamp(-t, -c), l.clamp(-c, c), l.clamp(c, t)])
        seg_hi = torch.stack([u.clamp(-t, -c), u.clamp(-c, c), u.clamp(c, t)])
        # f' decreases on the outer segments and increases on the middle one.
        sign = torch.tensor([-1.0, 1.0, -1.0], dtype=_F64, device=l.device).view(3, *([1] * l.ndim))
        a, b = seg_lo, torch.maximum(seg_hi, seg_lo)
        kk = k.unsqueeze(0)
        for _ in range(BISECTION_STEPS):
            m = 0.5 * (a + b)
            below = sign * (self.d64(m) - kk) < 0  # the root is right of m
            a = torch.where(below, m, a)
            b = torch.where(below, b, m)
        return torch.minimum(torch.maximum(0.5 * (a + b), l), u)

    def relax(self, lower: torch.Tensor, upper: torch.Tensor):
        dt = lower.dtype
        l, u = lower.to(_F64), upper.to(_F64)
        f_l, f_u = self.f64(l), self.f64(u)
        width = u - l
        mid = 0.5 * (l + u)
        narrow = width < _NARROW
        k = torch.where(narrow, self.d64(mid), (f_u - f_l) / width.clamp_min(1e-300))
        k = k.to(dt).to(_F64)  # the offsets are computed for the slope actually returned
        pts = torch.cat([l.unsqueeze(0), u.unsqueeze(0), self.critical_points(l, u, k)])
        g = self.f64(pts) - k * pts
        b_l, b_u = g.amin(dim=0), g.amax(dim=0)
        # The constant bounds [min f, max f] when their gap is smaller (slope 0).
        c_lo = torch.minimum(self.f64(torch.full_like(l, self.x_min).clamp(l, u)), torch.minimum(f_l, f_u))
        c_hi = torch.maximum(f_l, f_u)
        s_line = slack(dt, f_l, f_u, k * l, k * u, ulps=self.rounding_ulps)
        s_flat = slack(dt, c_lo, c_hi, ulps=self.rounding_ulps)
        flat = (c_hi - c_lo + 2 * s_flat) < (b_u - b_l + 2 * s_line)
        k = torch.where(flat, 0.0, k)
        b_l = torch.where(flat, c_lo, b_l)
        b_u = torch.where(flat, c_hi, b_u)
        s = torch.where(flat, s_flat, s_line)
        return k.to(dt), (b_l - s).to(dt), k.to(dt), (b_u + s).to(dt)


def phi(x: float) -> float:
    """The standard normal density."""
    return math.exp(-0.5 * x * x) / math.sqrt(2 * math.pi)


def big_phi(x: float) -> float:
    """The standard normal distribution function (accurate in the left tail)."""
    return 0.5 * math.erfc(-x / math.sqrt(2))
