"""The operator interface of the bound engine.

Every op of the graph holds its three rules side by side (auto_LiRPA's operator design):

* ``interval``  -- IBP: bounds of the output from intervals of the inputs;
* ``forward``   -- affine forms ``A x + b`` of the output in terms of the network input ``x``;
* ``backward``  -- CROWN: given a linear function ``lam . y`` of the output, a linear function of
  the inputs that lower-bounds it.

Conventions (``N`` boxes, ``K`` specification rows, ``d`` input variables, ``S`` the op's
per-sample output shape):

* intervals are pairs ``(lower, upper)`` of shape ``(N, *S)``;
* a :class:`Form` holds ``lower = al . x + bl`` and ``upper = au . x + bu`` with coefficients of
  shape ``(N or 1, d, *S)`` and offsets ``(N or 1, *S)`` (batch ``1`` = shared by every box);
* backward multipliers ``lam`` have shape ``(N or 1, K, *S)``; ``backward`` returns the
  multipliers of each input and the ``(N or 1, K)`` constant it produced. The engine only ever
  computes *lower* bounds backward (an upper bound of ``lam . y`` is ``-lower(-lam . y)``).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

import torch

Interval = tuple[torch.Tensor, torch.Tensor]


@dataclass
class Form:
    """Affine lower/upper forms of a node in terms of the flattened input."""

    al: torch.Tensor
    bl: torch.Tensor
    au: torch.Tensor
    bu: torch.Tensor

    @property
    def shared(self) -> bool:
        """True when lower and upper forms are the same object (no relaxation seen yet)."""
        return self.al is self.au and self.bl is self.bu


def flat_batch(x: torch.Tensor, n_lead: int) -> tuple[torch.Tensor, tuple[int, ...]]:
    """Merge the first ``n_lead`` dimensions into one (for ops that take a batch)."""
    lead = tuple(x.shape[:n_lead])
    return x.reshape(-1, *x.shape[n_lead:]), lead


class Op(ABC):
    """A node of the bound graph. ``path`` is the module path shown in error messages."""

    kind: str = "op"
    n_inputs: int = 1
    path: str = ""

    @abstractmethod
    def evaluate(self, *xs: torch.Tensor) -> torch.Tensor:
        """Concrete output for concrete inputs ``(B, *S_in)``."""

    @abstractmethod
    def interval(self, *ivs: Interval) -> Interval:
        """IBP rule."""

    @abstractmethod
    def forward(self, *forms: Form, relaxation=None) -> Form:
        """Forward (affine) rule."""

    @abstractmethod
    def backward(self, lam: torch.Tensor, relaxation=None) -> tuple[list[torch.Tensor], torch.Tensor | None]:
        """Backward (CROWN) rule for a lower bound of ``lam . y``."""

    # Nonlinear ops need the bounds of their input to build a relaxation.
    needs_relaxation: bool = False
    # Monotone nondecreasing in every input: ``interval`` is then the exact range over a box,
    # and no linear bound of the output can beat it (see Propagator._node_bounds).
    monotone: bool = False

    def relax(self, lower: torch.Tensor, upper: torch.Tensor):  # pragma: no cover - linear ops
        return None

    def to(self, device=None, dtype=None) -> Op:
        """Move the op's constant tensors (in place on the op; returns self)."""
        for key, value in list(vars(self).items()):
            if isinstance(value, torch.Tensor):
                setattr(
                    self,
                    key,
                    value.to(device=device, dtype=dtype if value.is_floating_point() else None),
                )
        return self


class LinearOp(Op):
    """An op ``y = L(x_1, ..., x_k) + bias`` with ``L`` linear.

    Subclasses implement :meth:`apply` (``L``), :meth:`apply_abs` (``|L|``, the entrywise
    absolute value of its matrix) and :meth:`transpose` (``L^T``), all batch-first.
    """

    bias: torch.Tensor | None = None

    @abstractmethod
    def apply(self, *xs: torch.Tensor) -> torch.Tensor:
        """``L(x)`` for ``xs`` of shape ``(B, *S_in)`` -> ``(B, *S)``."""

    def apply_abs(self, *xs: torch.Tensor) -> torch.Tensor:
        """``|L|(x)``; defaults to ``L`` (ops with nonnegative matrices)."""
        return self.apply(*xs)

    @abstractmethod
    def transpose(self, lam: torch.Tensor) -> list[torch.Tensor]:
        """``L^T lam`` for ``lam`` of shape ``(B, *S)`` -> one ``(B, *S_in)`` per input."""

    def evaluate(self, *xs: torch.Tensor) -> torch.Tensor:
        y = self.apply(*xs)
        return y if self.bias is None else y + self.bias

    def interval(self, *ivs: Interval) -> Interval:
        mids = [(lo + hi) / 2 for lo, hi in ivs]
        rads = [(hi - lo) / 2 for lo, hi in ivs]
        mid = self.evaluate(*mids)
        rad = self.apply_abs(*rads)
        return mid - rad, mid + rad

    def _apply_forms(self, coeffs: list[torch.Tensor], use_abs: bool) -> torch.Tensor:
        """Apply ``L`` (or ``|L|``) to coefficient tensors ``(B, d, *S_in)``."""
        b = max(c.shape[0] for c in coeffs)
        d = coeffs[0].shape[1]
        flat = [c.expand(b, *c.shape[1:]).reshape(b * d, *c.shape[2:]) for c in coeffs]
        out = self.apply_abs(*flat) if use_abs else self.apply(*flat)
        return out.reshape(b, d, *out.shape[1:])

    def forward(self, *forms: Form, relaxation=None) -> Form:
        if all(f.shared for f in forms):
            a = self._apply_forms([f.al for f in forms], use_abs=False)
            b = self.evaluate(*[f.bl for f in forms])
            return Form(a, b, a, b)
        # L applied to al + au and |L| to au - al (twice the centre and the radius): the halving
        # moves to the outputs, in place -- exact in binary floating point, and two passes fewer
        # over the (N, d, *S_in) coefficients.
        mid2 = self._apply_forms([f.al + f.au for f in forms], use_abs=False)
        rad2 = self._apply_forms([f.au - f.al for f in forms], use_abs=True)
        al = torch.sub(mid2, rad2).mul_(0.5)
        au = mid2.add_(rad2).mul_(0.5)
        mid_b = self.evaluate(*[(f.bl + f.bu) / 2 for f in forms])
        rad_b = self.apply_abs(*[(f.bu - f.bl) / 2 for f in forms])
        return Form(al, mid_b - rad_b, au, mid_b + rad_b)

    def backward(self, lam: torch.Tensor, relaxation=None):
        flat, lead = flat_batch(lam, 2)
        ins = [t.reshape(*lead, *t.shape[1:]) for t in self.transpose(flat)]
        const = None
        if self.bias is not None:
            const = (lam * self.bias).flatten(2).sum(dim=2)
        return ins, const


class ElementwiseOp(Op):
    """A monotone nondecreasing elementwise nonlinearity with linear relaxations.

    :meth:`relax` returns ``(a_l, b_l, a_u, b_u)``, each ``(N, *S)``, such that
    ``a_l x + b_l <= f(x) <= a_u x + b_u`` for every ``x`` in ``[lower, upper]``.
    """

    needs_relaxation = True
    monotone = True

    @abstractmethod
    def relax(self, lower: torch.Tensor, upper: torch.Tensor):
        """Linear relaxation on ``[lower, upper]``."""

    def interval(self, iv: Interval) -> Interval:
        return self.evaluate(iv[0]), self.evaluate(iv[1])

    def forward(self, form: Form, relaxation=None) -> Form:
        a_l, b_l, a_u, b_u = relaxation
        al = signed_combine(a_l.unsqueeze(1), form.al, form.au)
        au = signed_combine(a_u.unsqueeze(1), form.au, form.al)
        bl = signed_combine(a_l, form.bl, form.bu) + b_l
        bu = signed_combine(a_u, form.bu, form.bl) + b_u
        return Form(al, bl, au, bu)

    def backward(self, lam: torch.Tensor, relaxation=None):
        a_l, b_l, a_u, b_u = relaxation
        # pos * a_l + neg * a_u == lam * a_l + neg * (a_u - a_l): two passes instead of five.
        neg = lam.clamp_max(0)
        lam_in = lam * a_l.unsqueeze(1)
        lam_in.addcmul_(neg, (a_u - a_l).unsqueeze(1))
        const = batched_dot(lam, b_l) + batched_dot(neg, b_u - b_l)
        return [lam_in], const


def signed_combine(coef: torch.Tensor, x_pos: torch.Tensor, x_neg: torch.Tensor) -> torch.Tensor:
    """``max(coef, 0) * x_pos + min(coef, 0) * x_neg`` (a bound of ``coef * x`` from bounds of
    ``x``); a single product when ``coef`` has one sign everywhere."""
    if bool((coef >= 0).all()):
        return coef * x_pos
    if bool((coef <= 0).all()):
        return coef * x_neg
    return coef.clamp_min(0) * x_pos + coef.clamp_max(0) * x_neg


def batched_dot(lam: torch.Tensor, vec: torch.Tensor) -> torch.Tensor:
    """``sum_s lam[b, k, s] * vec[b, s]``: ``(B or 1, K, *S), (N, *S) -> (N, K)`` as a GEMM."""
    n = vec.shape[0]
    flat_vec = vec.reshape(n, -1)
    flat_lam = lam.flatten(2)
    if flat_lam.shape[0] == 1:
        return flat_vec @ flat_lam[0].T
    return (flat_lam @ flat_vec.unsqueeze(-1))[..., 0]
