"""Certified (verifiable) training: IBP (Gowal et al. 2018) and CROWN-IBP (Zhang et al. 2020).

The loss of a batch ``(x, y)`` at radius ``eps`` (L-inf ball clipped to the ``[0, 1]`` pixel
domain) is::

    kappa * CE(f(x), y) + (1 - kappa) * CE(z_worst, y),
    z_worst_j = -lower(f_y - f_j)  (z_worst_y = 0),
    lower = beta * lower_CROWN-IBP + (1 - beta) * lower_IBP

where the lower bounds of the margins ``f_y - f_j`` over the ball come from
``evax.bound(..., differentiable=True)`` -- the engine that verifies the trained model, so
training and verification are one code path. ``z_worst`` is the worst case logit vector the
bounds allow; its cross-entropy upper-bounds the worst-case cross-entropy over the ball.
evax's ``crown-ibp`` is CROWN-IBP's bound intersected with IBP's at the output (never looser
than either), so the mix differs from Zhang et al.'s only where IBP is the tighter one.

Schedule (per optimisation step, as both papers): ``warmup`` epochs at ``eps = 0`` (clean
training, ``kappa = 1``), then ``ramp`` epochs where ``eps`` grows linearly from 0 to its
target, ``kappa`` from ``kappa_start`` to ``kappa_end`` and CROWN-IBP's ``beta`` from
``beta_start`` to ``beta_end``; the remaining epochs at the final values. ``beta = 0``
throughout is IBP training; with ``beta_end = 0`` the last epochs cost IBP's price only.
Randomness comes only from the ``torch.Generator`` passed in (batch order), so a run is
reproducible on the same machine and thread count.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from evax.bounds.api import bound
from evax.core.specs import margin_spec as core_margin_spec
from evax.errors import InvalidInputError
from evax.perturbation import Ball


@dataclass(frozen=True)
class CertifiedSchedule:
    """Radius and loss-mix schedule of certified training.

    Attributes:
        eps: target L-inf radius in ``[0, 1]`` pixel units.
        warmup: epochs of clean training (``eps = 0``) first.
        ramp: epochs over which ``eps``, ``kappa`` and ``beta`` move linearly to their end.
        kappa_start, kappa_end: weight of the clean cross-entropy.
        beta_start, beta_end: weight of CROWN-IBP's bound in the mix with IBP's
            (``0, 0``: IBP training; ``1, 0``: CROWN-IBP 1 -> 0 of Zhang et al. 2020).
        eps_train_factor: train at ``factor * eps`` (Gowal et al. train at 1.1 eps for MNIST
            at 0.1); verification is at ``eps``.
    """

    eps: float
    warmup: int = 1
    ramp: int = 3
    kappa_start: float = 1.0
    kappa_end: float = 0.5
    beta_start: float = 1.0
    beta_end: float = 0.0
    eps_train_factor: float = 1.0

    def __post_init__(self) -> None:
        if not 0.0 <= self.eps <= 1.0:
            raise InvalidInputError(f"eps must lie in [0, 1], got {self.eps!r}")
        if self.warmup < 0 or self.ramp < 0:
            raise InvalidInputError("warmup and ramp must be >= 0 epochs")

    @property
    def method(self) -> str:
        """``"crown-ibp"`` when CROWN-IBP's bound is ever used, else ``"ibp"``."""
        return "crown-ibp" if max(self.beta_start, self.beta_end) > 0 else "ibp"

    def at(self, step: int, steps_per_epoch: int) -> tuple[float, float, float]:
        """``(eps, kappa, beta)`` at optimisation step ``step`` (0-based)."""
        start = self.warmup * steps_per_epoch
        if step < start:
            return 0.0, 1.0, self.beta_start
        length = self.ramp * steps_per_epoch
        t = 1.0 if length == 0 else min(1.0, (step - start + 1) / length)
        eps = t * self.eps * self.eps_train_factor
        kappa = self.kappa_start + t * (self.kappa_end - self.kappa_start)
        beta = self.beta_start + t * (self.beta_end - self.beta_start)
        return eps, kappa, beta


def margin_spec(labels: torch.Tensor, num_classes: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Rows ``e_y - e_j`` for every ``j != y``: ``labels (N,) -> (N, num_classes - 1, num_classes)``
    (the negation of EVA's :func:`evax.core.specs.margin_spec`, same row order)."""
    return -core_margin_spec(labels, num_classes).to(dtype)


def worst_case_logits(lower_margins: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Logits ``(N, K)`` with ``0`` at the label and ``-lower(f_y - f_j)`` elsewhere, from the
    margins' lower bounds ``(N, K - 1)`` in :func:`margin_spec`'s order."""
    n, k = lower_margins.shape[0], lower_margins.shape[1] + 1
    logits = torch.zeros((n, k), dtype=lower_margins.dtype, device=lower_margins.device)
    mask = torch.ones((n, k), dtype=torch.bool, device=labels.device)
    mask[torch.arange(n, device=labels.device), labels] = False
    return logits.masked_scatter(mask, -lower_margins)


def margin_lower_bounds(
    model: nn.Module, images: torch.Tensor, labels: torch.Tensor, eps: float, method: str,
    num_classes: int, differentiable: bool = False,
) -> torch.Tensor:
    """Lower bounds ``(N, K - 1)`` of ``f_y - f_j`` over the L-inf ball of radius ``eps``
    around ``images (N, C, H, W)``, clipped to ``[0, 1]``, by ``evax.bound``."""
    ball = Ball(images, eps, domain=(0.0, 1.0))
    spec = margin_spec(labels, num_classes, images.dtype)
    # One chunk: the automatic chunk size budgets CROWN's intermediate rows, which IBP and
    # CROWN-IBP never compute (their largest temporaries are the K - 1 output rows).
    chunk = len(labels) if method in ("ibp", "crown-ibp") else None
    return bound(model, ball, method=method, spec=spec, side="lower", batch_size=chunk,
                      differentiable=differentiable).lower


def certified_loss(
    model: nn.Module, images: torch.Tensor, labels: torch.Tensor, eps: float, kappa: float,
    beta: float, num_classes: int,
) -> torch.Tensor:
    """The scalar training loss of one batch (see the module docstring); clean CE at ``eps = 0``."""
    clean = F.cross_entropy(model(images), labels)
    if eps <= 0.0 or kappa >= 1.0:
        return clean
    lower = margin_lower_bounds(model, images, labels, eps, "ibp", num_classes, True)
    if beta > 0.0:
        crown = margin_lower_bounds(model, images, labels, eps, "crown-ibp", num_classes, True)
        lower = beta * crown + (1.0 - beta) * lower
    robust = F.cross_entropy(worst_case_logits(lower, labels), labels)
    return kappa * clean + (1.0 - kappa) * robust


def fit_certified(
    model: nn.Module, images: torch.Tensor, labels: torch.Tensor, schedule: CertifiedSchedule,
    epochs: int, generator: torch.Generator, batch_size: int = 128, lr: float = 1e-3,
    num_classes: int = 10, max_grad_norm: float = 10.0,
    step_callback: Callable[[int, float], None] | None = None,
) -> nn.Module:
    """Train ``model`` in place on ``images (N, C, H, W)`` in ``[0, 1]`` / ``labels (N,)``.

    Adam (``lr``, decayed by 10x at 50% and again at 75% of the steps after the ramp ends),
    gradients clipped to norm ``max_grad_norm`` (as CROWN-IBP's code), batches drawn with
    ``generator``; ``step_callback(step, loss)`` after every step. Returns the model in eval
    mode.
    """
    if epochs < 1:
        raise InvalidInputError(f"epochs must be >= 1, got {epochs!r}")
    per_epoch = (len(labels) + batch_size - 1) // batch_size
    steps = epochs * per_epoch
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    ramp_end = min(steps, (schedule.warmup + schedule.ramp) * per_epoch)
    rest = steps - ramp_end
    milestones = sorted({ramp_end + rest // 2, ramp_end + (3 * rest) // 4} - {ramp_end, steps})
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=milestones, gamma=0.1)
    model.train()
    step = 0
    for _ in range(epochs):
        order = torch.randperm(len(labels), generator=generator)
        for i in range(0, len(order), batch_size):
            idx = order[i : i + batch_size]
            eps, kappa, beta = schedule.at(step, per_epoch)
            loss = certified_loss(model, images[idx], labels[idx], eps, kappa, beta, num_classes)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), max_grad_norm)
            opt.step()
            sched.step()
            if step_callback is not None:
                step_callback(step, float(loss.detach()))
            step += 1
    return model.eval()


@torch.no_grad()
def verified_accuracy(
    model: nn.Module, images: torch.Tensor, labels: torch.Tensor, eps: float,
    method: str = "crown-ibp", batch: int = 500, num_classes: int = 10,
) -> float:
    """Fraction of ``images`` whose label is certified by ``evax.bound(method)`` over the
    L-inf ball of radius ``eps`` clipped to ``[0, 1]``: every margin's lower bound ``> 0``
    (which implies a correct clean prediction)."""
    certified = 0
    for i in range(0, len(labels), batch):
        lower = margin_lower_bounds(model, images[i : i + batch], labels[i : i + batch], eps,
                                    method, num_classes)
        certified += int((lower > 0).all(dim=1).sum())
    return certified / len(labels)
