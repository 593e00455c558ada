"""Explanation infidelity (INFD, Def. 2.1) and max-sensitivity (SENS_MAX, Def. 3.1) of
Yeh et al. 2019, "On the (In)fidelity and Sensitivity of Explanations".

Both are Monte-Carlo estimates streamed in chunks of at most ``batch_size`` model inputs: only
per-input sufficient statistics (sums) or running maxima are kept, never all the samples, so
memory does not grow with ``n_samples``. Every random draw comes from a ``torch.Generator``
seeded by ``seed`` on each call -- two explanations (or explainers) scored by the same metric
object are scored against *the same* perturbations (paired comparisons), and nothing global is
seeded.
The ``n`` draws are shared by all the inputs (common random numbers, ``sample(...,
shared=True)``) and made in fixed draw blocks (:class:`evax.core.streaming.Draws`): an input's
score depends on ``(seed, n_samples)`` but neither on ``batch_size`` (up to float summation
order) nor on the other inputs of the batch. With ``n_samples <= 1024`` the draws are exactly
those of ``noise.sample(inputs, n_samples, torch.Generator().manual_seed(seed),
shared=True)``.

Explanation shapes: ``(N, *S)`` like the inputs; for images ``(N, C, H, W)`` also ``(N, H, W)``
or ``(N, 1, H, W)`` -- a channel-reduced explanation scores every channel of its pixel alike
(it is broadcast over the channels). A noise distribution whose ``I`` is a channel-shared mask
(``indicator=True``) is dotted with ``sum_c Phi[c]``, the channel sum of a global explanation.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from evax.core.checks import check_positive_float, check_positive_int
from evax.core.explainers import Explainer
from evax.core.modes import eval_mode
from evax.core.noise import NoiseDistribution, NoisyBaseline, UniformNoise
from evax.core.progress import progress_bar
from evax.core.random import check_seed
from evax.core.scores import ActivationLike, score_function
from evax.core.streaming import Draws, blocks, n_draws, steps
from evax.core.targets import TargetLike
from evax.errors import InvalidInputError
from evax.metrics.base import ExplainerMetric, ExplanationMetric, MetricResult, mean_score

__all__ = ["Infidelity", "InfidelityResult", "MaxSensitivity", "SensitivityResult"]


# --------------------------------------------------------------------------- shared helpers


def check_explanation(expl: Any, inputs: torch.Tensor, label: str = "explanations") -> torch.Tensor:
    """Validate an explanation for ``inputs`` ``(N, *S)`` and return it as ``(N, *S')``.

    Accepted: the input's shape ``(N, *S)``; for images ``(N, C, H, W)`` also ``(N, 1, H, W)``
    and ``(N, H, W)`` (returned as ``(N, 1, H, W)``, broadcast over the channels); for flat
    inputs ``(N, D)``. Raises :class:`InvalidInputError` otherwise, or on NaN / inf.
    """
    if not isinstance(expl, torch.Tensor):
        raise InvalidInputError(f"{label} must be a tensor, got {type(expl).__name__}")
    n, shape = inputs.shape[0], tuple(inputs.shape[1:])
    e = expl.detach()
    if not e.is_floating_point():
        e = e.to(inputs.dtype)
    if inputs.ndim == 4 and e.ndim == 3 and tuple(e.shape) == (n, *shape[1:]):
        e = e.unsqueeze(1)
    ok = e.shape[0] == n and (
        tuple(e.shape[1:]) == shape
        or (inputs.ndim == 4 and e.ndim == 4 and tuple(e.shape[1:]) == (1, *shape[1:]))
    )
    if not ok:
        allowed = f"(N, *S)={(n, *shape)}"
        if inputs.ndim == 4:
            allowed += f", (N, 1, H, W)={(n, 1, *shape[1:])} or (N, H, W)={(n, *shape[1:])}"
        raise InvalidInputError(
            f"{label} have shape {tuple(expl.shape)}, which does not match the inputs "
            f"{tuple(inputs.shape)}: expected {allowed}"
        )
    if not torch.isfinite(e).all():
        raise InvalidInputError(f"{label} contain NaN or inf")
    return e


def dot_perturbations(pert: torch.Tensor, expl: torch.Tensor) -> torch.Tensor:
    """``a_j = I_j^T Phi`` ``(b, k)`` for perturbations ``(b, k, *S_I)`` and explanations
    ``(b, *S_E)``. A channel-shared ``I`` ``(1, H, W)`` is dotted with ``sum_c Phi[c]``; a
    channel-shared ``Phi`` ``(1, H, W)`` scores every channel of ``I`` alike."""
    b, k = pert.shape[:2]
    s_i, s_e = tuple(pert.shape[2:]), tuple(expl.shape[1:])
    if s_i != s_e:
        if len(s_i) == 3 and len(s_e) == 3 and s_i[1:] == s_e[1:] and s_i[0] == 1:
            expl = expl.sum(dim=1, keepdim=True)
        elif len(s_i) == 3 and len(s_e) == 3 and s_i[1:] == s_e[1:] and s_e[0] == 1:
            expl = expl.expand(b, *s_i)
        else:
            raise InvalidInputError(
                f"perturbations of shape {s_i} cannot be dotted with explanations of shape {s_e}"
            )
    return torch.bmm(pert.reshape(b, k, -1), expl.reshape(b, -1, 1).to(pert.dtype)).squeeze(2)


# --------------------------------------------------------------------------- Infidelity


@dataclass(frozen=True, eq=False)
class InfidelityResult(MetricResult):
    """Detailed result of :class:`Infidelity` for ``N`` inputs.

    Attributes:
        scores: ``(N,)`` float64 infidelity (the default return); mean: their mean.
        beta: ``(N,)`` the optimal rescaling ``S_ab / S_aa`` (1 when ``normalize=False``).
        unscaled: ``(N,)`` Eq. 1 without ``beta``.
        n_samples: the number of perturbations each input was scored on.
    """

    beta: torch.Tensor
    unscaled: torch.Tensor
    n_samples: int


class Infidelity(ExplanationMetric):
    """Explanation infidelity (Def. 2.1, Eq. 1)::

        INFD(Phi, f, x) = E_{I ~ mu_I} [ (I^T Phi(f, x) - (f(x) - f(x - I)))^2 ]

    estimated with ``n_samples`` draws ``(I_j, x~_j)`` of the noise distribution ``noise`` (``x~_j`` replaces
    ``x - I_j``, see :mod:`evax.core.noise`). With ``a_j = I_j^T Phi`` and
    ``b_j = f(x) - f(x~_j)`` the streamed sufficient statistics are ``S_aa = sum a^2``,
    ``S_ab = sum a b``, ``S_bb = sum b^2`` (float64). ``normalize=True`` (the authors' evaluation
    and Captum's ``normalize``) first rescales the explanation by the optimal
    ``beta = S_ab / S_aa`` (``0`` when ``S_aa = 0``)::

        INFD_beta = (1/n) sum_j (beta a_j - b_j)^2 = (S_bb - S_ab^2 / S_aa) / n,

    which is invariant to any rescaling ``Phi -> c Phi``, ``c != 0``. ``normalize=False`` gives
    Eq. 1 as is, ``(1/n) sum_j (a_j - b_j)^2``.

    Args:
        model: classifier ``(M, *S) -> (M, K)``; put in eval mode while scoring, restored after.
        inputs: ``(N, *S)``, copied; ``targets``: ``(N,)`` or ``None`` (the predicted classes).
        noise: the noise distribution ``mu_I``, a :class:`~evax.core.noise.NoiseDistribution` (default
            ``NoisyBaseline(0.2)``: the paper's local setting, without clipping; the paper
            clips to the pixel domain, ``NoisyBaseline(0.2, clip=(0, 1))``, and uses
            ``SquareRemoval`` for global explanations).
        n_samples: Monte-Carlo draws per input (>= 2; ``None``: 1000). Exhaustive perturbations
            enumerate all their items: leave it ``None``.
        normalize: rescale by the optimal ``beta`` first (default, as the paper's tables).
        activation: ``f`` from the logits: ``None`` (the logit, default), ``"softmax"``, ...
        batch_size: model inputs per forward pass (bounds memory: ``batch_size * d`` floats).
        seed: seed of the generator created on every call.
        progress: tqdm bar (``None``: only when stderr is a TTY).

    ``metric(explanations)`` -> ``(N,)`` scores (float64); ``detailed=True`` ->
    :class:`InfidelityResult` (``scores``, ``mean``, ``beta``, ``unscaled``, ``n_samples``).
    ``explanations`` is a tensor (see :func:`check_explanation` for the shapes), an explainer,
    or a list / dict of those: all are then scored on the *same* model evaluations (one pass)
    and a list / dict of results comes back.
    """

    def __init__(
        self,
        model: nn.Module,
        inputs: torch.Tensor,
        targets: TargetLike = None,
        noise: NoiseDistribution | None = None,
        n_samples: int | None = None,
        normalize: bool = True,
        activation: ActivationLike = None,
        batch_size: int = 1024,
        seed: int = 0,
        progress: bool | None = None,
    ) -> None:
        if noise is None:
            noise = NoisyBaseline(0.2)
        if not isinstance(noise, NoiseDistribution):
            raise InvalidInputError(
                f"noise must be an evax.metrics noise distribution (GaussianNoise, NoisyBaseline, "
                f"SquareRemoval, ...), got {type(noise).__name__}"
            )
        if n_samples is not None:
            check_positive_int(n_samples, "n_samples", minimum=2)
        self.batch_size = check_positive_int(batch_size, "batch_size")
        check_seed(seed)
        super().__init__(model, inputs, targets)
        self.noise = noise
        self.n_samples = n_samples
        self.normalize = bool(normalize)
        self.score = score_function(activation)
        self.seed = seed
        self.progress = progress

    def __call__(self, explanations: Any, detailed: bool = False) -> Any:
        """Per-sample scores ``(N,)`` (or :class:`InfidelityResult` with ``detailed=True``) of
        ``explanations``; a list / dict of explanations gives a list / dict of those."""
        names: list[Any]
        if isinstance(explanations, Mapping):
            names, items = list(explanations.keys()), list(explanations.values())
        elif isinstance(explanations, Sequence) and not isinstance(explanations, (str, torch.Tensor)):
            names, items = list(range(len(explanations))), list(explanations)
        else:
            return self._result(self.compute(explanations), detailed)
        if not items:
            raise InvalidInputError("no explanation to score")
        results = [self._result(r, detailed) for r in self._compute_all(names, items)]
        if isinstance(explanations, Mapping):
            return dict(zip(names, results, strict=True))
        return results

    def compute(self, obj: Any) -> InfidelityResult:
        return self._compute_all([None], [obj])[0]

    def _compute_all(self, names: list[Any], items: list[Any]) -> list[InfidelityResult]:
        expls = []
        for name, e in zip(names, items, strict=True):
            label = "explanations" if name is None else f"explanation {name!r}"
            expls.append(check_explanation(self.explain(e), self.inputs, label))
        stats = self._statistics(self.inputs, self.targets, expls)  # (E, N, 4)
        return [self._finish(s) for s in stats]

    @torch.no_grad()
    def _statistics(self, x: torch.Tensor, targets: torch.Tensor, expls: list[torch.Tensor]) -> torch.Tensor:
        n_in = x.shape[0]
        n = n_draws(self.n_samples, self.noise, x, default=1000)
        self._last_n = n
        per_block, per_chunk = blocks(n_in, n, self.batch_size)
        draws = Draws(self.noise, self.seed)  # the same draws for every block of inputs
        stats = torch.zeros(len(expls), n_in, 4, dtype=torch.float64, device=x.device)
        plan = steps(n_in, n, per_block, per_chunk)
        with eval_mode(self.model):
            fx = torch.cat(
                [
                    self.score(self.model(xb), tb)
                    for xb, tb in zip(x.split(self.batch_size), targets.split(self.batch_size), strict=True)
                ]
            )
            for step in progress_bar(plan, self.progress, total=len(plan), desc="infidelity"):
                xb, k = x[step.inputs], step.count
                b = xb.shape[0]
                pert, perturbed = draws.sample(xb, step.offset, k, n)
                out = self.model(perturbed.reshape(b * k, *x.shape[1:]))
                fb = self.score(out, targets[step.inputs].repeat_interleave(k)).view(b, k)
                diff = (fx[step.inputs].unsqueeze(1) - fb).to(torch.float64)  # b_j = f(x) - f(x~_j)
                for e, expl in enumerate(expls):
                    a = dot_perturbations(pert, expl[step.inputs]).to(torch.float64)  # a_j = I_j^T Phi
                    s = stats[e, step.inputs]
                    s[:, 0] += (a * a).sum(1)
                    s[:, 1] += (a * diff).sum(1)
                    s[:, 2] += (diff * diff).sum(1)
                    s[:, 3] += ((a - diff) ** 2).sum(1)
        return stats

    def _finish(self, s: torch.Tensor) -> InfidelityResult:
        n = self._last_n
        s_aa, s_ab, s_bb, s_dd = s.unbind(1)
        unscaled = s_dd / n
        if self.normalize:
            beta = torch.where(s_aa > 0, s_ab / torch.where(s_aa > 0, s_aa, 1.0), torch.zeros_like(s_ab))
            scores = ((s_bb - beta * s_ab) / n).clamp_min(0.0)  # = (b^2 - 2 beta ab + beta^2 a^2) / n
        else:
            beta = torch.ones_like(s_ab)
            scores = unscaled
        return InfidelityResult(scores, mean_score(scores), beta=beta, unscaled=unscaled, n_samples=n)


# --------------------------------------------------------------------------- MaxSensitivity


_NORMS = {"fro": 2.0, "2": 2.0, 2: 2.0, "inf": math.inf, math.inf: math.inf, 1: 1.0, "1": 1.0}


@dataclass(frozen=True, eq=False)
class SensitivityResult(MetricResult):
    """Detailed result of :class:`MaxSensitivity` for ``N`` inputs.

    Attributes:
        scores: ``(N,)`` float64 max-sensitivity (the default return); mean: their mean.
        argmax: ``(N,)`` index of the perturbed point that reached the max.
    """

    argmax: torch.Tensor


class MaxSensitivity(ExplainerMetric):
    """Max-sensitivity of an explainer (Def. 3.1), relative to the explanation's norm::

        SENS_MAX(Phi, f, x, r) = max_{||y - x||_inf <= r} ||Phi(f, y) - Phi(f, x)|| / ||Phi(f, x)||

    estimated by Monte Carlo: the max over ``n_samples`` points ``y`` drawn uniformly in the
    L-inf ball of radius ``r`` (the reference code and Captum's ``sensitivity_max``, which also
    divide by ``||Phi(x)||``; a zero explanation divides by 1 instead). The explained class is
    held fixed at the target of ``x`` for every ``y``. The estimate is a lower bound of the
    true max that grows with ``n_samples``. The points' offsets ``y - x`` are shared by all
    the inputs (as :class:`Infidelity`'s draws).

    Args:
        model: the explained classifier (in eval mode while the explainer runs).
        inputs: ``(N, *S)``, copied; ``targets``: ``(N,)`` or ``None`` (the predicted classes).
        radius: ``r`` (the paper: 0.2 for local, 0.1 for global explanations).
        n_samples: points ``y`` per input (>= 2; the paper: 50).
        norm: ``"fro"`` (= L2 of the flattened map, default), ``"inf"`` or ``1``.
        relative: divide by ``||Phi(x)||`` (default, as the paper); ``False``: absolute change.
        noise: the sampler of ``y = x~`` (default ``UniformNoise(radius)``, the L-inf
            ball); any :class:`~evax.core.noise.NoiseDistribution` can replace it.
        batch_size: perturbed inputs per explainer call.
        seed: seed of the generator created on every call.
        progress: tqdm bar (``None``: only when stderr is a TTY).

    ``metric(explainer)`` -> ``(N,)`` (float64); ``detailed=True`` -> :class:`SensitivityResult`
    (``scores``, ``mean``, ``argmax``). The explainer (an object with ``.attribute(inputs,
    target)`` -- evax, Captum -- or a callable ``explain(inputs, target)``) is called on up to
    ``batch_size`` perturbed inputs at a time; ``explanations=`` may pass its explanations
    ``Phi(x)`` ``(N, ...)`` of the clean inputs when already computed.
    """

    def __init__(
        self,
        model: nn.Module,
        inputs: torch.Tensor,
        targets: TargetLike = None,
        radius: float = 0.2,
        n_samples: int = 50,
        norm: str | float = "fro",
        relative: bool = True,
        noise: NoiseDistribution | None = None,
        batch_size: int = 256,
        seed: int = 0,
        progress: bool | None = None,
    ) -> None:
        self.radius = check_positive_float(radius, "radius")
        self.n_samples = check_positive_int(n_samples, "n_samples", minimum=2)
        if norm not in _NORMS:
            raise InvalidInputError(f"unknown norm {norm!r}: use 'fro' (L2), 'inf' or 1")
        self.ord = _NORMS[norm]
        self.relative = bool(relative)
        if noise is not None and not isinstance(noise, NoiseDistribution):
            raise InvalidInputError(
                f"noise must be a noise distribution (evax.metrics.UniformNoise...), got {type(noise).__name__}"
            )
        self.noise = noise if noise is not None else UniformNoise(self.radius)
        self.batch_size = check_positive_int(batch_size, "batch_size")
        check_seed(seed)
        super().__init__(model, inputs, targets)
        self.seed = seed
        self.progress = progress

    def _norm(self, v: torch.Tensor) -> torch.Tensor:
        return torch.linalg.vector_norm(v.flatten(1).to(torch.float64), ord=self.ord, dim=1)

    def __call__(
        self, explainer: Explainer, detailed: bool = False, *, explanations: torch.Tensor | None = None
    ) -> Any:
        """Per-sample max-sensitivity ``(N,)`` of ``explainer`` (or :class:`SensitivityResult`
        with ``detailed=True``); ``explanations``: its explanations of the clean inputs, when
        already computed."""
        return self._result(self.compute(explainer, explanations), detailed)

    def compute(self, obj: Explainer, explanations: torch.Tensor | None = None) -> SensitivityResult:
        self.check_explainer(obj)
        x, targets = self.inputs, self.targets
        n_in = x.shape[0]
        base = explanations if explanations is not None else self.run_explainer(obj, x, targets)
        if not isinstance(base, torch.Tensor) or base.shape[0] != n_in:
            raise InvalidInputError(
                f"the explanations must be a tensor with {n_in} rows, got "
                f"{tuple(base.shape) if isinstance(base, torch.Tensor) else type(base).__name__}"
            )
        if not torch.isfinite(base).all():
            raise InvalidInputError("the explanation of the clean inputs contains NaN or inf")
        base = base.detach()
        denom = self._norm(base) if self.relative else torch.ones(n_in, dtype=torch.float64, device=x.device)
        denom = torch.where(denom == 0, torch.ones_like(denom), denom)
        n = self.n_samples
        per_block, per_chunk = blocks(n_in, n, self.batch_size)
        draws = Draws(self.noise, self.seed)  # the same draws for every block of inputs
        best = torch.full((n_in,), -math.inf, dtype=torch.float64, device=x.device)
        arg = torch.zeros(n_in, dtype=torch.long, device=x.device)
        plan = steps(n_in, n, per_block, per_chunk)
        for step in progress_bar(plan, self.progress, total=len(plan), desc="max-sensitivity"):
            xb, k, i, j = x[step.inputs], step.count, step.start, step.offset
            b = xb.shape[0]
            _, y = draws.sample(xb, j, k, n)
            ey = self.run_explainer(obj, y.reshape(b * k, *x.shape[1:]), targets[i : i + b].repeat_interleave(k))
            if not torch.isfinite(ey).all():
                raise InvalidInputError("the explainer returned NaN or inf on a perturbed input")
            if ey.shape != (b * k, *base.shape[1:]):
                raise InvalidInputError(
                    f"the explainer returned {tuple(ey.shape)} for {b * k} perturbed inputs, but "
                    f"{tuple(base.shape[1:])} per input for the clean ones"
                )
            diff = ey.reshape(b, k, -1).to(base.dtype) - base[i : i + b].reshape(b, 1, -1)
            sens = self._norm(diff.reshape(b * k, -1)).view(b, k) / denom[i : i + b].unsqueeze(1)
            m, am = sens.max(dim=1)
            better = m > best[i : i + b]
            best[i : i + b] = torch.where(better, m, best[i : i + b])
            arg[i : i + b] = torch.where(better, am + j, arg[i : i + b])
        return SensitivityResult(best, mean_score(best), argmax=arg)
