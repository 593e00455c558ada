"""Common machinery of the explanation metrics (Xplique's shape: configured once, then called).

A metric is built once with the model, the inputs ``(N, C, H, W)`` or ``(N, D)``, their
targets ``(N,)`` and its hyper-parameters -- everything random (baselines, subsets) is drawn
there from a seeded ``torch.Generator``, so every explanation is scored against the *same*
perturbations and the result depends neither on the batch size nor on the global RNG. It is
then called with explanations::

    metric = Deletion(model, x, y, baseline="uniform", groups=evax.groups.grid(12))
    scores = metric(explanations)                  # (N,) per-sample scores
    out = metric(explanations, detailed=True)      # dict: "scores", "mean", curves...

``explanations`` is a tensor -- ``(N, H, W)``, ``(N, C, H, W)`` (channels reduced with
``reduce``), ``(N, D)`` for flat inputs, or group scores ``(N, G)`` -- or any callable
``explain(inputs, target) -> Tensor`` (an evax method, ``captum.attr.Saliency(model).attribute``...),
which is called once on all the inputs.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from evax.core.baselines import BaselineLike as BaselineLike
from evax.core.baselines import make_baseline as make_baseline
from evax.core.checks import check_inputs
from evax.core.explainers import Explainer, call_explainer
from evax.core.modes import eval_mode
from evax.core.progress import progress_bar
from evax.core.random import generator
from evax.core.scores import score_function
from evax.core.targets import TargetLike, resolve_target
from evax.core.variables import GroupsLike, Variables, flatten_inputs
from evax.errors import InvalidInputError


def trapezoid_auc(curves: torch.Tensor, fractions: torch.Tensor) -> torch.Tensor:
    """Area under ``curves`` ``(N, K)`` sampled at ``fractions`` ``(K,)`` (trapezoid rule)."""
    return torch.trapezoid(curves, fractions.to(curves.dtype), dim=1)


class Metric:
    """Base class of the metrics: inputs, targets, variables, model scoring.

    Args:
        model: classifier ``(M, ...) -> (M, K)`` logits; put in eval mode while scoring.
        inputs: ``(N, C, H, W)`` or ``(N, D)``; never modified.
        targets: explained classes ``(N,)`` (int, sequence or tensor); ``None`` = predicted.
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
        self.model = model
        self.inputs = inputs.detach().clone()
        self.targets = resolve_target(model, self.inputs, targets)
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
        """``(N, V)`` scores of the variables from a tensor or an explainer callable."""
        if callable(explanations) and not isinstance(explanations, torch.Tensor):
            with eval_mode(self.model):
                explanations = call_explainer(explanations, self.inputs, self.targets)
        return self.variables.scores(explanations)

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

    def __call__(self, explanations: torch.Tensor | Explainer, detailed: bool = False) -> Any:
        """Per-sample scores ``(N,)``; with ``detailed=True`` a dict with ``"scores"``, ``"mean"``
        and the metric's curves."""
        out = self.evaluate(self.variable_scores(explanations))
        out["mean"] = out["scores"].mean()
        return out if detailed else out["scores"]

    def evaluate(self, var_scores: torch.Tensor) -> dict[str, torch.Tensor]:  # pragma: no cover
        raise NotImplementedError
