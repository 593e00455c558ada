"""Model-randomization sanity check (Adebayo et al. 2018), as in Yeh et al. 2019, Sec. 5 and
Table 2: re-initialise the last (or a given) layer of the network, recompute the explanation and
report the Spearman rank correlation between the explanations of the original and of the
randomised model, with and without absolute values. An explanation faithful to the model
should change: a *low* correlation passes the check.

The layer is re-initialised *in place* on the very model object the explainer holds (so any
explainer works -- evax, Captum, a closure), from the metric's own ``torch.Generator``
(PyTorch's default ``nn.Linear`` / ``nn.Conv*`` initialisation: ``U(-1/sqrt(fan_in),
1/sqrt(fan_in))`` for weight and bias; nothing global is seeded), and the original parameters
are restored afterwards, even on error.

A metric of explainers: ``RandomizationSanity(model, inputs, targets=None, layer="last",
seed=0)(explainer)`` -> the per-sample Spearman correlation ``(N,)`` of the signed
explanations; ``detailed=True`` -> :class:`SanityResult` (with the correlation of the absolute
values and both explanations).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from evax.core.explainers import Explainer
from evax.core.random import check_seed, generator
from evax.core.targets import TargetLike
from evax.errors import InvalidInputError
from evax.metrics.base import ExplainerMetric, MetricResult, mean_score

__all__ = ["RandomizationSanity", "SanityResult", "spearman"]


def spearman(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-row Spearman rank correlation of ``a`` and ``b`` ``(N, ...)`` -> ``(N,)`` float64.

    Ties get their average rank (as ``scipy.stats.spearmanr``); a row that is constant in
    either argument has no defined correlation and gives NaN.
    """
    if a.shape != b.shape:
        raise InvalidInputError(
            f"cannot correlate explanations of shapes {tuple(a.shape)} and {tuple(b.shape)}"
        )
    from scipy.stats import rankdata  # imported here: scipy.stats costs ~1 s at `import evax`

    ra = rankdata(a.detach().flatten(1).cpu().to(torch.float64).numpy(), axis=1)
    rb = rankdata(b.detach().flatten(1).cpu().to(torch.float64).numpy(), axis=1)
    ra = ra - ra.mean(axis=1, keepdims=True)
    rb = rb - rb.mean(axis=1, keepdims=True)
    den = np.sqrt((ra * ra).sum(axis=1) * (rb * rb).sum(axis=1))
    with np.errstate(invalid="ignore", divide="ignore"):
        rho = np.where(den > 0, (ra * rb).sum(axis=1) / np.where(den > 0, den, 1.0), np.nan)
    return torch.from_numpy(rho)


@dataclass(frozen=True, eq=False)
class SanityResult(MetricResult):
    """Detailed result of :class:`RandomizationSanity` for ``N`` inputs.

    Attributes:
        scores: ``(N,)`` float64 rank correlation of the signed explanations (the default
            return; NaN where an explanation is constant); mean: their mean (NaN left out).
        scores_abs: ``(N,)`` rank correlation of their absolute values; mean_abs: its mean.
        original: the explanations of the original model.
        randomized: the explanations of the randomised model.
        layers: qualified names of the re-initialised layers.
    """

    scores_abs: torch.Tensor
    mean_abs: torch.Tensor
    original: torch.Tensor
    randomized: torch.Tensor
    layers: list[str]


class RandomizationSanity(ExplainerMetric):
    """Randomise a layer and compare explanations (Table 2); a *low* correlation passes.

    Args:
        model: the network the explainer explains (the explainer must hold this very object).
        inputs: ``(N, *S)``, copied; ``targets``: ``(N,)`` or ``None`` (the original model's
            predictions; the same classes are explained after the randomisation).
        layer: ``"last"`` (the last module with a ``weight``, in registration order: the final
            fully connected layer of a classifier), a qualified module name, a module, or a
            list of those (randomised together).
        seed: seed of the re-initialisation.

    ``metric(explainer)`` -> ``(N,)`` Spearman correlations of the signed explanations before
    and after; ``detailed=True`` -> :class:`SanityResult`.
    """

    def __init__(
        self, model: nn.Module, inputs: torch.Tensor, targets: TargetLike = None, layer: Any = "last", seed: int = 0
    ) -> None:
        super().__init__(model, inputs, targets)
        check_seed(seed)
        self.seed = seed
        self.layers = self._resolve_layers(layer)
    def _resolve_layers(self, layer: Any) -> list[tuple[str, nn.Module]]:
        named = dict(self.model.named_modules())
        items = layer if isinstance(layer, (list, tuple)) else [layer]
        if not items:
            raise InvalidInputError("layer must name at least one layer")
        out = []
        for item in items:
            if item == "last":
                cands = [
                    (n, m) for n, m in named.items() if isinstance(getattr(m, "weight", None), nn.Parameter)
                ]
                if not cands:
                    raise InvalidInputError("the model has no layer with a weight to randomise")
                out.append(cands[-1])
            elif isinstance(item, str):
                if item not in named:
                    raise InvalidInputError(
                        f"no layer named {item!r}; layers with weights: "
                        f"{[n for n, m in named.items() if isinstance(getattr(m, 'weight', None), nn.Parameter)]}"
                    )
                out.append((item, named[item]))
            elif isinstance(item, nn.Module):
                names = [n for n, m in named.items() if m is item]
                if not names:
                    raise InvalidInputError("the given layer module is not part of the model")
                out.append((names[0], item))
            else:
                raise InvalidInputError(f"layer must be 'last', a name or a module, got {item!r}")
        for name, module in out:
            if not any(True for _ in module.parameters(recurse=False)):
                raise InvalidInputError(f"layer {name!r} has no parameters to randomise")
        return out

    def _randomize(self, generator: torch.Generator) -> None:
        """PyTorch's default init from ``generator``: ``U(-1/sqrt(fan_in), 1/sqrt(fan_in))``."""
        for _, module in self.layers:
            weight = getattr(module, "weight", None)
            fan_in = weight[0].numel() if isinstance(weight, torch.Tensor) and weight.ndim >= 2 else None
            for p in module.parameters(recurse=False):
                fi = fan_in if fan_in is not None else max(1, p.numel())
                bound = 1.0 / fi**0.5
                new = (torch.rand(p.shape, generator=generator, dtype=torch.float64) * 2 - 1) * bound
                with torch.no_grad():
                    p.copy_(new.to(p.dtype))

    def compute(self, obj: Explainer) -> SanityResult:
        self.check_explainer(obj)
        x, targets = self.inputs, self.targets
        original = self.run_explainer(obj, x, targets)
        saved = {
            (name, pname): p.detach().clone()
            for name, module in self.layers
            for pname, p in module.named_parameters(recurse=False)
        }
        try:
            self._randomize(generator(self.seed))
            randomized = self.run_explainer(obj, x, targets)
        finally:
            with torch.no_grad():
                for name, module in self.layers:
                    for pname, p in module.named_parameters(recurse=False):
                        p.copy_(saved[(name, pname)])
        if randomized.shape != original.shape:
            raise InvalidInputError(
                f"the explainer returned {tuple(randomized.shape)} after randomisation, {tuple(original.shape)} before"
            )
        for e in (original, randomized):
            if not torch.isfinite(e).all():
                raise InvalidInputError("the explainer returned NaN or inf")
        rho = spearman(original, randomized)
        rho_abs = spearman(original.abs(), randomized.abs())
        return SanityResult(
            rho,
            mean_score(rho),
            scores_abs=rho_abs,
            mean_abs=mean_score(rho_abs),
            original=original,
            randomized=randomized,
            layers=[n for n, _ in self.layers],
        )
