"""Hardtanh / ReLU6: ``f(x) = clamp(x, a, b)`` with ``a = min_val < b = max_val`` (finite).

Monotone and piecewise linear with kinks at ``a`` and ``b``. The slopes of the two lines:

* inside one linear piece (``u <= a``, ``l >= b`` or ``a <= l <= u <= b``): the piece's slope
  (0 or 1) for both lines, which are then exact;
* spanning only the kink at ``a`` (``f = max(x, a)`` there, convex): CROWN's ReLU choice, the
  chord above and, below, the line through the kink with the slope of the larger part
  (1 if ``u - a >= a - l``, else 0);
* spanning only the kink at ``b`` (``f = min(x, b)``, concave): the mirror image, the chord
  below and the adaptive line through ``(b, b)`` above;
* spanning both: the chord slope ``(b - a) / (u - l)`` for both lines (their gap is at most
  ``b - a``, the gap of the constant bounds).

Whatever the slope ``k``, the offsets are the exact min and max of ``f(x) - k x`` on
``[l, u]``, attained (``f`` being piecewise linear) among ``l``, ``u`` and the kinks clamped into
``[l, u]``. The MILP encoding is ``y = a + relu(z - a) - relu(z - b)``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from evax.bounds.ops._smooth import slack
from evax.bounds.ops.base import ElementwiseOp
from evax.bounds.ops.registry import Call, register

_F64 = torch.float64


def _finite_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


@register(nn.Hardtanh, nn.ReLU6, F.hardtanh, F.relu6, F.hardtanh_,
          signatures={F.hardtanh: "(input, min_val=-1.0, max_val=1.0, inplace=False)",
                      F.relu6: "(input, inplace=False)",
                      F.hardtanh_: "(input, min_val=-1.0, max_val=1.0)"},
          doc="Hardtanh / ReLU6 (clamp to finite [min_val, max_val])")
class Hardtanh(ElementwiseOp):
    """``clamp(x, min_val, max_val)``."""

    kind = "hardtanh"
    monotone = True

    def __init__(self, min_val: float, max_val: float) -> None:
        self.min_val = float(min_val)
        self.max_val = float(max_val)

    @classmethod
    def convert(cls, call: Call) -> Hardtanh:
        call.input("input")
        expect = "a finite number"
        if call.module is not None:
            lo, hi = call.module.min_val, call.module.max_val
            for name, value in (("min_val", lo), ("max_val", hi)):
                if not _finite_number(value):
                    raise call.unsupported(f"{name}={value!r} is not supported (expected {expect})")
        elif call.handle is F.relu6:
            lo, hi = 0.0, 6.0
        else:
            lo = call.literal("min_val", test=_finite_number, expect=expect)
            hi = call.literal("max_val", test=_finite_number, expect=expect)
        call.ignore(*(k for k in ("inplace",) if k in call.bound))
        if not lo < hi:
            raise call.unsupported(f"min_val={lo!r} must be less than max_val={hi!r}")
        return cls(lo, hi)

    def evaluate(self, x: torch.Tensor) -> torch.Tensor:
        return F.hardtanh(x, self.min_val, self.max_val)

    def relax(self, lower: torch.Tensor, upper: torch.Tensor):
        dt = lower.dtype
        # The kinks as the network's dtype rounds them (torch clamps to min_val cast to dtype).
        a = float(torch.tensor(self.min_val, dtype=dt))
        b = float(torch.tensor(self.max_val, dtype=dt))
        l, u = lower.to(_F64), upper.to(_F64)
        f_l, f_u = l.clamp(a, b), u.clamp(a, b)
        chord = (f_u - f_l) / (u - l).clamp_min(1e-300)
        flat = (u <= a) | (l >= b)
        ident = (l >= a) & (u <= b)
        low_kink = (l < a) & (u > a) & (u <= b)
        high_kink = (l >= a) & (l < b) & (u > b)
        one = torch.ones_like(l)
        zero = torch.zeros_like(l)
        k_low = torch.where(u - a >= a - l, one, zero)  # through (a, a) below
        k_high = torch.where(b - l >= u - b, one, zero)  # through (b, b) above
        k_l = torch.where(flat, zero, torch.where(ident, one, torch.where(low_kink, k_low, chord)))
        k_u = torch.where(flat, zero, torch.where(ident, one, torch.where(high_kink, k_high, chord)))
        k_l, k_u = k_l.to(dt).to(_F64), k_u.to(dt).to(_F64)
        pts = torch.stack([l, u, torch.full_like(l, a).clamp(l, u), torch.full_like(l, b).clamp(l, u)])
        f = pts.clamp(a, b)
        b_l = (f - k_l * pts).amin(dim=0)
        b_u = (f - k_u * pts).amax(dim=0)
        # Slopes 0 and 1 give exact offsets; a chord slope is widened by a few ulps.
        s_l = torch.where((k_l == 0) | (k_l == 1), 0.0, slack(dt, f_l, f_u, k_l * l, k_l * u))
        s_u = torch.where((k_u == 0) | (k_u == 1), 0.0, slack(dt, f_l, f_u, k_u * l, k_u * u))
        return k_l.to(dt), (b_l - s_l).to(dt), k_u.to(dt), (b_u + s_u).to(dt)

    def milp(self, model, ins, out, in_bounds) -> None:
        # clamp(z, a, b) = a + relu(z - a) - relu(z - b).
        z = ins[0].reshape(-1)
        lo, hi = (x.reshape(-1) for x in in_bounds[0])
        r_a = model.relu(z, lo, hi, shift=-self.min_val)
        r_b = model.relu(z, lo, hi, shift=-self.max_val)
        model.add_rows([(out.reshape(-1), 1.0), (r_a, -1.0), (r_b, 1.0)], self.min_val, self.min_val)
