"""Noise distributions ``mu_I`` of the infidelity measure (Yeh et al. 2019, Def. 2.1).

Not to be confused with the perturbation *sets* of :mod:`evax.perturbation` (``Ball``,
``Box``: the regions a verified bound holds on): these are *distributions* the metrics (and
the infidelity-optimal explanations) sample from. A noise distribution is a small object that samples, for inputs ``x`` of shape ``(N, *S)``, ``n``
pairs ``(I, x~)`` per input with a caller-supplied ``torch.Generator``:

* ``I`` -- what an explanation ``Phi`` is dotted with in ``I^T Phi`` (Eq. 1), shape
  ``(N, n, *S_I)``;
* ``x~`` -- the perturbed input fed to the model, shape ``(N, n, *S)``.

For every *additive* perturbation ``x~ = x - I`` exactly (``S_I = S``). For the *removal*
perturbations (:class:`SquareRemoval`, :class:`SubsetRemoval`, :class:`DifferenceToBaseline`)
``x~ = x[x_R = x0_R]`` sets a random set ``R`` of pixels to the baseline ``x0``, so
``x - x~ = m (x - x0)`` with the 0/1 mask ``m`` of ``R``. Two forms of ``I`` are offered:

* ``indicator=False`` (*local* explanations): ``I = m (x - x0)``, so ``x~ = x - I``;
* ``indicator=True`` (*global* explanations, Sec. 2.5 and the reference evaluation's
  ``binary_I``): ``I = m``. A global explanation is ``Phi_g = Phi_l (x - x0)``, hence
  ``m^T Phi_g = (m (x - x0))^T Phi_l``: both forms measure the same thing, each on the
  explanation of its kind. For images the mask is shared by the channels, so ``S_I = (1, H, W)``
  and it broadcasts over a ``(C, H, W)`` explanation (i.e. it scores ``sum_c Phi_g[c]``).

============================  ===========================================  ===================
class                         ``I``                                        ``x~``
============================  ===========================================  ===================
:class:`GaussianNoise`        ``eps ~ N(0, sigma^2 Id)``                   ``x - eps``
:class:`UniformNoise`         ``eps ~ U[-r, r]^d`` (the L-inf ball)        ``x - eps``
:class:`NoisyBaseline`        ``x - (x0 + eps)``, ``eps ~ N(0, sigma^2)``  ``x0 + eps``
:class:`DifferenceToBaseline` ``x - x0`` (deterministic, one item)         ``x0``
:class:`SquareRemoval`        square patch of side in ``sizes``            patch set to ``x0``
:class:`SubsetRemoval`        random subset (Shapley kernel, Prop. 2.5,    subset set to
                              or Bernoulli(p)) of pixels / groups          ``x0``
============================  ===========================================  ===================

The additive ones take ``clip=(lo, hi)``: ``x~`` is clamped to the domain and ``I`` is
redefined as ``x - x~`` so that the identity ``x~ = x - I`` keeps holding (the reference
implementation clips its noisy baseline to ``[0, 1]`` this way).

Perturbations with a finite support can be *enumerated* (``exhaustive = True``): ``size(x)``
items, ``sample(x, n, offset=k)`` returns items ``k .. k + n - 1`` and needs no generator.
:class:`SquareRemoval` is random by default (uniform over all its patches) and enumerates all
the patches with ``exhaustive=True`` (the reference evaluation of global explanations).

Nothing here touches torch's global RNG; every draw uses the generator passed down.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch

from evax import groups as groups_mod
from evax.core.baselines import check_baseline, make_baseline
from evax.core.checks import check_clip, check_positive_float, check_positive_int, check_tensor
from evax.errors import InvalidInputError

BaselineSpec = str | float | int | torch.Tensor | Callable[[torch.Tensor], torch.Tensor]

__all__ = [
    "DifferenceToBaseline",
    "GaussianNoise",
    "NoiseDistribution",
    "NoisyBaseline",
    "ShapleyKernel",
    "SquareRemoval",
    "SubsetRemoval",
    "UniformNoise",
]


# --------------------------------------------------------------------------- base class


class NoiseDistribution(ABC):
    """A distribution ``mu_I`` of perturbations (Def. 2.1). See the module docstring.

    Subclasses implement :meth:`_sample`; :meth:`sample` validates its arguments and results.

    Attributes:
        exhaustive: the support is finite and :meth:`sample` enumerates it (``offset``).
        indicator: ``I`` is a 0/1 mask shared by the channels (the global-explanation form).
    """

    exhaustive: bool = False
    indicator: bool = False
    name: str = "perturbation"

    def size(self, inputs: torch.Tensor) -> int | None:
        """Number of items of an exhaustive perturbation for these inputs; ``None`` if random."""
        return None

    def baseline_of(self, inputs: torch.Tensor) -> torch.Tensor | None:
        """The baseline ``x0`` ``(N, *S)`` the perturbation removes towards, or ``None``."""
        return None

    def perturbation_shape(self, inputs: torch.Tensor) -> tuple[int, ...]:
        """``S_I``: ``(1, H, W)`` for indicator masks of images, else the input's ``S``."""
        if self.indicator and inputs.ndim == 4:
            return (1, *inputs.shape[2:])
        return tuple(inputs.shape[1:])

    def sample(
        self,
        inputs: torch.Tensor,
        n: int,
        generator: torch.Generator | None = None,
        offset: int = 0,
        shared: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Draw ``n`` perturbations per input.

        Args:
            inputs: ``(N, *S)``, never modified.
            n: perturbations per input.
            generator: the source of randomness (required unless ``exhaustive``).
            offset: first item of the enumeration (exhaustive perturbations only).
            shared: draw the randomness once, shape ``(1, n, ...)``, and apply item ``j`` (the
                same noise ``eps_j`` / mask ``m_j``) to every input (common random numbers):
                what an input gets then depends neither on ``N`` nor on the other inputs.

        Returns:
            ``(I, x~)`` of shapes ``(N, n, *S_I)`` and ``(N, n, *S)``.
        """
        check_tensor(inputs)
        check_positive_int(n, "n")
        if self.exhaustive:
            total = self.size(inputs)
            assert total is not None
            if isinstance(offset, bool) or not isinstance(offset, int) or offset < 0 or offset + n > total:
                raise InvalidInputError(
                    f"{self.name} enumerates {total} items: offset={offset!r}, n={n} is out of range"
                )
        elif generator is None:
            raise InvalidInputError(f"{self.name} is random: pass a torch.Generator")
        rows = 1 if shared else int(inputs.shape[0])
        pert, perturbed = self._sample(inputs.detach(), n, generator, offset, rows)
        n_in = inputs.shape[0]
        if pert.shape != (n_in, n, *self.perturbation_shape(inputs)) or perturbed.shape != (
            n_in,
            n,
            *inputs.shape[1:],
        ):  # pragma: no cover - guards subclasses
            raise InvalidInputError(
                f"{self.name} returned I {tuple(pert.shape)} and x~ {tuple(perturbed.shape)} for inputs "
                f"{tuple(inputs.shape)} and n={n}"
            )
        return pert, perturbed

    @abstractmethod
    def _sample(
        self, inputs: torch.Tensor, n: int, generator: torch.Generator | None, offset: int, rows: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(I, x~)`` as :meth:`sample`; random draws have ``rows`` rows (``N``, or 1 when shared)."""

    def __repr__(self) -> str:
        fields = ", ".join(f"{k}={v!r}" for k, v in self._repr_fields().items())
        return f"{type(self).__name__}({fields})"

    def _repr_fields(self) -> dict[str, Any]:
        return {}


def _clip_pair(
    inputs: torch.Tensor, perturbed: torch.Tensor, clip: tuple[float, float] | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(I, x~)`` with ``x~`` clamped to ``clip`` and ``I = x - x~``."""
    if clip is not None:
        perturbed = perturbed.clamp(clip[0], clip[1])
    return inputs.unsqueeze(1) - perturbed, perturbed


# --------------------------------------------------------------------------- additive noise


class GaussianNoise(NoiseDistribution):
    """``I ~ N(0, sigma^2 Id)``, ``x~ = x - I`` (Prop. 2.3 with ``sigma -> 0`` gives the gradient).

    Args:
        sigma: standard deviation (> 0).
        clip: optional domain ``(lo, hi)`` for ``x~`` (then ``I = x - clamp(x - eps)``).
    """

    name = "GaussianNoise"

    def __init__(self, sigma: float = 0.2, clip: tuple[float, float] | None = None) -> None:
        self.sigma = check_positive_float(sigma, "sigma")
        self.clip = check_clip(clip)

    def _repr_fields(self) -> dict[str, Any]:
        return {"sigma": self.sigma, "clip": self.clip}

    def _sample(self, inputs, n, generator, offset, rows):  # type: ignore[no-untyped-def]
        shape = (rows, n, *inputs.shape[1:])
        eps = torch.randn(shape, generator=generator, device=inputs.device, dtype=inputs.dtype) * self.sigma
        if self.clip is None:
            return eps.expand(inputs.shape[0], *shape[1:]), inputs.unsqueeze(1) - eps
        return _clip_pair(inputs, inputs.unsqueeze(1) - eps, self.clip)


class UniformNoise(NoiseDistribution):
    """``I ~ U[-radius, radius]^d`` (uniform in the L-inf ball), ``x~ = x - I``.

    The sampler of :class:`~evax.metrics.MaxSensitivity` (Def. 3.1, Monte Carlo in the ball,
    as the reference code and Captum's ``sensitivity_max``) and of uniform-kernel smoothing.
    """

    name = "UniformNoise"

    def __init__(self, radius: float = 0.2, clip: tuple[float, float] | None = None) -> None:
        self.radius = check_positive_float(radius, "radius")
        self.clip = check_clip(clip)

    def _repr_fields(self) -> dict[str, Any]:
        return {"radius": self.radius, "clip": self.clip}

    def _sample(self, inputs, n, generator, offset, rows):  # type: ignore[no-untyped-def]
        shape = (rows, n, *inputs.shape[1:])
        u = torch.rand(shape, generator=generator, device=inputs.device, dtype=inputs.dtype)
        eps = (2 * u - 1) * self.radius
        if self.clip is None:
            return eps.expand(inputs.shape[0], *shape[1:]), inputs.unsqueeze(1) - eps
        return _clip_pair(inputs, inputs.unsqueeze(1) - eps, self.clip)


class NoisyBaseline(NoiseDistribution):
    """Difference to a noisy baseline (Sec. 2.1 and 2.4): ``I = x - (x0 + eps)``,
    ``eps ~ N(0, sigma^2 Id)``, ``x~ = x0 + eps``.

    The reference evaluation of *local* explanations uses ``sigma = 0.2``, ``x0 = 0`` and clips
    ``x~`` to the pixel domain ``[0, 1]`` (``clip=(0, 1)``).

    Args:
        sigma: noise standard deviation (> 0).
        baseline: ``x0`` -- a number, a tensor broadcastable to the inputs or a callable.
        clip: optional domain ``(lo, hi)`` of ``x~``.
    """

    name = "NoisyBaseline"

    def __init__(
        self, sigma: float = 0.2, baseline: BaselineSpec = 0.0, clip: tuple[float, float] | None = None
    ) -> None:
        self.sigma = check_positive_float(sigma, "sigma")
        self.baseline = check_baseline(baseline, random=False)
        self.clip = check_clip(clip)

    def _repr_fields(self) -> dict[str, Any]:
        return {"sigma": self.sigma, "baseline": self.baseline, "clip": self.clip}

    def baseline_of(self, inputs: torch.Tensor) -> torch.Tensor:
        return make_baseline(self.baseline, inputs)

    def _sample(self, inputs, n, generator, offset, rows):  # type: ignore[no-untyped-def]
        x0 = self.baseline_of(inputs).unsqueeze(1)
        shape = (rows, n, *inputs.shape[1:])
        eps = torch.randn(shape, generator=generator, device=inputs.device, dtype=inputs.dtype)
        return _clip_pair(inputs, x0 + self.sigma * eps, self.clip)


# --------------------------------------------------------------------------- removals


class _Removal(NoiseDistribution):
    """Common part of the removal perturbations: ``x~ = where(m, x0, x)`` and ``I`` = ``m`` or
    ``m (x - x0)`` (see the module docstring)."""

    def __init__(self, baseline: BaselineSpec, indicator: bool) -> None:
        if not isinstance(indicator, bool):
            raise InvalidInputError(f"indicator must be a bool, got {indicator!r}")
        self.baseline = check_baseline(baseline, random=False)
        self.indicator = indicator

    def baseline_of(self, inputs: torch.Tensor) -> torch.Tensor:
        return make_baseline(self.baseline, inputs)

    def _apply(self, inputs: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``mask``: bool ``(N, n, *S_m)`` broadcastable to ``(N, n, *S)`` (``S_m = (1, H, W)``
        for images, ``S`` for flat inputs). Returns ``(I, x~)``."""
        x = inputs.unsqueeze(1)
        x0 = self.baseline_of(inputs).unsqueeze(1)
        perturbed = torch.where(mask, x0, x)
        if self.indicator:
            pert = mask.to(inputs.dtype)
        else:
            pert = x - perturbed  # = m (x - x0), exactly
        return pert, perturbed


class DifferenceToBaseline(_Removal):
    """``I = x - x0`` deterministic (Sec. 2.1, Prop. 2.2): a single item, ``x~ = x0``.

    With ``indicator=True``, ``I`` is all ones: ``I^T Phi_g = sum Phi_g``, so the infidelity of a
    global explanation is its squared completeness gap ``(sum Phi_g - (f(x) - f(x0)))^2``.
    """

    exhaustive = True
    name = "DifferenceToBaseline"

    def __init__(self, baseline: BaselineSpec = 0.0, indicator: bool = False) -> None:
        super().__init__(baseline, indicator)

    def _repr_fields(self) -> dict[str, Any]:
        return {"baseline": self.baseline, "indicator": self.indicator}

    def size(self, inputs: torch.Tensor) -> int:
        return 1

    def _sample(self, inputs, n, generator, offset, rows):  # type: ignore[no-untyped-def]
        shape_m = (
            (inputs.shape[0], n, *self.perturbation_shape(inputs))
            if self.indicator
            else (
                inputs.shape[0],
                n,
                *inputs.shape[1:],
            )
        )
        mask = torch.ones(shape_m, dtype=torch.bool, device=inputs.device)
        return self._apply(inputs, mask)


def _square_table(h: int, w: int, sizes: Sequence[int]) -> torch.Tensor:
    """``(K, 3)`` int64 rows ``(side, top, left)`` of every square patch that fits ``H x W``,
    sides in the given order, then row-major positions (the reference enumeration order)."""
    rows = []
    for s in sizes:
        if s > h or s > w:
            continue
        tops, lefts = torch.meshgrid(torch.arange(h - s + 1), torch.arange(w - s + 1), indexing="ij")
        side = torch.full_like(tops, s)
        rows.append(torch.stack([side.flatten(), tops.flatten(), lefts.flatten()], dim=1))
    if not rows:
        raise InvalidInputError(f"no square side in {list(sizes)} fits {h}x{w} images")
    return torch.cat(rows)


class SquareRemoval(_Removal):
    """Square removal (Sec. 2.4): ``m`` is a square patch, set to the baseline in every channel.

    The patch is uniform over all the squares of side ``s in sizes`` that fit the image (every
    (side, position) pair equally likely), so the Monte-Carlo mean is an unbiased estimate of
    the exhaustive mean. ``exhaustive=True`` enumerates all of them (the reference evaluation of
    global explanations: sides 1..10, ``sum_s (H - s + 1)(W - s + 1)`` items, 5 605 on 28x28 MNIST).

    Args:
        sizes: square sides (default ``range(1, 11)``).
        baseline: ``x0`` -- a number, a tensor broadcastable to the inputs or a callable.
        exhaustive: enumerate every patch instead of sampling.
        indicator: ``I = m`` (global explanations, default) or ``I = m (x - x0)`` (local).
    """

    name = "SquareRemoval"

    def __init__(
        self,
        sizes: Iterable[int] = range(1, 11),
        baseline: BaselineSpec = 0.0,
        exhaustive: bool = False,
        indicator: bool = True,
    ) -> None:
        super().__init__(baseline, indicator)
        sizes = tuple(sizes)
        if not sizes:
            raise InvalidInputError("sizes must contain at least one square side")
        for s in sizes:
            check_positive_int(s, "every square side")
        self.sizes = sizes
        self.exhaustive = bool(exhaustive)
        self._tables: dict[tuple[int, int], torch.Tensor] = {}

    def _repr_fields(self) -> dict[str, Any]:
        return {
            "sizes": self.sizes,
            "baseline": self.baseline,
            "exhaustive": self.exhaustive,
            "indicator": self.indicator,
        }

    def _table(self, inputs: torch.Tensor) -> torch.Tensor:
        if inputs.ndim != 4:
            raise InvalidInputError(f"SquareRemoval needs images (N, C, H, W), got {tuple(inputs.shape)}")
        key = (int(inputs.shape[2]), int(inputs.shape[3]))
        if key not in self._tables:
            self._tables[key] = _square_table(*key, self.sizes)
        return self._tables[key]

    def size(self, inputs: torch.Tensor) -> int | None:
        return int(self._table(inputs).shape[0]) if self.exhaustive else None

    def n_squares(self, inputs: torch.Tensor) -> int:
        """Number of distinct patches for these images."""
        return int(self._table(inputs).shape[0])

    def masks(self, index: torch.Tensor, h: int, w: int, table: torch.Tensor) -> torch.Tensor:
        """Bool masks ``(*index.shape, H, W)`` of the patches ``table[index]``."""
        sq = table.to(index.device)[index]  # (..., 3)
        side, top, left = sq[..., 0, None], sq[..., 1, None], sq[..., 2, None]
        r = torch.arange(h, device=index.device)
        c = torch.arange(w, device=index.device)
        rows = (r >= top) & (r < top + side)  # (..., H)
        cols = (c >= left) & (c < left + side)  # (..., W)
        return rows.unsqueeze(-1) & cols.unsqueeze(-2)

    def _sample(self, inputs, n, generator, offset, rows):  # type: ignore[no-untyped-def]
        table = self._table(inputs)
        n_in, h, w = inputs.shape[0], inputs.shape[2], inputs.shape[3]
        if self.exhaustive:
            index = torch.arange(offset, offset + n, device=inputs.device).expand(n_in, n)
        else:
            index = torch.randint(table.shape[0], (rows, n), generator=generator, device=inputs.device)
            index = index.expand(n_in, n)
        mask = self.masks(index, h, w, table).unsqueeze(2)  # (N, n, 1, H, W)
        return self._apply(inputs, mask)


class SubsetRemoval(_Removal):
    """Removal of a random subset of the features (pixels, or groups of pixels).

    ``distribution="shapley"`` is the Shapley kernel of Prop. 2.5: the removed set ``Z`` of
    ``|Z| = k`` out of ``F`` features has ``P(Z) ∝ (F - 1) / (C(F, k) k (F - k))``, ``0 < k < F``;
    it is drawn as ``k`` with ``P(k) ∝ 1 / (k (F - k))``, then a uniform subset of size ``k``.
    The infidelity-optimal explanation for it (with the full set's infinite weight, i.e. the
    completeness constraint: ``OptimalExplanation(..., completeness=True)``) is the Shapley
    value -- directly for ``indicator=True``, times ``x - x0`` for ``indicator=False``.
    ``distribution="bernoulli"`` removes every feature independently with probability ``p``.

    A pixel is removed in all its channels. Features are the pixels (``H W`` of them for images,
    ``D`` for flat inputs ``(N, D)``) or, with ``groups``, the groups of
    :func:`evax.groups.resolve` (a grouping such as ``evax.groups.grid(7)``, masks or a label
    map, shared by the batch or one per image).

    Args:
        distribution: ``"shapley"`` or ``"bernoulli"``.
        p: removal probability of the Bernoulli distribution.
        baseline: ``x0``.
        groups: optional grouping of the pixels (images only).
        indicator: ``I = m`` (global explanations, default) or ``I = m (x - x0)`` (local).
    """

    name = "SubsetRemoval"

    def __init__(
        self,
        distribution: str = "shapley",
        p: float = 0.5,
        baseline: BaselineSpec = 0.0,
        groups: Any = None,
        indicator: bool = True,
    ) -> None:
        super().__init__(baseline, indicator)
        if distribution not in ("shapley", "bernoulli"):
            raise InvalidInputError(f"unknown distribution {distribution!r}: use 'shapley' or 'bernoulli'")
        p = check_positive_float(p, "p")
        if not 0 < p < 1:
            raise InvalidInputError(f"p must be in (0, 1), got {p!r}")
        self.distribution, self.p, self.groups = distribution, p, groups

    def _repr_fields(self) -> dict[str, Any]:
        return {
            "distribution": self.distribution,
            "p": self.p,
            "baseline": self.baseline,
            "indicator": self.indicator,
        }

    def group_masks(self, inputs: torch.Tensor) -> torch.Tensor | None:
        """``(N or 1, G, H, W)`` bool masks of the groups, or ``None`` for pixels/features."""
        if self.groups is None:
            return None
        if inputs.ndim != 4:
            raise InvalidInputError("groups need image inputs (N, C, H, W)")
        g = self.groups
        if isinstance(g, torch.Tensor) and g.dtype == torch.bool and g.ndim == 3:
            g = g.unsqueeze(0)
        return groups_mod.resolve(g, inputs)

    def n_features(self, inputs: torch.Tensor) -> int:
        masks = self.group_masks(inputs)
        if masks is not None:
            return int(masks.shape[1])
        return (
            int(inputs.shape[2] * inputs.shape[3]) if inputs.ndim == 4 else int(math.prod(inputs.shape[1:]))
        )

    def _draw(
        self, n_rows: int, n_feat: int, generator: torch.Generator, device: torch.device
    ) -> torch.Tensor:
        """Bool ``(n_rows, F)``: the removed features."""
        if self.distribution == "bernoulli":
            return torch.rand(n_rows, n_feat, generator=generator, device=device) < self.p
        if n_feat < 2:
            raise InvalidInputError("the Shapley kernel needs at least 2 features")
        k = torch.arange(1, n_feat, device=device, dtype=torch.float64)
        weights = 1.0 / (k * (n_feat - k))
        size = torch.multinomial(weights, n_rows, replacement=True, generator=generator) + 1  # (R,)
        keys = torch.rand(n_rows, n_feat, generator=generator, device=device)
        kth = keys.sort(dim=1).values.gather(1, (size - 1).unsqueeze(1))
        return keys <= kth

    def _sample(self, inputs, n, generator, offset, rows):  # type: ignore[no-untyped-def]
        n_in = inputs.shape[0]
        masks = self.group_masks(inputs)
        n_feat = self.n_features(inputs)
        z = self._draw(rows * n, n_feat, generator, inputs.device).view(rows, n, n_feat)
        z = z.expand(n_in, n, n_feat)
        if inputs.ndim == 4:
            h, w = inputs.shape[2:]
            if masks is None:
                pix = z.reshape(n_in, n, 1, h, w)
            else:
                gm = masks.expand(n_in, *masks.shape[1:]).flatten(2).to(torch.float32)  # (N, G, P)
                pix = (torch.bmm(z.to(torch.float32), gm) > 0).view(n_in, n, 1, h, w)
            return self._apply(inputs, pix)
        return self._apply(inputs, z.reshape(n_in, n, *inputs.shape[1:]))


def ShapleyKernel(  # noqa: N802 - a named preset, reads as a class
    baseline: BaselineSpec = 0.0, groups: Any = None, indicator: bool = True
) -> SubsetRemoval:
    """The Shapley-kernel subset removal of Prop. 2.5: ``SubsetRemoval("shapley", ...)``."""
    return SubsetRemoval("shapley", baseline=baseline, groups=groups, indicator=indicator)
