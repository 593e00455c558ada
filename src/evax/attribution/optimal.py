"""Infidelity-optimal explanations (Yeh et al. 2019, Prop. 2.1 and Sec. 2.4).

For a perturbation distribution ``mu_I`` the explanation with the least infidelity (Eq. 1) is
the least-squares solution (Eq. 2, with ``I^T IG(f, x, I) = f(x) - f(x - I)``)::

    Phi*(f, x) = ( E[I I^T] )^{-1} E[ I (f(x) - f(x - I)) ],

estimated here by (ridge-regularised) least squares on ``n`` sampled perturbations -- the
reference implementation's kernel regression with unit weights::

    Phi* = ( (1/n) sum_j I_j I_j^T + lambda Id )^{-1} (1/n) sum_j I_j (f(x) - f(x~_j)).

The normal equations are streamed: only ``sum I I^T`` ``(F, F)`` and ``sum I df`` ``(F,)``
(float64) are kept per input, never the samples. The ``n`` perturbations are drawn once per
call and shared by all the inputs (common random numbers: ``sample(..., shared=True)``), from the
``"optimal"`` stream of ``seed``: ``Phi*`` of an image is a fixed function of the image, whatever
else is in the batch, and its Monte-Carlo error does not count as sensitivity in SENS_MAX. ``F`` is the number of regression features:

* pixels: ``I`` as the perturbation gives it -- ``C H W`` entries for additive noise
  (:class:`~evax.metrics.NoisyBaseline`, :class:`~evax.metrics.GaussianNoise`), ``H W`` for a
  channel-shared mask (``indicator=True`` removals such as :class:`~evax.metrics.SquareRemoval`);
* groups (``groups=``): ``F = G`` features ``sum_{p in g} I_p`` (channels summed), and the
  group's coefficient is painted on all its pixels.

Without ridge (``ridge=0``, the reference's ``pinv``) a singular or ill-conditioned system
falls back to the pseudo-inverse with a :class:`SingularSystemWarning`.

Presets: :class:`OptimalSquare` (square removal, a *global* explanation, Table 1b) and
:class:`OptimalNoisyBaseline` (noisy-baseline noise, a *local* explanation, Table 1a; with
``global_=True`` it is multiplied by ``x - x0`` as Sec. 2.5). They are the *explanations*; the
noise distributions they are optimal for (:class:`evax.metrics.SquareRemoval`,
:class:`evax.metrics.NoisyBaseline`) live in :mod:`evax.core.noise`. The old names
``evax.attribution.Square`` / ``evax.attribution.NoisyBaseline`` are kept as aliases.
"""

from __future__ import annotations

import warnings
from typing import Any

import torch
from torch import nn

from evax import groups as groups_mod
from evax.attribution.base import Attribution, TargetLike
from evax.core.checks import check_positive_float, check_positive_int, check_tensor
from evax.core.modes import eval_mode
from evax.core.noise import BaselineSpec, DifferenceToBaseline, NoiseDistribution, SquareRemoval
from evax.core.noise import NoisyBaseline as NoisyBaselineNoise
from evax.core.progress import progress_bar
from evax.core.random import check_seed
from evax.core.scores import score_function
from evax.core.streaming import Draws, blocks, n_draws, steps
from evax.core.targets import resolve_target
from evax.errors import InvalidInputError

__all__ = ["OptimalExplanation", "OptimalNoisyBaseline", "OptimalSquare", "SingularSystemWarning"]

# normal equations kept in memory at once (float64 bytes) when choosing input blocks
_GRAM_BUDGET = 1 << 29


class SingularSystemWarning(UserWarning):
    """The least-squares system of an optimal explanation is singular; pinv was used."""


class OptimalExplanation(Attribution):
    """The infidelity-optimal explanation ``Phi*`` for the noise distribution ``noise`` (Prop. 2.1, Eq. 2).

    Args:
        model: classifier ``(M, *S) -> (M, K)``; eval mode while computing, restored after.
        noise: a :class:`~evax.core.noise.NoiseDistribution` (the perturbations ``I``; named as
            in the metrics, apart from the perturbation *sets* of :mod:`evax.perturbation`).
        n_samples: perturbations drawn per input (default ``max(2000, 4 F)``); exhaustive
            perturbations use all their items (leave it ``None``). Use ``n >> F``: with
            ``n < F`` the sample Gram matrix is singular.
        ridge: ``lambda >= 0`` added to the diagonal of ``E[I I^T]`` (``0``: plain least
            squares, pinv with a warning if singular).
        groups: regress on groups of pixels (see :func:`evax.groups.resolve`) instead of pixels.
        global_: multiply by ``x - x0`` (Sec. 2.5) -- for perturbations with a baseline whose
            ``I`` is not already a mask. ``global`` is a reserved word in Python; it is also
            accepted as ``**{"global": True}``.
        activation: ``f`` from the logits (``None``: the logit, as the reference code).
        batch_size: model inputs per forward pass.
        seed: seed of the generator created on every call (its ``"optimal"`` stream, see
            :mod:`evax.core.random`: never the draws of a metric
            built with the same seed).
        progress: tqdm bar (``None``: only when stderr is a TTY).
        reduce: channel reduction of :meth:`attribute` (``"sum"``).
        completeness: also impose ``I_full^T Phi = f(x) - f(x0)`` exactly, ``I_full`` the removal
            of every feature (``x - x0``; all ones for masks) -- the infinite kernel weight of the
            full set in Prop. 2.5 (as KernelSHAP). With :func:`~evax.metrics.ShapleyKernel` this
            makes ``Phi*`` (times ``x - x0`` for ``indicator=False``) the Shapley values; without
            it the regression over ``0 < |Z| < F`` gives them only up to a common shift.

    ``attribute_raw`` returns ``(N, C, H, W)`` for per-channel perturbations and
    ``(N, 1, H, W)`` when the explanation is shared by the channels (mask perturbations,
    groups; ``(N, C, H, W)`` again after ``global_``); ``(N, *S)`` for flat inputs.
    ``attribute`` reduces images to ``(N, H, W)``.
    """

    name = "optimal"

    def __init__(
        self,
        model: nn.Module,
        noise: NoiseDistribution,
        n_samples: int | None = None,
        ridge: float = 0.0,
        groups: Any = None,
        global_: bool = False,
        activation: str | None = None,
        batch_size: int = 1024,
        seed: int = 0,
        progress: bool | None = None,
        reduce: str = "sum",
        completeness: bool = False,
        **options: Any,
    ) -> None:
        super().__init__(model, reduce)
        unknown = sorted(set(options) - {"global"})
        if unknown:
            raise InvalidInputError(f"unexpected keyword argument(s) {unknown} for {type(self).__name__}")
        global_ = bool(options.get("global", global_))
        if not isinstance(model, nn.Module):
            raise InvalidInputError(f"model must be an nn.Module, got {type(model).__name__}")
        if not isinstance(noise, NoiseDistribution):
            raise InvalidInputError(
                f"noise must be a noise distribution (evax.metrics.NoisyBaseline, SquareRemoval...), "
                f"got {type(noise).__name__}"
            )
        if n_samples is not None:
            check_positive_int(n_samples, "n_samples", minimum=2)
        self.noise = noise
        self.n_samples = n_samples
        self.ridge = check_positive_float(ridge, "ridge", allow_zero=True)
        self.groups = groups
        self.global_ = bool(global_)
        if self.global_ and noise.indicator:
            raise InvalidInputError(
                f"{noise!r} perturbs with a mask (indicator=True): its optimal explanation is "
                "already global; use global_=False (or indicator=False for a local one)"
            )
        has_baseline = type(noise).baseline_of is not NoiseDistribution.baseline_of
        if (self.global_ or completeness) and not has_baseline:
            raise InvalidInputError(
                f"global_=True and completeness=True need a noise with a baseline x0 (NoisyBaseline, "
                f"SquareRemoval, SubsetRemoval, DifferenceToBaseline), not {noise!r}"
            )
        self.completeness = bool(completeness)
        self.score = score_function(activation)
        self.batch_size = check_positive_int(batch_size, "batch_size")
        check_seed(seed)
        self.seed = seed
        self.progress = progress

    # -- features -------------------------------------------------------------------------
    def _group_matrix(self, inputs: torch.Tensor) -> torch.Tensor | None:
        """``(N or 1, P, G)`` float membership of pixels in groups, or ``None``."""
        if self.groups is None:
            return None
        if inputs.ndim != 4:
            raise InvalidInputError("groups need image inputs (N, C, H, W)")
        g = self.groups
        if isinstance(g, torch.Tensor) and g.dtype == torch.bool and g.ndim == 3:
            g = g.unsqueeze(0)
        masks = groups_mod.resolve(g, inputs)  # (B, G, H, W)
        return masks.flatten(2).transpose(1, 2).to(inputs.dtype)

    @staticmethod
    def _features(pert: torch.Tensor, gmat: torch.Tensor | None) -> torch.Tensor:
        """``(b, k, F)`` regression features of ``pert`` ``(b, k, *S_I)``."""
        b, k = pert.shape[:2]
        if gmat is None:
            return pert.reshape(b, k, -1)
        pix = pert.sum(dim=2) if pert.ndim == 5 else pert  # channels summed: (b, k, H, W)
        return torch.matmul(pix.reshape(b, k, -1), gmat)  # (b, k, G)

    # -- solve --------------------------------------------------------------------------------
    def _solve(self, gram: torch.Tensor, rhs: torch.Tensor) -> torch.Tensor:
        """Solve ``(gram + ridge Id) phi = rhs`` for a batch ``(b, F, F)``, ``(b, F, R)`` (SPD up to
        rounding): Cholesky, or the pseudo-inverse with a warning when singular."""
        f = gram.shape[-1]
        a = gram + self.ridge * torch.eye(f, dtype=gram.dtype, device=gram.device)
        chol, info = torch.linalg.cholesky_ex(a)
        diag = chol.diagonal(dim1=-2, dim2=-1).abs()
        # cond(A) ~ (max diag L / min diag L)^2: treat as singular beyond 1 / sqrt(eps64)
        ratio = diag.amax(-1) / diag.amin(-1).clamp_min(1e-300)
        bad = (info > 0) | ~torch.isfinite(ratio)
        if self.ridge == 0:
            bad |= ratio**2 > 1e8
        out = torch.empty_like(rhs)
        good = ~bad
        if good.any():
            out[good] = torch.cholesky_solve(rhs[good], chol[good])
        if bad.any():
            warnings.warn(
                f"the least-squares system of the optimal explanation is singular or ill-conditioned "
                f"for {int(bad.sum())} input(s) (F={f} features): using the pseudo-inverse. Draw more "
                "samples, regress on groups, or pass ridge > 0.",
                SingularSystemWarning,
                stacklevel=3,
            )
            pinv = torch.linalg.pinv(a[bad], hermitian=True, rtol=1e-10)
            out[bad] = pinv @ rhs[bad]
        return out

    def _constraint(
        self, x: torch.Tensor, targets: torch.Tensor, fx: torch.Tensor, gmat: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(c, delta)``: the features ``(N, F)`` of the full removal ``I_full`` (``x - x0``, or
        all ones for masks) and ``delta = f(x) - f(x0)`` ``(N,)`` of the completeness constraint."""
        x0 = self.noise.baseline_of(x)
        assert x0 is not None  # checked in __init__
        pert, perturbed = DifferenceToBaseline(x0, indicator=self.noise.indicator).sample(x, 1)
        c = self._features(pert, gmat).squeeze(1).to(torch.float64)  # (N, F)
        f0 = torch.cat(
            [
                self.score(self.model(xb), tb)
                for xb, tb in zip(
                    perturbed[:, 0].split(self.batch_size), targets.split(self.batch_size), strict=True
                )
            ]
        )
        return c, (fx - f0).to(torch.float64)

    def _finish(
        self,
        gram: torch.Tensor,
        rhs: torch.Tensor,
        constraint: tuple[torch.Tensor, torch.Tensor] | None,
        start: int,
        b: int,
    ) -> torch.Tensor:
        """``Phi*`` ``(b, F)`` of inputs ``start .. start + b - 1`` from their normal equations;
        with the completeness constraint ``c^T Phi = delta`` (Lagrange)::

            Phi = u + v (delta - c^T u) / (c^T v),   u = A^{-1} E[I df],  v = A^{-1} c.
        """
        if constraint is None:
            return self._solve(gram, rhs.unsqueeze(2)).squeeze(2)
        c, delta = constraint[0][start : start + b], constraint[1][start : start + b]
        uv = self._solve(gram, torch.stack([rhs, c], dim=2))
        u, v = uv[..., 0], uv[..., 1]
        cv = (c * v).sum(1)
        if (cv.abs() <= 1e-12 * c.norm(dim=1).pow(2).clamp_min(1e-300)).any():
            raise InvalidInputError(
                "the completeness constraint is degenerate (x == x0 on every feature?): use completeness=False"
            )
        return u + v * ((delta - (c * u).sum(1)) / cv).unsqueeze(1)

    # -- main -----------------------------------------------------------------------------------
    def attribute_raw(self, inputs: torch.Tensor, target: TargetLike = None) -> torch.Tensor:
        """``Phi*`` (see the class docstring for shapes)."""
        check_tensor(inputs)
        x = inputs.detach()
        n_in = x.shape[0]
        targets = resolve_target(self.model, x, target)
        gmat = self._group_matrix(x)
        s_i = self.noise.perturbation_shape(x)
        n_feat = int(gmat.shape[2]) if gmat is not None else int(torch.Size(s_i).numel())
        n = n_draws(self.n_samples, self.noise, x, default=max(2000, 4 * n_feat))
        per_block, per_chunk = blocks(n_in, n, self.batch_size)
        per_block = max(1, min(per_block, _GRAM_BUDGET // (8 * n_feat * n_feat)))  # chunks: n-independent
        draws = Draws(self.noise, self.seed, "optimal")  # the same draws for every block
        phis = []
        plan = steps(n_in, n, per_block, per_chunk)
        gram = rhs = None
        with eval_mode(self.model), torch.no_grad():
            fx = torch.cat(
                [
                    self.score(self.model(xb), tb)
                    for xb, tb in zip(x.split(self.batch_size), targets.split(self.batch_size), strict=True)
                ]
            )
            constraint = self._constraint(x, targets, fx, gmat) if self.completeness else None
            for step in progress_bar(plan, self.progress, total=len(plan), desc="optimal explanation"):
                xb, k, i = x[step.inputs], step.count, step.start
                b = xb.shape[0]
                if step.first:
                    gram = None
                    rhs = torch.zeros(b, n_feat, dtype=torch.float64, device=x.device)
                pert, perturbed = draws.sample(xb, step.offset, k, n)
                out = self.model(perturbed.reshape(b * k, *x.shape[1:]))
                df = fx[i : i + b].unsqueeze(1) - self.score(
                    out, targets[i : i + b].repeat_interleave(k)
                ).view(b, k)
                gm = None if gmat is None else gmat[i : i + b] if gmat.shape[0] > 1 else gmat
                feats = self._features(pert, gm).to(torch.float64)  # (b, k, F)
                # features common to the block (shared masks): one Gram matrix for all its inputs
                same = b == 1 or bool((feats == feats[:1]).all())
                if gram is None:
                    gram = torch.zeros(1 if same else b, n_feat, n_feat, dtype=torch.float64, device=x.device)
                elif gram.shape[0] == 1 and not same:
                    gram = gram.expand(b, -1, -1).clone()
                gf = feats[:1] if gram.shape[0] == 1 else feats
                gram += torch.bmm(gf.transpose(1, 2), gf)  # sum I I^T
                rhs += torch.bmm(feats.transpose(1, 2), df.unsqueeze(2).to(torch.float64)).squeeze(2)
                if step.last(n):
                    phis.append(self._finish((gram / n).expand(b, -1, -1), rhs / n, constraint, i, b))
        phi = torch.cat(phis).to(x.dtype)  # (N, F)
        if gmat is not None:
            phi = torch.matmul(gmat, phi.unsqueeze(2)).squeeze(2)  # painted on the pixels (N, P)
            phi = phi.view(n_in, 1, *x.shape[2:])
        else:
            phi = phi.view(n_in, *s_i)
        if self.global_:
            x0 = self.noise.baseline_of(x)
            if x0 is None:
                raise InvalidInputError(
                    f"global_=True multiplies by x - x0, but {self.noise!r} has no baseline x0"
                )
            phi = phi * (x - x0)
        return phi


class OptimalSquare(OptimalExplanation):
    """The optimal explanation for square removal ("Square", Table 1b): a *global* explanation.

    Defaults follow the reference evaluation: every square of side 1..10 set to the baseline
    0, enumerated exhaustively (5 605 perturbations on 28x28 images), ``I`` the mask.
    """

    name = "square"

    def __init__(
        self,
        model: nn.Module,
        sizes: Any = range(1, 11),
        baseline: BaselineSpec = 0.0,
        exhaustive: bool = True,
        n_samples: int | None = None,
        ridge: float = 0.0,
        **kwargs: Any,
    ) -> None:
        pert = SquareRemoval(sizes=sizes, baseline=baseline, exhaustive=exhaustive, indicator=True)
        super().__init__(model, pert, n_samples=n_samples, ridge=ridge, **kwargs)


class OptimalNoisyBaseline(OptimalExplanation):
    """The optimal explanation for the noisy-baseline perturbation ("NB", Table 1a): local.

    Defaults follow the reference code: ``x~ = clip(x0 + eps, 0, 1)``, ``eps ~ N(0, 0.2^2)``,
    ``x0 = 0``, 20 000 samples. ``global_=True`` multiplies it by ``x - x0`` (Sec. 2.5).
    """

    name = "noisy_baseline"

    def __init__(
        self,
        model: nn.Module,
        sigma: float = 0.2,
        baseline: BaselineSpec = 0.0,
        clip: tuple[float, float] | None = (0.0, 1.0),
        n_samples: int | None = 20000,
        ridge: float = 0.0,
        **kwargs: Any,
    ) -> None:
        pert = NoisyBaselineNoise(sigma=sigma, baseline=baseline, clip=clip)
        super().__init__(model, pert, n_samples=n_samples, ridge=ridge, **kwargs)
