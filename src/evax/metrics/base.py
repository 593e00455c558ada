"""The metric contract: metrics of explanations and metrics of explainers (Xplique's split).

Every metric is configured once with the model, the inputs, their targets and its
hyper-parameters -- ``Metric(model, inputs, targets=None, **hyper)`` -- and then called:

* a **metric of explanations** (:class:`ExplanationMetric`: Deletion, Insertion, MuFidelity,
  RobustnessSr, Infidelity) scores given explanations of the inputs::

      metric = Deletion(model, x, y, baseline="uniform", groups=evax.groups.grid(12))
      scores = metric(explanations)                  # (N,) per-sample scores
      result = metric(explanations, detailed=True)   # CurveResult(scores, mean, curves, ...)

  ``explanations`` is a tensor (its accepted shapes are the metric's: ``(N, H, W)``,
  ``(N, C, H, W)``, ``(N, D)``...) or an explainer, which is then called once on all the
  inputs and their targets;
* a **metric of explainers** (:class:`ExplainerMetric`: MaxSensitivity, Tightness,
  RandomizationSanity) needs to run the explainer itself (on perturbed inputs, on a
  randomised model, over a ball)::

      scores = MaxSensitivity(model, x, y, radius=0.2)(explainer)      # (N,)

An *explainer* is anything :func:`evax.core.explainers.call_explainer` calls: an object with
``.attribute(inputs, target)`` (evax methods, ``captum.attr.Saliency(model)``) or a callable
``explain(inputs, target) -> Tensor`` (``captum.attr.Saliency(model).attribute``, a lambda).

Both kinds return per-sample scores ``(N,)`` by default and, with ``detailed=True``, one
frozen result dataclass per metric family: :class:`MetricResult` (``scores``, ``mean``) or a
subclass adding the family's details (curves, ``beta``...). ``result.scores`` is exactly what
the default call returns and ``result.mean`` its mean over the samples. Targets are resolved
once, at construction (``None``: the model's predicted class); the inputs are copied, and
everything random is drawn from the metric's own seeded generators, so every explanation or
explainer is scored against the *same* perturbations.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from evax.core.baselines import BaselineLike as BaselineLike
from evax.core.baselines import make_baseline as make_baseline
from evax.core.checks import check_inputs, check_tensor
from evax.core.explainers import Explainer, call_explainer, is_explainer
from evax.core.modes import eval_mode
from evax.core.progress import progress_bar
from evax.core.random import generator
from evax.core.scores import score_function
from evax.core.targets import TargetLike, resolve_target
from evax.core.variables import GroupsLike, Variables, flatten_inputs
from evax.errors import InvalidInputError

__all__ = [
    "ExplainerMetric",
    "ExplanationMetric",
    "Metric",
    "MetricResult",
    "VariableMetric",
    "mean_score",
    "trapezoid_auc",
]


def trapezoid_auc(curves: torch.Tensor, fractions: torch.Tensor) -> torch.Tensor:
    """Area under ``curves`` ``(N, K)`` sampled at ``fractions`` ``(K,)`` (trapezoid rule)."""
    return torch.trapezoid(curves, fractions.to(curves.dtype), dim=1)


def mean_score(scores: torch.Tensor) -> torch.Tensor:
    """Mean of per-sample ``scores`` ``(N,)`` as a 0-d tensor; undefined (NaN) scores -- a
    rank correlation of a constant explanation -- are left out."""
    return torch.nanmean(scores if scores.is_floating_point() else scores.double())


@dataclass(frozen=True, eq=False)
class MetricResult:
    """What ``metric(..., detailed=True)`` returns; metric families subclass it with details.

    Attributes:
        scores: ``(N,)`` per-sample scores, exactly the default return of the metric.
        mean: 0-d tensor, the mean of ``scores`` (NaN scores left out, see :func:`mean_score`).
    """

    scores: torch.Tensor
    mean: torch.Tensor


class Metric(ABC):
    """Root of the metrics: the model, the inputs and their resolved targets.

    Args:
        model: classifier ``(M, *S) -> (M, K)`` logits; put in eval mode while scoring (its
            modes are restored after).
        inputs: ``(N, *S)`` floating-point inputs; copied, never modified.
        targets: explained classes: an int, a sequence or a tensor ``(N,)``; ``None`` = the
            model's predicted classes. Out-of-range classes raise :class:`InvalidInputError`.

    Subclasses implement :meth:`compute` (the :class:`MetricResult` of one explanation or
    explainer); ``metric(obj)`` returns ``compute(obj).scores`` and ``metric(obj,
    detailed=True)`` the whole result.
    """

    def __init__(self, model: nn.Module, inputs: torch.Tensor, targets: TargetLike = None) -> None:
        if not isinstance(model, nn.Module):
            raise InvalidInputError(f"model must be an nn.Module, got {type(model).__name__}")
        check_tensor(inputs)
        if inputs.shape[0] == 0:
            raise InvalidInputError("inputs: an empty batch (N = 0): pass at least one input")
        self.model = model
        self.inputs = inputs.detach().clone()
        self.targets = resolve_target(model, self.inputs, targets)

    @property
    def n_inputs(self) -> int:
        return int(self.inputs.shape[0])

    @abstractmethod
    def compute(self, obj: Any) -> MetricResult:
        """The :class:`MetricResult` of ``obj`` (explanations or an explainer)."""

    def _result(self, result: MetricResult, detailed: bool) -> Any:
        return result if detailed else result.scores

    def __repr__(self) -> str:
        return f"{type(self).__name__}(inputs={tuple(self.inputs.shape)})"


class ExplanationMetric(Metric):
    """A metric of explanations: ``metric(explanations, detailed=False)``.

    ``explanations`` is a tensor of explanations of ``inputs`` or an explainer (called once,
    in eval mode, on all the inputs and their targets).
    """

    def __call__(self, explanations: torch.Tensor | Explainer, detailed: bool = False) -> Any:
        """Per-sample scores ``(N,)``; with ``detailed=True`` the metric's result dataclass."""
        return self._result(self.compute(explanations), detailed)

    def explain(self, explanations: torch.Tensor | Explainer) -> torch.Tensor:
        """``explanations`` as a tensor: itself, or the explainer's output on the inputs."""
        if isinstance(explanations, torch.Tensor):
            return explanations
        if not is_explainer(explanations):
            raise InvalidInputError(
                "explanations must be a tensor or an explainer (an object with .attribute(inputs, target) "
                f"or a callable explain(inputs, target)), got {type(explanations).__name__}"
            )
        with eval_mode(self.model):
            return call_explainer(explanations, self.inputs, self.targets)


class ExplainerMetric(Metric):
    """A metric of explainers: ``metric(explainer, detailed=False)``; the metric runs the
    explainer itself (on perturbed inputs, on a randomised model...)."""

    def __call__(self, explainer: Explainer, detailed: bool = False) -> Any:
        """Per-sample scores ``(N,)``; with ``detailed=True`` the metric's result dataclass."""
        return self._result(self.compute(explainer), detailed)

    @staticmethod
    def check_explainer(explainer: Any) -> None:
        if not is_explainer(explainer):
            raise InvalidInputError(
                "explainer must be an object with .attribute(inputs, target) or a callable "
                f"explain(inputs, target), got {type(explainer).__name__}"
            )

    def run_explainer(self, explainer: Explainer, inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """``explainer(inputs, targets)`` with the model in eval mode (modes restored after)."""
        with eval_mode(self.model):
            return call_explainer(explainer, inputs, targets)


class VariableMetric(ExplanationMetric):
    """Base of the metrics of explanations over *variables* (pixels / features or groups):
    Deletion, Insertion, MuFidelity, RobustnessSr. The explanation is reduced to one score per
    variable, ``(N, V)``, which :meth:`evaluate` turns into the metric's result.

    Args:
        model, inputs, targets: see :class:`Metric`; ``inputs`` are ``(N, C, H, W)`` or ``(N, D)``.
        activation: score of the explained class: ``"softmax"`` (default, App. F), ``None``
            (logit), ``"sigmoid"`` or a callable on the logits.
        groups: variables are pixels (``None``) or groups (see :mod:`evax.core.variables`).
        reduce: channel reduction of ``(N, C, H, W)`` explanations (``"sum"``, ``"abs"``,
            ``"max_abs"``).
        group_reduce: ``"auto"`` (default), ``"sum"`` or ``"mean"`` of the pixel scores inside
            a group (see :class:`evax.core.variables.Variables`: ``"auto"`` takes the mean
            of a map that is constant on every group -- a painted group-level explanation --
            and the sum otherwise).
        batch_size: model inputs per forward pass.
        seed: seed of the metric's own ``torch.Generator`` (nothing global is touched).
        progress: tqdm bar (``None``: only when stderr is a TTY).

    Explanations: ``(N, H, W)``, ``(N, C, H, W)`` (channels reduced with ``reduce``), ``(N, D)``
    for flat inputs, group scores ``(N, G)``, or an explainer.
    """

    def __init__(
        self,
        model: nn.Module,
        inputs: torch.Tensor,
        targets: TargetLike = None,
        activation: str | None | Callable[[torch.Tensor], torch.Tensor] = "softmax",
        groups: GroupsLike = None,
        reduce: str = "sum",
        group_reduce: str = "auto",
        batch_size: int = 256,
        seed: int = 0,
        progress: bool | None = None,
    ) -> None:
        check_inputs(inputs)
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise InvalidInputError(f"batch_size must be a positive int, got {batch_size!r}")
        super().__init__(model, inputs, targets)
        self.variables = Variables(self.inputs, groups, reduce, group_reduce)
        self.score = score_function(activation)
        self.batch_size = batch_size
        self.seed = seed
        self.generator = self.stream(0)
        self.progress = progress

    def stream(self, k: int) -> torch.Generator:
        """An independent generator for the ``k``-th random object of the metric (baseline: 0,
        subsets / tie-breaks: 1...), so each object's draws for sample ``i`` do not depend on
        how many other objects were drawn before: the stream ``"metric/k"`` of ``seed`` (see
        :mod:`evax.core.random`)."""
        return generator(int(self.seed), f"metric/{k}")

    @property
    def n_vars(self) -> int:
        return self.variables.n_vars

    def variable_scores(self, explanations: torch.Tensor | Explainer) -> torch.Tensor:
        """``(N, V)`` scores of the variables from a tensor or an explainer."""
        return self.variables.scores(self.explain(explanations))

    def ranking(self, var_scores: torch.Tensor, tie_break: torch.Tensor | None = None) -> torch.Tensor:
        """``rank (N, V)``: position of each variable when sorted by decreasing score (0 = most
        important). Ties are broken by ``tie_break`` (a random permutation per sample drawn at
        construction, so no raster-order bias), else by index."""
        if tie_break is None:
            order = torch.argsort(var_scores, dim=1, descending=True, stable=True)
        else:
            shuffled = var_scores.gather(1, tie_break)
            order = tie_break.gather(1, torch.argsort(shuffled, dim=1, descending=True, stable=True))
        rank = torch.empty_like(order)
        rank.scatter_(1, order, torch.arange(order.shape[1], device=order.device).expand_as(order))
        return rank

    @torch.no_grad()
    def perturbed_scores(
        self,
        n_items: int,
        item: Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]],
        baseline: torch.Tensor,
        desc: str = "",
    ) -> torch.Tensor:
        """Scores of ``n_items`` perturbed inputs, ``batch_size`` at a time.

        ``item(j) -> (sample (B,), replaced (B, V) bool)`` describes items ``j`` (a chunk of
        ``arange(n_items)``): input ``inputs[sample]`` with the ``replaced`` variables set to
        ``baseline[sample]``. Returns ``(n_items,)`` scores of the samples' targets.
        """
        x = flatten_inputs(self.inputs)
        x0 = flatten_inputs(baseline)
        out = torch.empty(n_items, dtype=self.inputs.dtype, device=self.inputs.device)
        chunks = torch.arange(n_items, device=self.inputs.device).split(self.batch_size)
        with eval_mode(self.model):
            for j in progress_bar(chunks, self.progress, desc=desc, leave=False):
                sample, replaced = item(j)
                mask = self.variables.pixel_mask(replaced, sample)  # (B, 1, P)
                batch = torch.where(mask, x0[sample], x[sample]).reshape(-1, *self.inputs.shape[1:])
                out[j] = self.score(self.model(batch), self.targets[sample]).to(out.dtype)
        return out

    def compute(self, obj: torch.Tensor | Explainer) -> MetricResult:
        return self.evaluate(self.variable_scores(obj))

    @abstractmethod
    def evaluate(self, var_scores: torch.Tensor) -> MetricResult:
        """The result from the ``(N, V)`` variable scores."""
