"""Kernel smoothing of any explanation (Yeh et al. 2019, Sec. 4; SmoothGrad is its Gaussian case).

Given an explanation functional ``Phi`` and a kernel ``k(x, z)`` (a probability density in
``z``), the smoothed explanation is::

    Phi_k(f, x) = int_z Phi(f, z) k(x, z) dz  ~=  (1/n) sum_j Phi(f, z_j),   z_j ~ k(x, .)

Theorem 4.1: ``SENS_MAX(Phi_k, f, x, r) <= int_z SENS_MAX(Phi, f, z, r) k(x, z) dz``, and under
the conditions of Theorem 4.2 smoothing lowers the infidelity too. Kernels:

* ``"gaussian"``: ``z = x + eps``, ``eps ~ N(0, radius^2 Id)`` (SmoothGrad);
* ``"uniform"``: ``z`` uniform in the L-inf ball of radius ``radius`` around ``x`` (the
  reference code's Smooth-Grad, ``sg_r = 0.2``).

``Smoothed(Saliency(model))`` is Grad-SG, ``Smoothed(IntegratedGradients(model))`` IG-SG,
``Smoothed(GuidedBackprop(model))`` GBP-SG; any explainer works, EVA included. The class of the
clean input (``target=None``: the model's prediction at ``x``) is explained at every ``z``.

The ``n`` kernel offsets ``eps_j`` (``z_j = x - eps_j``) are drawn once per call from a generator
seeded with ``seed`` and *shared by all the inputs* (common random numbers, unlike Captum's
NoiseTunnel, which draws fresh noise per input): for a given seed ``Phi_k`` is then one fixed,
deterministic function of ``x`` -- independent of the batch it is computed in -- so that metrics
such as SENS_MAX compare ``Phi_k(y)`` and ``Phi_k(x)`` as the same function, not two independent
Monte-Carlo estimates whose noise would count as sensitivity.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from evax.attribution.base import TargetLike
from evax.core.checks import check_clip, check_positive_float, check_positive_int, check_tensor
from evax.core.explainers import call_explainer, find_model, is_explainer
from evax.core.modes import eval_mode
from evax.core.noise import GaussianNoise, NoiseDistribution, UniformNoise
from evax.core.progress import progress_bar
from evax.core.random import check_seed
from evax.core.streaming import Draws, blocks, steps
from evax.core.targets import resolve_target
from evax.errors import InvalidInputError

__all__ = ["Smoothed"]

_KERNELS = ("gaussian", "uniform")


class _Raw:
    """Adapter: an evax explainer's ``attribute_raw`` seen as ``.attribute``."""

    def __init__(self, explainer: Any) -> None:
        self.attribute = explainer.attribute_raw


class Smoothed:
    """``Phi_k``: the explainer averaged over ``n_samples`` points of the kernel around ``x``.

    Args:
        explainer: an object with ``.attribute(inputs, target)`` (evax, Captum) or a callable
            ``explain(inputs, target)``.
        kernel: ``"gaussian"`` (default) or ``"uniform"`` (L-inf ball).
        radius: the Gaussian's standard deviation or the ball's radius (default 0.2).
        n_samples: points ``z`` per input (>= 1; default 50).
        clip: optional domain ``(lo, hi)`` the points ``z`` are clamped to.
        model: used to resolve ``target=None`` when the explainer does not expose its model.
        batch_size: inputs per explainer call (``B`` images and ``batch_size // B`` points).
        seed: seed of the generator created on every call (deterministic, nothing global; its
            ``"smoothing"`` stream, see :mod:`evax.core.random`).
        progress: tqdm bar (``None``: only when stderr is a TTY).

    ``attribute(inputs, target=None)`` has the shape of ``explainer.attribute``; when the
    explainer has ``attribute_raw`` (evax methods) ``attribute_raw`` smooths that one.
    """

    name = "smoothed"

    def __init__(
        self,
        explainer: Any,
        kernel: str = "gaussian",
        radius: float = 0.2,
        n_samples: int = 50,
        clip: tuple[float, float] | None = None,
        model: nn.Module | None = None,
        batch_size: int = 256,
        seed: int = 0,
        progress: bool | None = None,
    ) -> None:
        if not is_explainer(explainer):
            raise InvalidInputError(
                f"explainer must have .attribute(inputs, target) or be a callable, got {type(explainer).__name__}"
            )
        if kernel not in _KERNELS:
            raise InvalidInputError(f"unknown kernel {kernel!r}: use 'gaussian' or 'uniform'")
        self.explainer = explainer
        self.kernel = kernel
        self.radius = check_positive_float(radius, "radius")
        self.n_samples = check_positive_int(n_samples, "n_samples")
        self.clip = check_clip(clip)
        self.sampler: NoiseDistribution = (
            GaussianNoise(self.radius) if kernel == "gaussian" else UniformNoise(self.radius)
        )
        self.model = model if model is not None else find_model(explainer)
        self.batch_size = check_positive_int(batch_size, "batch_size")
        check_seed(seed)
        self.seed = seed
        self.progress = progress

    def __repr__(self) -> str:
        return (
            f"Smoothed({self.explainer!r}, kernel={self.kernel!r}, radius={self.radius}, "
            f"n_samples={self.n_samples})"
        )

    def offsets(self, inputs: torch.Tensor) -> torch.Tensor:
        """The kernel's offsets ``eps_j`` ``(n_samples, *S)``, drawn from a generator seeded with
        ``seed``: the points are ``z_j = x - eps_j`` (clamped to ``clip``)."""
        eps, _ = self._draws().sample(torch.zeros_like(inputs[:1]), 0, self.n_samples, self.n_samples)
        return eps[0]

    def _draws(self) -> Draws:
        """The kernel's draws: the ``"smoothing"`` stream of ``seed`` (:mod:`evax.core.streaming`)."""
        return Draws(self.sampler, self.seed, "smoothing")

    def _smooth(self, explainer: Any, inputs: torch.Tensor, target: TargetLike) -> torch.Tensor:
        check_tensor(inputs)
        x = inputs.detach()
        n_in, n = x.shape[0], self.n_samples
        targets = resolve_target(self.model, x, target)
        draws = self._draws()  # the same offsets eps_j for every input
        per_block, per_chunk = blocks(n_in, n, self.batch_size)
        out_blocks = []
        plan = steps(n_in, n, per_block, per_chunk)
        total: torch.Tensor | None = None
        for step in progress_bar(plan, self.progress, total=len(plan), desc="smoothing"):
            xb, k, j = x[step.inputs], step.count, step.offset
            b = xb.shape[0]
            _, z = draws.sample(xb, j, k, n)  # z_j = x - eps_j, (b, k, *S)
            if self.clip is not None:
                z = z.clamp(self.clip[0], self.clip[1])
            z = z.reshape(b * k, *x.shape[1:])
            tb = targets[step.inputs].repeat_interleave(k)
            if self.model is not None:
                with eval_mode(self.model):
                    e = call_explainer(explainer, z, tb)
            else:
                e = call_explainer(explainer, z, tb)
            if e.ndim == 0 or e.shape[0] != b * k:
                raise InvalidInputError(
                    f"the explainer returned {tuple(e.shape)} for {b * k} inputs; it must return one "
                    "explanation per input"
                )
            if not torch.isfinite(e).all():
                raise InvalidInputError("the explainer returned NaN or inf on a smoothing point")
            part = e.view(b, k, *e.shape[1:]).sum(dim=1, dtype=torch.float64)
            if j == 0:
                total = part
            else:
                assert total is not None
                if part.shape != total.shape:
                    raise InvalidInputError("the explainer returned explanations of varying shapes")
                total += part
            if step.last(n):
                assert total is not None
                out_blocks.append((total / n).to(e.dtype))
        return torch.cat(out_blocks)

    def attribute(self, inputs: torch.Tensor, target: TargetLike = None) -> torch.Tensor:
        """``Phi_k(f, x)`` ``(N, ...)`` with the explainer's output shape."""
        return self._smooth(self.explainer, inputs, target)

    def attribute_raw(self, inputs: torch.Tensor, target: TargetLike = None) -> torch.Tensor:
        """Smooths the explainer's ``attribute_raw`` (input-shaped) when it has one."""
        if not hasattr(self.explainer, "attribute_raw"):
            raise InvalidInputError(f"{type(self.explainer).__name__} has no attribute_raw; use attribute")
        return self._smooth(_Raw(self.explainer), inputs, target)

    def __call__(self, inputs: torch.Tensor, target: TargetLike = None) -> torch.Tensor:
        return self.attribute(inputs, target)
