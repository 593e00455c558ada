"""SiLU (swish): ``f(x) = x sigmoid(x)``.

Not monotone (minimum at ``x* ~ -1.27846``, the root of ``1 + x (1 - sigmoid(x)) = 0``) and not
convex (``f'' = s (1 - s) (2 - x tanh(x / 2))`` changes sign at ``+-c``, ``c ~ 2.39936``). Both
constants are computed to double precision at import. Its rules are the shared ones of
:mod:`evax.bounds.ops._smooth`.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from evax.bounds.ops._smooth import SmoothOp, scalar_root
from evax.bounds.ops.registry import Call, register


def _sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x)) if x >= 0 else math.exp(x) / (1.0 + math.exp(x))


# f'(x) = s (1 + x (1 - s)): zero where 1 + x (1 - s) = 0 (on [-2, -1], where it increases).
X_MIN = scalar_root(lambda x: 1.0 + x * (1.0 - _sigmoid(x)), -2.0, -1.0)
# f''(x) = s (1 - s) (2 - x tanh(x / 2)): sign change of the last factor on [2, 3].
INFLECTION = scalar_root(lambda x: 2.0 - x * math.tanh(x / 2.0), 2.0, 3.0)


@register(nn.SiLU, F.silu, signature="(input, inplace=False)", doc="SiLU")
class SiLU(SmoothOp):
    """``x sigmoid(x)``."""

    kind = "silu"
    x_min = X_MIN
    inflection = INFLECTION
    # exp(-750) underflows: beyond |x| = 750, f is 0 or x and f' is 0 or 1 in float64.
    tail = 750.0

    @classmethod
    def convert(cls, call: Call) -> SiLU:
        call.input("input")
        call.ignore(*(k for k in ("inplace",) if k in call.bound))
        return cls()

    def evaluate(self, x: torch.Tensor) -> torch.Tensor:
        return F.silu(x)

    def f64(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(x)

    def d64(self, x: torch.Tensor) -> torch.Tensor:
        # 1 - s as sigmoid(-x): no cancellation for large x (f' -> 1 there).
        return torch.sigmoid(x) * (1 + x * torch.sigmoid(-x))
