"""GELU (exact erf form): ``f(x) = x Phi(x)``.

Not monotone (minimum at ``x* ~ -0.7518``, the root of ``Phi(x) + x phi(x) = 0``) and not
convex (``f'' = phi(x) (2 - x^2)`` changes sign at ``+-sqrt(2)``). Its rules are the shared
ones of :mod:`evax.bounds.ops._smooth`: an exact IBP range and two parallel lines whose offsets
are the exact extrema of ``f(x) - k x`` on the interval. ``approximate='tanh'`` is refused.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from evax.bounds.ops._smooth import SmoothOp, big_phi, phi, scalar_root
from evax.bounds.ops.registry import Call, register

_SQRT2 = math.sqrt(2.0)
_INV_SQRT2PI = 1.0 / math.sqrt(2.0 * math.pi)
# argmin of GELU: Phi(x) + x phi(x) = 0 on [-sqrt 2, 0] (f' is increasing there).
X_MIN = scalar_root(lambda x: big_phi(x) + x * phi(x), -_SQRT2, 0.0)


@register(nn.GELU, F.gelu, signature="(input, approximate='none')", doc="GELU (approximate='none')")
class GELU(SmoothOp):
    """``x Phi(x)``, ``Phi`` the standard normal distribution function."""

    kind = "gelu"
    x_min = X_MIN
    inflection = _SQRT2
    # phi(40) ~ 1e-348 underflows: beyond |x| = 40, f is 0 or x and f' is 0 or 1 in float64.
    tail = 40.0
    rounding_ulps = 16.0  # torch's float32 GELU is off by up to 9.5 ulps of 1 + |f|

    @classmethod
    def convert(cls, call: Call) -> GELU:
        call.input("input")
        if call.module is not None:
            approximate = call.module.approximate
        else:
            approximate = call.const("approximate")
        if approximate != "none":
            raise call.unsupported(
                f"argument approximate={approximate!r} is not supported (only the exact erf form, "
                "approximate='none')"
            )
        return cls()

    def evaluate(self, x: torch.Tensor) -> torch.Tensor:
        return F.gelu(x)

    @staticmethod
    def _cdf(x: torch.Tensor) -> torch.Tensor:
        return 0.5 * torch.special.erfc(-x / _SQRT2)

    def f64(self, x: torch.Tensor) -> torch.Tensor:
        return x * self._cdf(x)

    def d64(self, x: torch.Tensor) -> torch.Tensor:
        return self._cdf(x) + x * torch.exp(-0.5 * x * x) * _INV_SQRT2PI
