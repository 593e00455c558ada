"""Input perturbation sets: the ball B(x) of the EVA paper and its restrictions.

A :class:`Ball` is ``{x' : ||x' - x||_p <= eps, x'_u = x_u for fixed u, lo <= x' <= hi}`` for a
batch of centres; a :class:`Box` is an arbitrary axis-aligned box ``[lower, upper]`` (used e.g. by
the hybrid EVA for empirical bounds of an intermediate layer). Both expose the two things the
bound engine needs:

* :meth:`interval` -- the interval hull ``(lo, hi)`` of the set, shapes ``(N, *S)``;
* :meth:`concretize` -- the exact minimum of a linear function ``A x + b`` over the set,
  computed with the dual norm: ``min_x a.x = a.c - eps * ||a_free||_q`` with ``1/p + 1/q = 1``
  (Hölder), or ``a.mid - |a|.rad`` for boxes.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Sequence

import torch

from evax.core.checks import check_inputs
from evax.errors import InvalidInputError

_NORMS = {math.inf: math.inf, 2.0: 2.0, 1.0: 1.0}


def _as_norm(p: float | int | str) -> float:
    if isinstance(p, str):
        key = p.strip().lower()
        p = math.inf if key in {"inf", "linf", "l_inf", "infinity"} else p
    try:
        value = float(p)
    except (TypeError, ValueError):
        raise InvalidInputError(f"p must be one of inf, 2, 1; got {p!r}") from None
    if value not in _NORMS:
        raise InvalidInputError(f"p must be one of inf, 2, 1; got {p!r}")
    return value


class PerturbationSet(ABC):
    """Interface shared by :class:`Ball` and :class:`Box` (what the bound engine consumes).

    Linear functions are bounded through a reference point ``r`` of the set and the *spread*
    ``s(a) = max_{x in set} a . (x - r)``, so that ``min a . x = a . r - s(a)`` when the set is
    symmetric about ``r`` (boxes about their middle, balls about their centre).
    """

    center: torch.Tensor

    @property
    def batch_size(self) -> int:
        return self.center.shape[0]

    @property
    def shape(self) -> tuple[int, ...]:
        """Per-sample shape ``S`` of the inputs."""
        return tuple(self.center.shape[1:])

    @abstractmethod
    def interval(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Interval hull ``(lo, hi)``, each ``(N, *S)``."""

    @abstractmethod
    def reference(self) -> torch.Tensor:
        """The point ``r`` the set is symmetric about, ``(N, *S)``."""

    @abstractmethod
    def spread(self, coeffs: torch.Tensor, rows: slice | None = None) -> torch.Tensor:
        """``max_x coeffs . (x - r)`` over the set: ``(B, K, d) -> (B, K)``.

        ``rows`` selects the boxes ``coeffs`` belongs to (all of them by default); ``B`` may be
        1 for coefficients shared by every box.
        """

    def concretize(self, coeffs: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        """Lower bound of ``coeffs . x + bias`` over the set.

        Args:
            coeffs: ``(N or 1, K, d)`` with ``d = prod(S)``.
            bias: ``(N, K)`` (or broadcastable).
        Returns:
            ``(N, K)`` the exact minimum over the set (up to floating point).
        """
        n = self.batch_size
        ref = self.reference().reshape(n, -1)
        if coeffs.shape[0] == 1 and n > 1:
            value = ref @ coeffs[0].T
        else:
            value = (coeffs @ ref.unsqueeze(-1))[..., 0]
        return value - self.spread(coeffs) + bias

    def box_radius(self) -> torch.Tensor | None:
        """``(N, *S)`` half-widths when the set is the box ``reference() +- radius``, else ``None``."""
        return None

    @abstractmethod
    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None):
        """A copy on another device/dtype."""

    @abstractmethod
    def select(self, index: slice | torch.Tensor) -> PerturbationSet:
        """The boxes ``index`` of the batch."""


class Box(PerturbationSet):
    """The box ``{x : lower <= x <= upper}`` for a batch; shapes ``(N, *S)``."""

    def __init__(self, lower: torch.Tensor, upper: torch.Tensor) -> None:
        check_inputs(lower, "lower")
        check_inputs(upper, "upper")
        if lower.shape != upper.shape:
            raise InvalidInputError(
                f"lower and upper must have the same shape, got {tuple(lower.shape)} and {tuple(upper.shape)}"
            )
        if (lower > upper).any():
            raise InvalidInputError("Box with lower > upper somewhere: the set is empty")
        self.lower = lower
        self.upper = upper
        self.center = (lower + upper) / 2

    def interval(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.lower, self.upper

    def reference(self) -> torch.Tensor:
        return self.center

    def spread(self, coeffs: torch.Tensor, rows: slice | None = None) -> torch.Tensor:
        return _box_spread(coeffs, self.box_radius().reshape(self.batch_size, -1), rows)

    def box_radius(self) -> torch.Tensor:
        return (self.upper - self.lower) / 2

    def to(self, device=None, dtype=None) -> Box:
        return Box(self.lower.to(device=device, dtype=dtype), self.upper.to(device=device, dtype=dtype))

    def select(self, index) -> Box:
        return Box(self.lower[index], self.upper[index])

    def __repr__(self) -> str:
        return f"Box(batch={self.batch_size}, shape={self.shape})"


def _box_spread(coeffs: torch.Tensor, rad: torch.Tensor, rows) -> torch.Tensor:
    """``|coeffs| . rad`` for radii ``rad`` of shape ``(N, d)``: ``(B, K, d) -> (B, K)``."""
    if rows is not None:
        rad = rad[rows]
    if coeffs.shape[0] == 1 and rad.shape[0] > 1:
        return rad @ coeffs[0].abs().T
    return (coeffs.abs() @ rad.unsqueeze(-1))[..., 0]


class Ball(PerturbationSet):
    """The perturbation ball ``B(x) = {x' : ||x' - x||_p <= eps}`` with fixed variables.

    Args:
        center: ``(N, *S)`` the points ``x`` (e.g. images ``(N, C, H, W)``).
        eps: radius ``> 0``: a float, or a tensor ``(N,)`` with one radius per sample.
        p: the norm, ``inf`` (default), ``2`` or ``1``.
        fixed: optional bool tensor broadcastable to ``center``; ``True`` marks variables that
            are *not* perturbed (the paper's ``B_u``).
        domain: optional ``(lo, hi)`` (floats or tensors broadcastable to ``center``) clipping
            the set to valid inputs, e.g. ``(0, 1)`` for images. Only with ``p=inf``: the
            intersection of an L1/L2 ball with a box is not a set whose linear bounds have a
            closed form. The centre must lie in the domain.
        sign: ``0`` (default) for the whole ball; ``+1`` keeps only ``delta >= 0`` (the EVA
            paper's positive ball ``B+``), ``-1`` only ``delta <= 0`` (``B-``). Linear bounds of
            the half balls stay in closed form for every norm (only the coefficients of one
            sign can be exploited: ``min_{delta >= 0, ||delta|| <= eps} a.delta =
            -eps ||min(a, 0)||_q``).

    The set is never empty (it contains ``center``). Tensors given are not modified.
    """

    def __init__(
        self,
        center: torch.Tensor,
        eps: float | torch.Tensor,
        p: float | int | str = math.inf,
        fixed: torch.Tensor | None = None,
        domain: tuple[float | torch.Tensor, float | torch.Tensor] | None = None,
        sign: int = 0,
    ) -> None:
        check_inputs(center, "center")
        if sign not in (0, 1, -1):
            raise InvalidInputError(f"sign must be 0, +1 or -1, got {sign!r}")
        self.sign = int(sign)
        self.center = center
        self.p = _as_norm(p)
        self.eps = self._check_eps(eps, center)
        self.fixed = self._check_fixed(fixed, center)
        self.domain = self._check_domain(domain, center, self.p)
        self._cache: dict[str, torch.Tensor] = {}

    # -- validation -------------------------------------------------------------------------
    @staticmethod
    def _check_eps(eps: float | torch.Tensor, center: torch.Tensor) -> torch.Tensor:
        n = center.shape[0]
        if isinstance(eps, torch.Tensor):
            if eps.dtype == torch.bool or eps.is_complex():
                raise InvalidInputError(f"eps must hold positive real numbers, got a {eps.dtype} tensor")
            e = eps.detach().to(device=center.device, dtype=center.dtype)
            if e.ndim == 0:
                e = e.expand(n)
            if e.shape != (n,):
                raise InvalidInputError(f"eps tensor must have shape ({n},), got {tuple(e.shape)}")
        elif isinstance(eps, bool):
            raise InvalidInputError(f"eps must be a positive number, got {eps!r}")
        else:
            try:
                value = float(eps)
            except (TypeError, ValueError):
                raise InvalidInputError(f"eps must be a positive number, got {eps!r}") from None
            e = torch.full((n,), value, device=center.device, dtype=center.dtype)
        if not torch.isfinite(e).all() or (e <= 0).any():
            raise InvalidInputError(f"eps must be finite and > 0, got {eps!r}")
        return e

    @staticmethod
    def _check_fixed(fixed: torch.Tensor | None, center: torch.Tensor) -> torch.Tensor | None:
        if fixed is None:
            return None
        if not isinstance(fixed, torch.Tensor) or fixed.dtype != torch.bool:
            raise InvalidInputError("fixed must be a bool tensor (True = variable not perturbed)")
        try:
            torch.broadcast_shapes(fixed.shape, center.shape)
            out = fixed.to(center.device).expand(center.shape)
        except RuntimeError:
            raise InvalidInputError(
                f"fixed of shape {tuple(fixed.shape)} does not broadcast to center {tuple(center.shape)}"
            ) from None
        return out

    @staticmethod
    def _check_domain(domain, center: torch.Tensor, p: float):
        if domain is None:
            return None
        if p != math.inf:
            raise InvalidInputError(
                "domain clipping is only supported with p=inf (an Lp ball intersected with a box "
                "has no closed-form linear bounds); drop domain or use p=inf"
            )
        try:
            lo, hi = domain
        except (TypeError, ValueError):
            raise InvalidInputError("domain must be a pair (lo, hi)") from None
        lo_t = torch.as_tensor(lo, device=center.device, dtype=center.dtype)
        hi_t = torch.as_tensor(hi, device=center.device, dtype=center.dtype)
        try:
            lo_t = lo_t.expand(center.shape)
            hi_t = hi_t.expand(center.shape)
        except RuntimeError:
            raise InvalidInputError("domain bounds do not broadcast to center") from None
        if not (torch.isfinite(lo_t).all() and torch.isfinite(hi_t).all()):
            raise InvalidInputError("domain bounds must be finite")
        if (lo_t > hi_t).any():
            raise InvalidInputError("domain has lo > hi")
        if (center < lo_t).any() or (center > hi_t).any():
            raise InvalidInputError("center lies outside the domain")
        return lo_t, hi_t

    # -- geometry -----------------------------------------------------------------------------
    @property
    def free(self) -> torch.Tensor:
        """Float mask ``(N, *S)``: 1 where the variable is perturbed, 0 where fixed."""
        if "free" not in self._cache:
            if self.fixed is None:
                self._cache["free"] = torch.ones_like(self.center)
            else:
                self._cache["free"] = (~self.fixed).to(self.center.dtype)
        return self._cache["free"]

    def _radius(self) -> torch.Tensor:
        """``eps * free``, ``(N, *S)``: each variable's largest deviation (cached)."""
        if "r" not in self._cache:
            view = (-1,) + (1,) * (self.center.ndim - 1)
            self._cache["r"] = self.eps.view(view) * self.free
        return self._cache["r"]

    def interval(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Interval hull ``(lo, hi)`` of the set, each ``(N, *S)`` (exact for ``p=inf``)."""
        if "lo" not in self._cache:
            r = self._radius()
            lo = self.center if self.sign > 0 else self.center - r
            hi = self.center if self.sign < 0 else self.center + r
            if self.domain is not None:
                lo = torch.maximum(lo, self.domain[0])
                hi = torch.minimum(hi, self.domain[1])
            self._cache["lo"], self._cache["hi"] = lo, hi
        return self._cache["lo"], self._cache["hi"]

    def reference(self) -> torch.Tensor:
        if self.p == math.inf and (self.domain is not None or self.sign != 0):
            lo, hi = self.interval()
            return (lo + hi) / 2
        return self.center

    def box_radius(self) -> torch.Tensor | None:
        if self.p != math.inf:
            return None
        if self.domain is None and self.sign == 0:
            return self._radius()  # the box centre +- eps * free itself
        lo, hi = self.interval()
        return (hi - lo) / 2

    def spread(self, coeffs: torch.Tensor, rows: slice | None = None) -> torch.Tensor:
        if self.p == math.inf:
            if "rad" not in self._cache:
                self._cache["rad"] = self.box_radius().reshape(self.batch_size, -1)
            return _box_spread(coeffs, self._cache["rad"], rows)
        n = self.batch_size
        free = self.free.reshape(n, 1, -1)
        eps = self.eps.view(n, 1)
        if rows is not None:
            free, eps = free[rows], eps[rows]
        masked = coeffs * free
        if self.sign > 0:  # delta >= 0: only negative coefficients can lower a.delta
            masked = masked.clamp_max(0)
        elif self.sign < 0:
            masked = masked.clamp_min(0)
        dual = masked.abs().amax(dim=-1) if self.p == 1.0 else masked.norm(p=2, dim=-1)
        return eps * dual

    @classmethod
    def _unchecked(cls, center, eps, p, fixed, domain, sign=0) -> Ball:
        """Build from fields that are already validated (no copies, no checks)."""
        ball = cls.__new__(cls)
        ball.center, ball.eps, ball.p, ball.fixed, ball.domain = center, eps, p, fixed, domain
        ball.sign = sign
        ball._cache = {}
        return ball

    def with_fixed(self, fixed: torch.Tensor | None) -> Ball:
        """The same ball with another ``fixed`` mask (validated)."""
        return Ball(self.center, self.eps, self.p, fixed, self.domain, self.sign)

    def half(self, sign: int) -> Ball:
        """The half ball ``B+`` (``sign=+1``: ``delta >= 0``) or ``B-`` (``sign=-1``)."""
        return Ball._unchecked(self.center, self.eps, self.p, self.fixed, self.domain, sign)

    def to(self, device=None, dtype=None) -> Ball:
        same_device = device is None or torch.device(device) == self.center.device
        if same_device and (dtype is None or dtype == self.center.dtype):
            return self
        domain = None
        if self.domain is not None:
            domain = tuple(t.to(device=device, dtype=dtype) for t in self.domain)
        return Ball._unchecked(
            self.center.to(device=device, dtype=dtype),
            self.eps.to(device=device, dtype=dtype),
            self.p,
            None if self.fixed is None else self.fixed.to(device),
            domain,
            self.sign,
        )

    def select(self, index) -> Ball:
        domain = None if self.domain is None else (self.domain[0][index], self.domain[1][index])
        fixed = None if self.fixed is None else self.fixed[index]
        return Ball._unchecked(self.center[index], self.eps[index], self.p, fixed, domain, self.sign)

    # -- sampling (tests, empirical bounds) ---------------------------------------------------
    def sample(self, n: int, generator: torch.Generator | None = None, corners: float = 0.25) -> torch.Tensor:
        """Draw ``n`` points per centre, shape ``(n, N, *S)``.

        A fraction ``corners`` of the points are extreme points of the set (box corners for
        ``p=inf``; for ``p=1`` signed vertices ``±eps e_i`` on a free variable; for ``p=2``
        points of the sphere); the rest are uniform in the box for ``p=inf`` and spread inside
        the ball otherwise. Every point lies in the set (fixed variables at the centre, clipped
        to the domain).
        """
        shape = (n, *self.center.shape)
        dev, dt = self.center.device, self.center.dtype
        n_corner = int(round(n * corners))
        free = self.free
        if self.p == math.inf:
            lo, hi = self.interval()
            u = torch.rand(shape, generator=generator, device=dev, dtype=dt)
            if n_corner:
                u[:n_corner] = (u[:n_corner] > 0.5).to(dt)
            return lo + u * (hi - lo)
        d = free[0].numel()
        eps = self.eps.view(1, -1, *([1] * (self.center.ndim - 1)))
        if self.p == 2.0:
            g = torch.randn(shape, generator=generator, device=dev, dtype=dt) * free
            norm = g.flatten(2).norm(dim=2).clamp_min(1e-12).view(n, -1, *([1] * (g.ndim - 2)))
            radius = torch.rand((n, self.batch_size), generator=generator, device=dev, dtype=dt)
            radius = radius ** (1.0 / max(d, 1))
            radius[:n_corner] = 1.0
            radius = radius.view(n, -1, *([1] * (g.ndim - 2)))
            return self.center + eps * radius * self._fold(g) / norm
        # p = 1: exponential spacings give uniform points of the simplex; random signs.
        # -log1p(-u) with u in [0, 1) is finite (-log(u) is inf at u = 0, and inf * 0 is NaN).
        e = -torch.log1p(-torch.rand(shape, generator=generator, device=dev, dtype=dt)) * free
        total = e.flatten(2).sum(dim=2).clamp_min(1e-12).view(n, -1, *([1] * (e.ndim - 2)))
        sign = torch.randint(0, 2, shape, generator=generator, device=dev).to(dt) * 2 - 1
        radius = torch.rand((n, self.batch_size), generator=generator, device=dev, dtype=dt)
        radius = radius.view(n, -1, *([1] * (e.ndim - 2)))
        pts = self.center + eps * radius * self._fold(sign * e) / total
        if n_corner:
            flat_free = free.flatten(1)
            probs = flat_free / flat_free.sum(dim=1, keepdim=True).clamp_min(1)
            idx = torch.multinomial(
                probs.clamp_min(0) + (flat_free.sum(1, keepdim=True) == 0).to(dt),
                n_corner,
                replacement=True,
                generator=generator,
            )  # (N, n_corner)
            vert = torch.zeros((n_corner, *self.center.shape), device=dev, dtype=dt).flatten(2)
            vsign = sign[:n_corner].flatten(2).gather(2, idx.T.unsqueeze(-1))
            vert.scatter_(2, idx.T.unsqueeze(-1), vsign)
            vert = vert.view(n_corner, *self.center.shape) * free
            pts[:n_corner] = self.center + eps * self._fold(vert)
        return pts

    def _fold(self, delta: torch.Tensor) -> torch.Tensor:
        """Map a perturbation into the half ball (``|delta|`` with the ball's sign)."""
        return delta if self.sign == 0 else self.sign * delta.abs()

    def __repr__(self) -> str:
        p = "inf" if self.p == math.inf else int(self.p)
        eps = self.eps[0].item() if (self.eps == self.eps[0]).all() else "per-sample"
        half = {0: "", 1: ", sign=+1", -1: ", sign=-1"}[self.sign]
        return (
            f"Ball(batch={self.batch_size}, shape={self.shape}, eps={eps}, p={p}{half}, "
            f"fixed={'yes' if self.fixed is not None else 'no'}, "
            f"domain={'yes' if self.domain is not None else 'no'})"
        )


def stack_balls(balls: Sequence[Ball]) -> Ball:
    """Concatenate balls of the same norm along the batch dimension."""
    if not balls:
        raise InvalidInputError("stack_balls needs at least one ball")
    p = balls[0].p
    if any(b.p != p for b in balls):
        raise InvalidInputError("cannot stack balls of different norms")
    if any(b.sign != balls[0].sign for b in balls):
        raise InvalidInputError("cannot stack balls of different signs")
    has_domain = [b.domain is not None for b in balls]
    if any(has_domain) and not all(has_domain):
        raise InvalidInputError("cannot stack balls with and without a domain")
    center = torch.cat([b.center for b in balls])
    fixed = None
    if any(b.fixed is not None for b in balls):
        fixed = torch.cat(
            [b.fixed if b.fixed is not None else torch.zeros_like(b.center, dtype=torch.bool) for b in balls]
        )
    domain = None
    if all(has_domain):
        domain = (torch.cat([b.domain[0] for b in balls]), torch.cat([b.domain[1] for b in balls]))
    return Ball(center, torch.cat([b.eps for b in balls]), p, fixed, domain, balls[0].sign)
