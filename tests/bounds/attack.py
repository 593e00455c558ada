"""Projected-gradient attack on output bounds (test support: soundness *by attack*).

Sampling (``test_soundness.py``) rarely lands near the extremes of a network's output over a
perturbation set; this module searches for them. Given a model, an :class:`evax.Ball` and bounds
``lower <= C f(x) <= upper``, it runs projected gradient ascent on every objective

* ``-(C f(x))_k``  (trying to go below ``lower[n, k]``) and
* ``+(C f(x))_k``  (trying to go above ``upper[n, k]``)

for every box ``n`` and row ``k`` at once: the ``2 K`` objectives and ``R`` restarts are replicas
of the input batch, so one forward/backward pass per step serves them all (the model must be in
eval mode, where replicas do not interact). Each objective starts from the centre and from its
``R - 1`` best points of a pool drawn by ``ball.sample`` (half of them extreme points: box
corners, L1 vertices, points of the L2 sphere; every L1 vertex is added), screened with one
forward pass.

The feasible set of box ``n`` is, with ``delta = x - center``::

    delta_u = 0 for fixed u,   ||delta||_p <= eps_n,   sign * delta >= 0 (half balls),
    lo <= x <= hi (domain, p = inf only)

and :func:`project` is the exact Euclidean projection onto it:

* ``p = inf``: the set is the box ``ball.interval()``; clamping is exact.
* ``p = 2`` / ``p = 1``: zero the fixed coordinates, clamp onto the orthant of a half ball, then
  project onto the ball (scaling for L2, the sort-based simplex projection of Duchi et al. 2008
  for L1). The composition is exact: the constraints on fixed coordinates separate; for L2,
  ``P_{K ∩ B} = P_B ∘ P_K`` for any closed convex cone ``K`` and ball ``B`` centred at its apex;
  for L1, the projection onto ``{w >= 0, sum w <= eps}`` is ``max(v - theta, 0)`` with the same
  ``theta >= 0`` as for ``max(v, 0)`` (``max(max(v, 0) - theta, 0) = max(v - theta, 0)``).
  The result is then moved a few ulps towards the centre, so that rounding never leaves the ball.

Steps are steepest ascent for the norm: ``sign(g)`` scaled by the box half-widths for
``p = inf``, ``g / ||g||_2`` for ``p = 2``, ``g / ||g||_inf`` for ``p = 1`` (the L1 projection
then sparsifies the iterate; a pure sign/top-k step would stall on equal shares of several
coordinates instead of reaching a vertex). Gradient components that would push a coordinate out
of a half ball's orthant are dropped first. The step size decays on a cosine schedule; the best
feasible point over all restarts and iterations is kept. Everything is deterministic given the
``torch.Generator`` (on CPU).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

import evax


@dataclass
class Extremes:
    """The most extreme values of ``C f(x)`` the search found, and where.

    Attributes:
        lowest: ``(N, K)`` smallest value of row ``k`` found in box ``n``.
        highest: ``(N, K)`` largest value found.
        argmin: ``(N, K, *S)`` the points of ``lowest`` (each inside the ball).
        argmax: ``(N, K, *S)`` the points of ``highest``.
    """

    lowest: torch.Tensor
    highest: torch.Tensor
    argmin: torch.Tensor
    argmax: torch.Tensor

    def against(self, bounds: evax.Bounds) -> AttackResult:
        """Relative violations of ``bounds`` by these extremes (positive = bound exceeded)."""
        lower, upper = bounds.lower.to(self.lowest.dtype), bounds.upper.to(self.highest.dtype)
        below = (lower - self.lowest) / (1 + lower.abs())
        above = (self.highest - upper) / (1 + upper.abs())
        return AttackResult(below=below, above=above, extremes=self)


@dataclass
class AttackResult:
    """Outcome of an attack on ``Bounds(lower, upper)``.

    Attributes:
        below: ``(N, K)`` ``(lower - lowest) / (1 + |lower|)``: how far (relatively) the attack
            got below the lower bound; negative when it stayed above it.
        above: ``(N, K)`` ``(highest - upper) / (1 + |upper|)``.
        extremes: the values and points found.
    """

    below: torch.Tensor
    above: torch.Tensor
    extremes: Extremes

    @property
    def violation(self) -> torch.Tensor:
        """``(N, K)`` the larger of the two relative violations per box and row."""
        return torch.maximum(self.below, self.above)

    def worst(self) -> str:
        """A one-line description of the largest violation (for assertion messages)."""
        v = self.violation
        n, k = divmod(int(v.argmax()), v.shape[1])
        side = "lower" if self.below[n, k] >= self.above[n, k] else "upper"
        return f"box {n}, row {k}, {side} bound exceeded by {v[n, k].item():.3g} (relative)"


def project(ball: evax.Ball, x: torch.Tensor) -> torch.Tensor:
    """Exact Euclidean projection of points ``x`` (``(..., N, *S)``) onto ``ball``."""
    n, shape = ball.batch_size, ball.shape
    flat = x.reshape(-1, n, math.prod(shape))
    return _Geometry(ball).project(flat).reshape(x.shape)


class _Geometry:
    """The ball's constraints on flattened points ``(B, N, d)``: projection and ascent steps."""

    def __init__(self, ball: evax.Ball) -> None:
        n = ball.batch_size
        self.p, self.sign = ball.p, ball.sign
        self.center = ball.center.reshape(1, n, -1)
        self.free = ball.free.reshape(1, n, -1)
        self.eps = ball.eps.view(1, n, 1)
        lo, hi = ball.interval()  # the exact set for p = inf (sign and domain included)
        self.lo, self.hi = lo.reshape(1, n, -1), hi.reshape(1, n, -1)
        self.half_width = (self.hi - self.lo) / 2

    def project(self, x: torch.Tensor) -> torch.Tensor:
        if self.p == math.inf:
            return torch.minimum(torch.maximum(x, self.lo), self.hi)
        delta = (x - self.center) * self.free
        if self.sign > 0:
            delta = delta.clamp_min(0)
        elif self.sign < 0:
            delta = delta.clamp_max(0)
        if self.p == 2.0:
            norm = delta.norm(dim=-1, keepdim=True)
            delta = delta * (self.eps / norm.clamp_min(torch.finfo(x.dtype).tiny)).clamp_max(1)
        else:
            delta = _project_l1(delta, self.eps)
        # A few ulps inside, so that rounding never puts a point outside the ball.
        return self.center + delta * (1 - 4 * torch.finfo(x.dtype).eps)

    def ascent(self, x: torch.Tensor, grad: torch.Tensor, size: float) -> torch.Tensor:
        """``x`` moved by ``size`` (a fraction of the radius) along the steepest ascent
        direction of the norm, then projected."""
        if self.p == math.inf:
            return self.project(x + size * self.half_width * grad.sign())
        g = grad * self.free
        delta = x - self.center
        if self.sign > 0:  # at delta_u = 0 a negative gradient cannot be followed
            g = torch.where((delta <= 0) & (g < 0), 0, g)
        elif self.sign < 0:
            g = torch.where((delta >= 0) & (g > 0), 0, g)
        dual = g.norm(dim=-1, keepdim=True) if self.p == 2.0 else g.abs().amax(dim=-1, keepdim=True)
        return self.project(x + size * self.eps * g / dual.clamp_min(torch.finfo(x.dtype).tiny))


def _project_l1(v: torch.Tensor, radius: torch.Tensor) -> torch.Tensor:
    """Projection onto ``{w : ||w||_1 <= radius}`` along the last dim (Duchi et al. 2008).

    ``w = sign(v) max(|v| - theta, 0)`` where ``theta`` makes ``||w||_1 = radius`` (or ``0``
    when ``v`` is inside): with ``mu`` the magnitudes sorted decreasingly and ``rho`` the number
    of ``j`` with ``mu_j > (sum_{i <= j} mu_i - radius) / j``, ``theta = (sum_{i <= rho} mu_i -
    radius) / rho``; clamping ``theta`` at ``0`` covers the inside case in the same formula.
    """
    mu = v.abs().sort(dim=-1, descending=True).values
    cumsum = mu.cumsum(dim=-1)
    j = torch.arange(1, v.shape[-1] + 1, device=v.device, dtype=v.dtype)
    rho = (mu * j > cumsum - radius).sum(dim=-1, keepdim=True)  # >= 1 since radius > 0
    theta = ((cumsum.gather(-1, rho - 1) - radius) / rho).clamp_min(0)
    return v.sign() * (v.abs() - theta).clamp_min(0)


def _l1_vertices(ball: evax.Ball) -> torch.Tensor:
    """The vertices ``center + s eps e_u`` of an L1 ball (free ``u``, signs ``s`` allowed by
    the half ball), ``(V, N, *S)``; a fixed ``u`` gives the centre."""
    n, d = ball.batch_size, math.prod(ball.shape)
    eye = torch.eye(d, dtype=ball.center.dtype, device=ball.center.device)
    signs = [ball.sign] if ball.sign else [1, -1]
    directions = torch.cat([s * eye for s in signs]).unsqueeze(1)  # (V, 1, d)
    delta = directions * (ball.eps.view(1, n, 1) * ball.free.reshape(1, n, d))
    return (ball.center.reshape(1, n, d) + delta).reshape(-1, *ball.center.shape)


def _spec_matrix(spec: torch.Tensor | None, n: int, n_out: int, like: torch.Tensor) -> torch.Tensor:
    """``C`` as ``(N, K, n_out)``: the identity without spec, a shared ``(K, n_out)`` expanded."""
    if spec is None:
        return torch.eye(n_out, dtype=like.dtype, device=like.device).expand(n, n_out, n_out)
    spec = spec.to(dtype=like.dtype, device=like.device)
    return (spec if spec.ndim == 3 else spec.unsqueeze(0)).expand(n, -1, -1)


def search(
    model: nn.Module,
    ball: evax.Ball,
    spec: torch.Tensor | None = None,
    *,
    restarts: int = 8,
    steps: int = 60,
    step_size: float = 1.0,
    candidates: int = 256,
    generator: torch.Generator | None = None,
) -> Extremes:
    """Smallest and largest values of each row of ``C f(x)`` over ``ball``, by projected
    gradient ascent from ``restarts`` starting points per objective.

    Args:
        model: ``(B, *S) -> (B, n_out)`` in eval mode; it runs in the dtype of ``ball.center``
            (convert both, e.g. ``model.double()`` and ``ball.to(dtype=torch.float64)``).
        ball: ``N`` boxes of per-sample shape ``S``.
        spec: optional ``(N, K, n_out)`` or ``(K, n_out)`` matrix ``C`` (identity if ``None``).
        restarts: starting points per objective: the centre, then the ``restarts - 1`` best
            (for that objective) of ``candidates`` points drawn by ``ball.sample``, half of
            them extreme points (box corners, L1 vertices, points of the L2 sphere), and of
            every vertex of an L1 ball.
        steps: gradient steps per start; the step size decays from ``step_size`` (a fraction
            of ``eps``, or of the box half-widths for ``p = inf``) to 0 on a cosine schedule.
        generator: makes the starting points (hence the result) reproducible.

    Returns:
        :class:`Extremes` over every iterate of every restart (all of them feasible).
    """
    if model.training:
        raise ValueError("the attack needs the model in eval mode (replicas must not interact)")
    if restarts < 1 or steps < 0:
        raise ValueError(f"need restarts >= 1 and steps >= 0, got {restarts} and {steps}")
    n, shape = ball.batch_size, ball.shape
    d = math.prod(shape)
    geometry = _Geometry(ball)
    with torch.no_grad():
        n_out = model(ball.center).shape[1]
    c = _spec_matrix(spec, n, n_out, ball.center)
    k = c.shape[1]
    # Objective j < K minimises row j (maximises -row), j >= K maximises row j - K.
    c_obj = torch.cat([-c, c], dim=1).transpose(0, 1)  # (2K, N, n_out)

    # Starting points (R, 2K, N, d): the centre, then for each objective the best R - 1 of a
    # pool of sampled points (and L1 vertices), screened by one forward pass.
    with torch.no_grad():
        pool = ball.sample(max(candidates, restarts - 1), generator=generator, corners=0.5)
        if ball.p == 1.0:  # every vertex: PGD rarely moves from one vertex to a better one
            pool = torch.cat([pool, _l1_vertices(ball)])
        values = model(pool.reshape(-1, *shape)).reshape(pool.shape[0], n, n_out)
        scores = torch.einsum("jno,pno->pjn", c_obj, values).nan_to_num(nan=-torch.inf)  # (P, 2K, N)
        top = scores.topk(restarts - 1, dim=0).indices  # (R - 1, 2K, N)
        pool = pool.reshape(-1, 1, n, d).expand(-1, 2 * k, n, d)
        starts = pool.gather(0, top[..., None].expand(-1, -1, -1, d))
    center = ball.center.reshape(1, 1, n, d).expand(1, 2 * k, n, d)
    x = geometry.project(torch.cat([center, starts]).reshape(-1, n, d)).reshape(restarts, 2 * k, n, d)

    best = torch.full((2 * k, n), -torch.inf, dtype=x.dtype, device=x.device)
    best_x = x[0].clone()
    for t in range(steps + 1):
        x = x.detach().requires_grad_(True)
        out = model(x.reshape(-1, *shape)).reshape(restarts, 2 * k, n, n_out)
        objective = (out * c_obj).sum(-1)  # (R, 2K, N)
        with torch.no_grad():
            value, which = objective.nan_to_num(nan=-torch.inf).max(dim=0)
            better = value > best
            best = torch.where(better, value, best)
            found = x.gather(0, which[None, ..., None].expand(1, 2 * k, n, d))[0]
            best_x = torch.where(better[..., None], found, best_x)
        if t == steps:
            break
        (grad,) = torch.autograd.grad(objective.sum(), x)
        size = step_size * 0.5 * (1 + math.cos(math.pi * t / steps))
        with torch.no_grad():
            x = geometry.ascent(x.reshape(-1, n, d), grad.reshape(-1, n, d), size)
            x = x.reshape(restarts, 2 * k, n, d)

    if not torch.isfinite(best).all():
        raise RuntimeError("the model gave no finite value for some objective: nothing was attacked")
    best_x = best_x.transpose(0, 1).reshape(n, 2 * k, *shape)
    return Extremes(
        lowest=-best[:k].T.contiguous(),
        highest=best[k:].T.contiguous(),
        argmin=best_x[:, :k],
        argmax=best_x[:, k:],
    )


def attack(
    model: nn.Module,
    ball: evax.Ball,
    bounds: evax.Bounds,
    spec: torch.Tensor | None = None,
    **options,
) -> AttackResult:
    """:func:`search` for the extremes of ``C f(x)`` and compare them with ``bounds``.

    ``options`` are passed to :func:`search` (``restarts``, ``steps``, ``step_size``,
    ``generator``). ``result.violation.max() <= tol`` means the attack found nothing.
    """
    return search(model, ball, spec, **options).against(bounds)
