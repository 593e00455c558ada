"""Fidelity metrics: Deletion, Insertion (Petsiuk et al. 2018) and muFidelity (Bhatt et al. 2020).

Notation (EVA paper, App. F): ``f(x)`` is the score of the explained class -- the softmax
probability by default (``activation="softmax"``), the logit with ``activation=None``;
``x_[x_u = x0]`` is ``x`` with the variables ``u`` set to the baseline state ``x0``
(``"uniform"``: ``x0 ~ U(0, 1)`` per entry, drawn once per metric from its seed, as the paper
following Hsieh et al.). Variables are pixels / features or groups (``groups=grid(12)`` is the
paper's setting); ``g(x)`` the explanation aggregated per variable.

* Deletion: with ``u_k`` the ``n_k`` most important variables,
  ``Deletion^(k) = f(x_[x_{u_k} = x0])`` and the score is the area under that curve over the
  fraction ``n_k / V`` of variables removed (trapezoid rule). Lower is better.
* Insertion: ``Insertion^(k) = f(x_[x_{not u_k} = x0])`` (start from the baseline and put the
  most important variables back); area under the curve, higher is better.
* muFidelity: over ``S`` random subsets ``u`` of ``|u| = round(subset_fraction * V)``
  variables, ``Corr_u( sum_{i in u} g(x)_i , f(x) - f(x_[x_u = x0]) )`` (Pearson). Higher is
  better; in ``[-1, 1]``.

Everything is batched: all (sample, step) or (sample, subset) pairs go through the model
``batch_size`` at a time.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from evax.core.baselines import BaselineLike, make_baseline
from evax.core.targets import TargetLike
from evax.core.variables import GroupsLike
from evax.errors import InvalidInputError
from evax.metrics.base import MetricResult, VariableMetric, mean_score, trapezoid_auc


@dataclass(frozen=True, eq=False)
class CurveResult(MetricResult):
    """Detailed result of :class:`Deletion` / :class:`Insertion` for ``N`` inputs.

    Attributes:
        scores: ``(N,)`` area under each curve (the default return).
        mean: mean of ``scores``.
        curves: ``(N, K)`` score of the explained class after each step.
        fractions: ``(K,)`` fraction of the variables removed (Deletion) or inserted
            (Insertion) at each step, the curves' abscissa.
        counts: ``(K,)`` the number of variables behind each fraction.
    """

    curves: torch.Tensor
    fractions: torch.Tensor
    counts: torch.Tensor


@dataclass(frozen=True, eq=False)
class MuFidelityResult(MetricResult):
    """Detailed result of :class:`MuFidelity` for ``N`` inputs and ``S`` subsets of ``V`` variables.

    Attributes:
        scores: ``(N,)`` Pearson correlations (the default return); mean: their mean.
        attribution_sums: ``(N, S)`` explanation summed over each subset.
        drops: ``(N, S)`` ``f(x) - f(x_[x_u = x0])`` for each subset.
        subsets: ``(N, S, V)`` bool, the subsets.
        degenerate: ``(N,)`` bool, undefined correlations (reported as 0).
    """

    attribution_sums: torch.Tensor
    drops: torch.Tensor
    subsets: torch.Tensor
    degenerate: torch.Tensor


class _CausalFidelity(VariableMetric):
    """Deletion / Insertion; see the module docstring.

    Args:
        model, inputs, targets, activation, groups, reduce, group_reduce, batch_size, seed,
        progress: see :class:`evax.metrics.base.VariableMetric`.
        baseline: ``"uniform"`` (default), a number, a tensor or a callable (see
            :func:`evax.core.baselines.make_baseline`).
        steps: number of removal steps: the curve has ``steps + 1`` points at
            ``n_k = round(k * V / steps)`` variables, ``k = 0..steps``. ``None`` (default): one
            variable per step (``steps = V``), the exact curve.
        max_fraction: stop after this fraction of the variables (default 1: all of them);
            the area is then taken over ``[0, max_fraction]``.
        tie_break: ``"random"`` (default): variables with equal scores are ranked in a random
            order drawn once from the seed, so a flat explanation gets no raster-order bias;
            ``"index"``: by index.

    ``metric(explanations)`` -> ``(N,)`` areas under the curves; ``metric(explanations,
    detailed=True)`` -> :class:`CurveResult` (``scores``, ``mean``, ``curves`` ``(N, K)``,
    ``fractions`` ``(K,)``, ``counts`` ``(K,)``). ``explanations``: ``(N, H, W)``,
    ``(N, C, H, W)``, ``(N, D)``, group scores ``(N, G)``, or an explainer.
    """

    _insertion = False

    def __init__(
        self,
        model: nn.Module,
        inputs: torch.Tensor,
        targets: TargetLike = None,
        baseline: BaselineLike = "uniform",
        activation: str | None | Callable[[torch.Tensor], torch.Tensor] = "softmax",
        groups: GroupsLike = None,
        steps: int | None = None,
        max_fraction: float = 1.0,
        tie_break: str = "random",
        reduce: str = "sum",
        group_reduce: str = "auto",
        batch_size: int = 256,
        seed: int = 0,
        progress: bool | None = None,
    ) -> None:
        super().__init__(model, inputs, targets, activation, groups, reduce, group_reduce, batch_size, seed, progress)
        v = self.n_vars
        if not 0.0 < float(max_fraction) <= 1.0:
            raise InvalidInputError(f"max_fraction must be in (0, 1], got {max_fraction!r}")
        if steps is None:
            steps = max(1, round(v * max_fraction))
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
            raise InvalidInputError(f"steps must be a positive int or None, got {steps!r}")
        if tie_break not in ("random", "index"):
            raise InvalidInputError(f"tie_break must be 'random' or 'index', got {tie_break!r}")
        self.baseline = make_baseline(baseline, self.inputs, self.generator)
        counts = torch.round(torch.arange(steps + 1, dtype=torch.float64) * (v * max_fraction) / steps).long()
        self.counts = counts.to(self.inputs.device)  # (K,) variables removed at each step
        self.fractions = (counts.double() / v).to(self.inputs.dtype)
        self.tie_break = (
            torch.argsort(torch.rand(self.inputs.shape[0], v, generator=self.stream(1)), dim=1).to(self.inputs.device)
            if tie_break == "random"
            else None
        )

    def evaluate(self, var_scores: torch.Tensor) -> CurveResult:
        rank = self.ranking(var_scores, self.tie_break)  # (N, V)
        n, k = rank.shape[0], self.counts.shape[0]

        def item(j: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            sample, step = j // k, j % k
            top = rank[sample] < self.counts[step].unsqueeze(1)  # (B, V) the n_k most important
            return sample, (~top if self._insertion else top)

        name = "insertion" if self._insertion else "deletion"
        curves = self.perturbed_scores(n * k, item, self.baseline, desc=name).view(n, k)
        auc = trapezoid_auc(curves, self.fractions)
        return CurveResult(auc, mean_score(auc), curves, self.fractions, self.counts)


class Deletion(_CausalFidelity):
    __doc__ = (
        "Deletion metric (lower is better): area under ``f(x_[x_{u_k} = x0])`` as the most important\n"
        "variables are set to the baseline.\n\n" + (_CausalFidelity.__doc__ or "")
    )
    _insertion = False


class Insertion(_CausalFidelity):
    __doc__ = (
        "Insertion metric (higher is better): area under ``f(x_[x_{not u_k} = x0])`` as the most\n"
        "important variables are put back into the baseline.\n\n" + (_CausalFidelity.__doc__ or "")
    )
    _insertion = True


class MuFidelity(VariableMetric):
    """muFidelity (Bhatt et al. 2020; EVA paper App. F), higher is better.

    For ``S`` random subsets ``u`` of ``round(subset_fraction * V)`` variables (drawn once per
    sample from the seed)::

        muFidelity(x) = Corr_u( sum_{i in u} g(x)_i , f(x) - f(x_[x_u = x0]) )

    (Pearson correlation over the subsets). A constant explanation, or a model whose score does
    not move, has an undefined correlation: it is reported as 0 and flagged in the detailed
    result's ``degenerate``.

    Args:
        baseline: as :class:`Deletion` (default ``"uniform"``).
        subset_fraction: ``|u| / V`` (the paper: 0.2).
        n_subsets: ``S`` (default 200, as Xplique).
        other args: see :class:`evax.metrics.base.VariableMetric`.

    ``metric(explanations)`` -> ``(N,)`` correlations; ``metric(explanations, detailed=True)``
    -> :class:`MuFidelityResult` (``scores``, ``mean``, ``attribution_sums`` ``(N, S)``,
    ``drops`` ``(N, S)``, ``subsets`` ``(N, S, V)`` bool, ``degenerate`` ``(N,)`` bool).
    """

    def __init__(
        self,
        model: nn.Module,
        inputs: torch.Tensor,
        targets: TargetLike = None,
        baseline: BaselineLike = "uniform",
        activation: str | None | Callable[[torch.Tensor], torch.Tensor] = "softmax",
        groups: GroupsLike = None,
        subset_fraction: float = 0.2,
        n_subsets: int = 200,
        reduce: str = "sum",
        group_reduce: str = "auto",
        batch_size: int = 256,
        seed: int = 0,
        progress: bool | None = None,
    ) -> None:
        super().__init__(model, inputs, targets, activation, groups, reduce, group_reduce, batch_size, seed, progress)
        if not 0.0 < float(subset_fraction) <= 1.0:
            raise InvalidInputError(f"subset_fraction must be in (0, 1], got {subset_fraction!r}")
        if isinstance(n_subsets, bool) or not isinstance(n_subsets, int) or n_subsets < 2:
            raise InvalidInputError(f"n_subsets must be an int >= 2, got {n_subsets!r}")
        self.baseline = make_baseline(baseline, self.inputs, self.generator)
        n, v = self.inputs.shape[0], self.n_vars
        size = max(1, round(subset_fraction * v))
        # S subsets of `size` variables per sample: the `size` smallest of V uniform keys
        keys = torch.rand(n, n_subsets, v, generator=self.stream(1))
        idx = torch.topk(keys, size, dim=2, largest=False).indices
        subsets = torch.zeros(n, n_subsets, v, dtype=torch.bool).scatter_(2, idx, True)
        self.subsets = subsets.to(self.inputs.device)
        self.subset_size = size
        self.n_subsets = n_subsets
        self._drops: torch.Tensor | None = None

    def drops(self) -> torch.Tensor:
        """``f(x) - f(x_[x_u = x0])`` for every subset: ``(N, S)`` (computed once, cached)."""
        if self._drops is None:
            n, s = self.subsets.shape[:2]
            full = self.perturbed_scores(
                n, lambda j: (j, torch.zeros(j.shape[0], self.n_vars, dtype=torch.bool, device=j.device)),
                self.baseline, desc="mufidelity f(x)",
            )
            removed = self.perturbed_scores(
                n * s, lambda j: (j // s, self.subsets[j // s, j % s]), self.baseline, desc="mufidelity"
            ).view(n, s)
            self._drops = full.unsqueeze(1) - removed
        return self._drops

    def evaluate(self, var_scores: torch.Tensor) -> MuFidelityResult:
        drops = self.drops().to(var_scores.dtype)
        sums = torch.einsum("nsv,nv->ns", self.subsets.to(var_scores.dtype), var_scores)
        a = sums - sums.mean(dim=1, keepdim=True)
        b = drops - drops.mean(dim=1, keepdim=True)
        denom = a.norm(dim=1) * b.norm(dim=1)
        # relative threshold: a spread at the level of rounding errors is no spread
        scale_a = sums.abs().amax(dim=1).clamp_min(1e-30)
        scale_b = drops.abs().amax(dim=1).clamp_min(1e-30)
        tiny = torch.finfo(var_scores.dtype).eps * 8
        degenerate = (a.abs().amax(dim=1) <= tiny * scale_a) | (b.abs().amax(dim=1) <= tiny * scale_b)
        corr = torch.where(degenerate, torch.zeros_like(denom), (a * b).sum(dim=1) / denom.clamp_min(1e-30))
        return MuFidelityResult(corr, mean_score(corr), sums, drops, self.subsets, degenerate)
