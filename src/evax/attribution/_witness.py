"""Counterfactual witnesses: concrete points of a ball that change the decision.

A sufficient-explanation search declares a cell *necessary* when the bound engine cannot prove
the decision once that cell is freed too. A proof that fails is not a counterexample (the
bounds may be loose), so a witness is searched for separately: a point ``x'`` with

    ||x' - x||_p <= eps,   x'_u = x_u on the fixed entries,   lo <= x' <= hi (domain),
    argmax f(x') != c

found by projected gradient ascent on the logit margin ``max_{c' != c} f_c'(x') - f_c(x')``.
Only points whose class change is confirmed by a fresh forward pass are returned, and every
returned point lies in the set by construction (projection onto the box for ``p = inf``, onto
the L2 ball for ``p = 2``). ``p = 1`` is not attacked (no witness is reported).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from evax.core.attacks import logit_margin, masked_pgd_l2


def _margin(logits: torch.Tensor, target: torch.Tensor, contrast: torch.Tensor) -> torch.Tensor:
    """``f_c' - f_c`` for ``contrast >= 0``, ``max_{c' != c} f_c' - f_c`` where ``contrast < 0``."""
    zc = logits.gather(1, target.view(-1, 1)).squeeze(1)
    targeted = logits.gather(1, contrast.clamp_min(0).view(-1, 1)).squeeze(1) - zc
    return torch.where(contrast >= 0, targeted, logit_margin(logits, target))


def _linf_pgd(
    model: nn.Module,
    x: torch.Tensor,
    target: torch.Tensor,
    free: torch.Tensor,
    eps: float,
    domain: tuple[float, float] | None,
    steps: int,
    runs: int,
    generator: torch.Generator,
    patience: int = 5,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sign-gradient PGD in the box ``[x - eps*free, x + eps*free]`` (clipped to the domain).

    Args: ``x`` ``(M, *S)``, ``target`` ``(M,)``, ``free`` float 0/1 ``(M, *S)``.
    Runs: 0 ascends the untargeted margin from ``x``; ``1..K-1`` the margin against the
    runner-up classes (by logit at ``x``, best first) from ``x``; further runs the untargeted
    margin from uniform points of the box. Step ``2.5 * eps / steps`` (Madry et al.). A problem
    stops early in a run when its margin has not improved (by ``1e-3`` relative) for
    ``patience`` steps.
    Returns ``(success (M,), points (M, *S))``.
    """
    lo, hi = x - eps * free, x + eps * free
    if domain is not None:
        lo, hi = lo.clamp(domain[0], domain[1]), hi.clamp(domain[0], domain[1])
    success = torch.zeros(x.shape[0], dtype=torch.bool, device=x.device)
    best = x.clone()
    alpha = 2.5 * eps / steps
    with torch.no_grad():
        logits = model(x)
    runner = logits.scatter(1, target.view(-1, 1), float("-inf")).argsort(dim=1, descending=True)
    n_classes = logits.shape[1]
    for r in range(runs):
        if 1 <= r < n_classes:
            contrast, xa = runner[:, r - 1], x.clone()
        else:
            contrast = torch.full_like(target, -1)
            u = torch.rand(x.shape, generator=generator, dtype=x.dtype).to(x.device)
            xa = x.clone() if r == 0 else lo + u * (hi - lo)
        top = torch.full((x.shape[0],), float("-inf"), device=x.device, dtype=x.dtype)
        stale = torch.zeros(x.shape[0], dtype=torch.long, device=x.device)
        for t in range(steps + 1):
            act = (~success & (stale < patience)).nonzero().squeeze(1)
            if act.numel() == 0:
                break
            z = xa[act].requires_grad_(t < steps)
            with torch.set_grad_enabled(t < steps):
                out = model(z)
                margin = _margin(out, target[act], contrast[act])
            hit = out.detach().argmax(dim=1) != target[act]
            if hit.any():
                success[act[hit]] = True
                best[act[hit]] = z.detach()[hit]
            if t == steps:
                break
            mg = margin.detach()
            improved = mg > top[act] + 1e-3 * mg.abs().clamp_min(1e-3)
            top[act] = torch.maximum(top[act], mg)
            stale[act] = torch.where(improved, 0, stale[act] + 1)
            (g,) = torch.autograd.grad(margin.sum(), z)
            step = z.detach() + alpha * g.sign() * free[act]
            xa[act] = torch.minimum(torch.maximum(step, lo[act]), hi[act])
    return success, best


def find_witnesses(
    model: nn.Module,
    x: torch.Tensor,
    target: torch.Tensor,
    free: torch.Tensor,
    eps: float,
    p: float,
    domain: tuple[float, float] | None,
    steps: int = 30,
    restarts: int = 3,
    generator: torch.Generator | None = None,
    batch_size: int = 512,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Search a class-changing point for each of ``M`` problems.

    Args:
        x: ``(M, *S)`` centres; ``target`` ``(M,)`` their classes; ``free`` bool ``(M, *S)``
            the entries allowed to move.
        eps, p, domain: the ball (``p`` in ``{inf, 2}``; ``p = 1`` returns no witness).
        steps, restarts: PGD budget (``p = inf``: runs, see :func:`_linf_pgd`).

    Returns:
        ``(found (M,) bool, points (M, *S))``: where ``found``, ``points`` is in the set and a
        forward pass puts it in another class than ``target``; elsewhere ``points = x``.
    """
    gen = generator if generator is not None else torch.Generator().manual_seed(0)
    m = x.shape[0]
    found = torch.zeros(m, dtype=torch.bool, device=x.device)
    points = x.clone()
    if m == 0 or float(p) == 1.0:
        return found, points
    for chunk in torch.arange(m, device=x.device).split(batch_size):
        xc, tc, fc = x[chunk], target[chunk], free[chunk]
        if float(p) == math.inf:
            ok, pts = _linf_pgd(model, xc, tc, fc.to(xc.dtype), eps, domain, steps, restarts, gen)
        else:
            radius = torch.full((chunk.shape[0],), float(eps), device=x.device, dtype=x.dtype)
            ok, delta = masked_pgd_l2(
                model, xc, tc, fc, radius * (1 - 1e-6), torch.zeros_like(xc), steps=steps,
                step_size=0.25, domain=None,
            )
            pts = xc + delta
        with torch.no_grad():
            changed = model(pts).argmax(dim=1) != tc
        ok = ok & changed
        found[chunk] = ok
        points[chunk[ok]] = pts[ok].detach()
    return found, points


def exact_witnesses(
    model: nn.Module,
    x: torch.Tensor,
    target: torch.Tensor,
    free: torch.Tensor,
    eps: float,
    domain: tuple[float, float] | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Complete witness search by MILP (tiny piecewise-linear nets, ``p = inf`` only).

    Each problem's MILP maximises the margin ``f_c' - f_c`` over the box of its free entries
    (:func:`evax.bounds.exact.exact_counterexamples`): when its optimum is <= 0 no witness
    exists at all. A returned point is confirmed like a PGD one, by a forward pass of ``model``
    in its own dtype (a maximiser on the decision boundary, optimum ~0, is not a class change).

    Args and returns: as :func:`find_witnesses`.
    """
    from evax.bounds.api import get_graph
    from evax.bounds.exact import exact_counterexamples
    from evax.core.specs import margin_spec
    from evax.perturbation import Ball

    m = x.shape[0]
    found = torch.zeros(m, dtype=torch.bool, device=x.device)
    points = x.clone()
    if m == 0:
        return found, points
    with torch.no_grad():
        n_out = model(x[:1]).shape[1]
    graph = get_graph(model, tuple(x.shape[1:]), x.device, torch.float64)
    ball = Ball(x.double(), eps, math.inf, ~free.bool(), domain)
    ok, pts, _ = exact_counterexamples(graph, ball, margin_spec(target, n_out).double())
    pts = pts.to(x.dtype)
    with torch.no_grad():
        changed = model(pts).argmax(dim=1) != target
    ok = ok & changed
    found[ok] = True
    points[ok] = pts[ok]
    return found, points
