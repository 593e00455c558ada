"""Masked L2 PGD and the minimal adversarial distance search used by Robustness-S_r and
Greedy-AS (Hsieh et al. 2021, "Evaluations and methods for explanation through robustness
analysis").

For an input ``x`` of class ``c`` and a set ``u`` of *free* entries (a boolean mask; the others
are fixed), the minimal adversarial distance is

    eps*_u(x) = min ||delta||_2  s.t.  argmax f(x + delta) != c,  delta_{not u} = 0,
                                        x + delta in [lo, hi] (optional domain).

It is estimated from above: :func:`masked_pgd_l2` looks for an adversarial example in the
ball ``||delta||_2 <= r`` by projected gradient ascent on the logit margin
``m(x) = max_{c' != c} f_c'(x) - f_c(x)`` (success as soon as ``m > 0``), and
:func:`minimal_l2_distance` searches the radius: bracketing (``start``, then doubling up to
the cap while the attack fails) and bisection (halving ``[lo, hi]`` until ``hi - lo <= tol``);
after a success ``hi`` is the norm of the adversarial example found (<= the radius tried), so
the returned distance is always achieved by an actual example.

**Cap policy.** When the attack still fails at the top of the range, the distance is set to
that top (the *cap*) and flagged ``capped``:

* with a ``domain``, the cap is the radius of the smallest L2 ball around ``x`` that contains
  the whole box of free entries, ``||max(x - lo, hi - x)_u||_2`` (an attack of that radius may
  move the free entries anywhere in the domain, so no larger radius can do better); a
  ``max_radius`` lower than that takes its place;
* without a domain, the cap is ``max_radius`` (default ``100 * start``).

The value is finite, comparable across methods (it is the largest distance the search could
report) and never ``inf``; callers get the ``capped`` mask to report it.

Everything is batched: all (problem, restart) pairs of a bisection step run their PGD in the
same forward/backward passes (``batch_size`` at a time); problems that succeed stop early and
leave the batch. Random starts come from the ``torch.Generator`` passed in.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from evax.core.progress import progress_bar
from evax.errors import InvalidInputError


def logit_margin(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """``max_{c' != c} z_c' - z_c`` per row: ``(M, K), (M,) -> (M,)``; > 0 means misclassified."""
    zc = logits.gather(1, target.view(-1, 1)).squeeze(1)
    others = logits.scatter(1, target.view(-1, 1), float("-inf"))
    return others.amax(dim=1) - zc


def _norms(t: torch.Tensor) -> torch.Tensor:
    return t.flatten(1).norm(dim=1)


def _view(v: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return v.view(-1, *([1] * (like.ndim - 1)))


def project(
    delta: torch.Tensor,
    x: torch.Tensor,
    free: torch.Tensor,
    radius: torch.Tensor,
    domain: tuple[float, float] | None,
) -> torch.Tensor:
    """Onto ``{delta : ||delta||_2 <= radius, delta_{not free} = 0, x + delta in domain}``
    (ball first, then the box; clipping only shortens delta, so the result is in both)."""
    delta = delta * free
    scale = (radius / _norms(delta).clamp_min(1e-30)).clamp(max=1.0)
    delta = delta * _view(scale, delta)
    if domain is not None:
        delta = torch.where(free, (x + delta).clamp(domain[0], domain[1]) - x, torch.zeros_like(delta))
    return delta


def masked_pgd_l2(
    model: nn.Module,
    x: torch.Tensor,
    target: torch.Tensor,
    free: torch.Tensor,
    radius: torch.Tensor,
    init: torch.Tensor,
    steps: int = 100,
    step_size: float = 0.1,
    domain: tuple[float, float] | None = (0.0, 1.0),
    batch_size: int = 256,
    patience: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """L2 PGD on the logit margin with only the ``free`` entries moving.

    Args:
        x: ``(M, ...)`` inputs; ``target`` ``(M,)`` their classes.
        free: bool mask broadcastable to ``x`` (``(M, 1, H, W)`` frees all channels of a pixel).
        radius: ``(M,)`` per-problem radius ``r``.
        init: ``(M, ...)`` starting perturbations (projected first).
        steps: gradient steps; the iterate is checked before each step and after the last.
        step_size: step length as a fraction of the radius: ``delta += step_size * r * g/||g||``.
        domain: ``(lo, hi)`` box for ``x + delta`` or ``None``.
        patience: give up on a problem whose best margin has not improved by more than
            ``1e-3 * |margin|`` (relative) for this many steps (``None``: never; run ``steps``).

    Returns:
        ``(success (M,) bool, delta (M, ...))``: for successes the first adversarial
        perturbation found (``||delta|| <= r``), else the last iterate.
    """
    m = x.shape[0]
    free = free.expand(m, *free.shape[1:]) if free.shape[0] == 1 else free
    success = torch.zeros(m, dtype=torch.bool, device=x.device)
    out = torch.empty_like(x)
    for chunk in torch.arange(m, device=x.device).split(batch_size):
        xc, tc, fc, rc = x[chunk], target[chunk], free[chunk], radius[chunk]
        delta = project(init[chunk], xc, fc, rc, domain)
        done = torch.zeros(chunk.shape[0], dtype=torch.bool, device=x.device)
        stop = torch.zeros_like(done)
        best_m = torch.full((chunk.shape[0],), float("-inf"), device=x.device, dtype=x.dtype)
        stale = torch.zeros(chunk.shape[0], dtype=torch.long, device=x.device)
        alpha = step_size * rc
        for t in range(steps + 1):
            act = (~(done | stop)).nonzero().squeeze(1)
            if act.numel() == 0:
                break
            d = delta[act].requires_grad_(t < steps)
            with torch.set_grad_enabled(t < steps):
                margin = logit_margin(model(xc[act] + d), tc[act])
            hit = margin > 0
            if hit.any():
                done[act[hit]] = True
                delta[act[hit]] = d.detach()[hit]
            if t == steps:
                break
            if patience is not None:
                mg = margin.detach()
                improved = mg > best_m[act] + 1e-3 * mg.abs()
                best_m[act] = torch.maximum(best_m[act], mg)
                stale[act] = torch.where(improved, 0, stale[act] + 1)
                stop[act] = (stale[act] >= patience) & ~hit
            (g,) = torch.autograd.grad(margin.sum(), d)
            g = g * fc[act]
            step = _view(alpha[act] / _norms(g).clamp_min(1e-30), g) * g
            keep = ~hit  # successes keep their adversarial example
            new = project(d.detach() + step, xc[act], fc[act], rc[act], domain)
            delta[act[keep]] = new[keep]
        success[chunk] = done
        out[chunk] = delta
    return success, out


@dataclass
class DistanceSearch:
    """Result of :func:`minimal_l2_distance` for ``M`` problems.

    Attributes:
        distance: ``(M,)`` norm of the closest adversarial example found; the cap where none
            was found (see ``capped``); 0 where ``x`` itself is misclassified.
        capped: ``(M,)`` bool, no adversarial example found up to the cap.
        cap: ``(M,)`` the top of each problem's search range.
        lower: ``(M,)`` largest radius at which the attack failed (``distance - lower <= tol``
            unless the iteration budget ran out: see ``converged``).
        converged: ``(M,)`` bool.
        delta: ``(M, ...)`` the adversarial perturbations (zeros where capped).
        iterations: bisection/bracketing steps run.
    """

    distance: torch.Tensor
    capped: torch.Tensor
    cap: torch.Tensor
    lower: torch.Tensor
    converged: torch.Tensor
    delta: torch.Tensor
    iterations: int


def farthest_point_distance(x: torch.Tensor, free: torch.Tensor, domain: tuple[float, float]) -> torch.Tensor:
    """The L2 distance from ``x`` to the farthest point of its domain box when only the ``free``
    entries move: ``||max(x - lo, hi - x) * free||_2`` per row, ``(M, ...) -> (M,)``.

    (Not :meth:`evax.perturbation.Box.box_radius`, which is the box's per-entry half-widths.)"""
    far = torch.maximum(x - domain[0], domain[1] - x) * free
    return _norms(far)


def minimal_l2_distance(
    model: nn.Module,
    x: torch.Tensor,
    target: torch.Tensor,
    free: torch.Tensor,
    generator: torch.Generator,
    domain: tuple[float, float] | None = (0.0, 1.0),
    start: float = 10.0,
    tol: float = 1e-3,
    max_radius: float | None = None,
    steps: int = 100,
    step_size: float = 0.1,
    restarts: int = 1,
    max_iter: int = 40,
    batch_size: int = 256,
    progress: bool | None = False,
    rtol: float = 0.0,
    patience: int | None = None,
) -> DistanceSearch:
    """Minimal L2 adversarial distance with only ``free`` entries moving, for ``M`` problems.

    See the module docstring for the search and the cap policy. Restart 0 starts from the
    best adversarial example found so far rescaled to the new radius (zero at first), the
    other ``restarts - 1`` from uniform random points of the ball (drawn from ``generator``).

    Args:
        x: ``(M, ...)``; ``target``: ``(M,)``; ``free``: bool ``(M, 1 or C, ...)``.
        start: first radius tried; the search of a problem stops when
            ``hi - lo <= max(tol, rtol * hi)``.
        max_radius: top of the range (see the cap policy); ``max_iter``: search steps.
        steps, step_size, domain, batch_size, patience: see :func:`masked_pgd_l2`.
    """
    if not start > 0 or not tol > 0:
        raise InvalidInputError(f"start and tol must be > 0, got start={start}, tol={tol}")
    if isinstance(restarts, bool) or not isinstance(restarts, int) or restarts < 1:
        raise InvalidInputError(f"restarts must be a positive int, got {restarts!r}")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise InvalidInputError(f"steps must be a positive int, got {steps!r}")
    m = x.shape[0]
    dev, dt = x.device, x.dtype
    free = free.expand(m, *free.shape[1:]) if free.shape[0] == 1 else free
    if domain is not None:
        cap = farthest_point_distance(x, free, domain)
        if max_radius is not None:
            cap = cap.clamp(max=float(max_radius))
    else:
        cap = torch.full((m,), float(max_radius) if max_radius is not None else 100.0 * start, device=dev, dtype=dt)
    lo = torch.zeros(m, device=dev, dtype=dt)
    hi = torch.full((m,), float("inf"), device=dev, dtype=dt)
    best = torch.zeros_like(x)
    capped = torch.zeros(m, dtype=torch.bool, device=dev)
    with torch.no_grad():
        clean = torch.cat([logit_margin(model(c), t) for c, t in zip(x.split(batch_size), target.split(batch_size), strict=True)])
    hi[clean > 0] = 0.0
    capped |= (cap <= 0) & (clean <= 0)  # nothing free (or the box is a point)
    done = (clean > 0) | capped
    it = 0
    for it in progress_bar(range(1, max_iter + 1), progress, desc="radius search", leave=False):  # noqa: B007
        act = (~done).nonzero().squeeze(1)
        if act.numel() == 0:
            it -= 1
            break
        bracketing = torch.isinf(hi[act])
        radius = torch.where(
            bracketing,
            torch.where(lo[act] > 0, 2 * lo[act], torch.full_like(lo[act], float(start))).minimum(cap[act]),
            (lo[act] + hi[act]) / 2,
        )
        # restart 0: warm start from the best example (rescaled), others: random in the ball
        warm = best[act] * _view((radius / hi[act]).nan_to_num(0.0, posinf=0.0).clamp(max=1.0), best[act])
        inits = [warm]
        for _ in range(restarts - 1):
            direction = torch.randn(act.shape[0], *x.shape[1:], generator=generator, dtype=dt).to(dev) * free[act]
            u = torch.rand(act.shape[0], generator=generator, dtype=dt).to(dev)
            inits.append(direction * _view(radius * u / _norms(direction).clamp_min(1e-30), direction))
        r_all = radius.repeat(restarts)
        ok, delta = masked_pgd_l2(
            model,
            x[act].repeat(restarts, *([1] * (x.ndim - 1))),
            target[act].repeat(restarts),
            free[act].repeat(restarts, *([1] * (x.ndim - 1))),
            r_all,
            torch.cat(inits),
            steps=steps,
            step_size=step_size,
            domain=domain,
            batch_size=batch_size,
            patience=patience,
        )
        ok = ok.view(restarts, -1)
        norms = torch.where(ok, _norms(delta).view(restarts, -1), torch.full_like(ok, float("inf"), dtype=dt))
        found, which = norms.min(dim=0)
        success = ok.any(dim=0)
        # update the brackets
        delta = delta.view(restarts, act.shape[0], *x.shape[1:])
        chosen = delta[which, torch.arange(act.shape[0], device=dev)]
        s_idx = act[success]
        better = found[success] < hi[s_idx]
        hi[s_idx[better]] = found[success][better]
        best[s_idx[better]] = chosen[success][better]
        f_idx = act[~success]
        lo[f_idx] = torch.maximum(lo[f_idx], radius[~success])
        at_top = (~success) & bracketing & (radius >= cap[act])
        capped[act[at_top]] = True
        done = done | capped | (hi - lo <= torch.clamp(rtol * hi, min=tol))
    converged = done.clone()
    distance = torch.where(capped, cap, hi)
    # out of iterations while still bracketing: no example found, report the last radius tried
    never = torch.isinf(distance)
    if never.any():
        capped |= never
        distance = torch.where(never, cap, distance)
    return DistanceSearch(distance, capped, cap, lo, converged, best, it)
