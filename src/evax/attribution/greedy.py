"""Greedy-AS (Hsieh et al. 2021) and Greedy-AO (EVA paper, App. B / Table 3).

Both rank the variables ``1..V`` (groups of pixels, default the paper's 12 x 12 grid; or the
features of flat inputs for Greedy-AS) by a greedy, regression-based search (EVA paper,
App. E). Starting from ``u = {}``, every step

1. draws ``S`` random subsets ``v`` of the unselected variables ``u_bar`` (each variable
   independently with probability ``include_prob``), binarised as ``b(v) in {0, 1}^V``;
2. values every set ``u | v`` with a set function ``val`` (below; higher = the set lets the
   decision change more easily);
3. fits the linear regression ``w, c = argmin sum_v (w . b(v) + c - val(u | v))^2`` (a tiny
   ridge keeps the fit well posed; columns of selected variables are zero) -- ``w_i`` is the
   importance of ``i`` *given* ``u``, interactions with ``u`` included;
4. adds to ``u`` the ``ceil(step_fraction * V)`` unselected variables with the largest ``w_i``
   (the paper: 10 % per step).

Variables added first are the most important: the attribution of the variable added at
position ``p`` (0-based, within a step in decreasing ``w``) is ``(V - p) / V``, painted on its
pixels.

* **Greedy-AS** -- ``val(s) = -eps*_s(x)``, minus the minimal L2 distance of an adversarial
  example that moves only the variables ``s`` (masked PGD inside a bracketing + bisection
  radius search, :func:`evax.core.attacks.minimal_l2_distance`; all ``N * S`` problems of
  a step in one batched search). A search that finds no adversarial example gets the image's
  common cap (the radius of the ball covering the whole domain box, or ``max_radius``), so
  all subsets of an image are valued on the same scale.
* **Greedy-AO** -- ``val(s) = AO_bar(x, B^s)``, the verified upper bound of the adversarial
  overlap (Eq. 1) over the ball whose only free variables are ``s`` (every other variable is
  fixed), computed by :mod:`evax.bounds` through :class:`evax.EVA`'s own margin
  specification and batched boxes (all ``N * S`` balls of a step in one engine call).

Both are seeded (``torch.Generator``, nothing global) and put the model in eval mode.
Budgets are configurable; the defaults (``n_subsets=100``, cheaper PGD) are well below the
paper's 1000 subsets per step (measured on the zoo's MNIST MLP, one CPU thread of a busy
2-core machine: about 7 s per image for Greedy-AS, 35 s for Greedy-AO with
IBP+Forward+Backward; ``python benchmarks/metrics.py --methods``).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import torch
from torch import nn

from evax import groups as groups_mod
from evax.attribution.base import Attribution, TargetLike, check_inputs, resolve_target
from evax.attribution.eva import DEFAULT_GROUPS, EVA, margin_spec
from evax.bounds.api import DEFAULT_METHOD
from evax.core.attacks import farthest_point_distance, minimal_l2_distance
from evax.core.modes import eval_mode
from evax.core.progress import progress_bar
from evax.core.variables import GroupsLike, Variables, flatten_inputs
from evax.errors import InvalidInputError, NotApplicableError


@dataclass
class GreedyExplanation:
    """Result of a greedy explanation of ``N`` inputs with ``V`` variables.

    Attributes:
        map: ``(N, H, W)`` (``(N, D)`` for flat inputs) each pixel its variable's score.
        scores: ``(N, V)`` ``(V - position) / V``.
        order: ``(N, V)`` variable indices in the order they were added.
        coefficients: ``(N, V)`` the regression weight of each variable at the step it was
            added.
        values: list over steps of ``(N, S)`` set values ``val(u | v)``.
        seconds: wall time; ``params``: the budget.
    """

    map: torch.Tensor
    scores: torch.Tensor
    order: torch.Tensor
    coefficients: torch.Tensor
    values: list[torch.Tensor]
    seconds: float
    params: dict = field(default_factory=dict)


def fit_importance(draws: torch.Tensor, values: torch.Tensor, ridge: float = 1e-6) -> torch.Tensor:
    """Least squares ``w`` of ``values (N, S) ~ draws (N, S, V) @ w + c`` per sample, ``(N, V)``.

    Solved in float64 through the normal equations with a ridge ``ridge * S`` on ``w`` (not on
    the intercept); columns that are always 0 get ``w = 0``.
    """
    n, s, v = draws.shape
    x = torch.cat([draws.double(), torch.ones(n, s, 1, dtype=torch.float64, device=draws.device)], dim=2)
    y = values.double().unsqueeze(2)
    # centre the values so the ridge does not pull the intercept
    xtx = x.transpose(1, 2) @ x
    reg = torch.full((v + 1,), ridge * s, dtype=torch.float64, device=draws.device)
    reg[-1] = 1e-12 * s
    xtx = xtx + torch.diag(reg)
    sol = torch.linalg.solve(xtx, x.transpose(1, 2) @ y)
    return sol[:, :v, 0]


class _Greedy(Attribution):
    """The shared greedy loop; subclasses define :meth:`_values` (``(N, S)``, higher = more
    adversarial)."""

    def __init__(
        self,
        model: nn.Module,
        groups: GroupsLike,
        n_subsets: int,
        step_fraction: float,
        include_prob: float,
        seed: int,
        progress: bool | None,
    ) -> None:
        super().__init__(model)
        if isinstance(n_subsets, bool) or not isinstance(n_subsets, int) or n_subsets < 2:
            raise InvalidInputError(f"n_subsets must be an int >= 2, got {n_subsets!r}")
        if not 0.0 < float(step_fraction) <= 1.0:
            raise InvalidInputError(f"step_fraction must be in (0, 1], got {step_fraction!r}")
        if not 0.0 < float(include_prob) < 1.0:
            raise InvalidInputError(f"include_prob must be in (0, 1), got {include_prob!r}")
        self.groups, self.n_subsets = groups, n_subsets
        self.step_fraction, self.include_prob = float(step_fraction), float(include_prob)
        self.seed, self.progress = seed, progress

    def _variables(self, inputs: torch.Tensor) -> Variables:
        groups = self.groups
        if inputs.ndim == 2 and isinstance(groups, groups_mod.grid):
            groups = None  # flat inputs: every feature is a variable
        return Variables(inputs, groups)

    def _free_pixels(self, variables: Variables, free: torch.Tensor) -> torch.Tensor:
        """``free (N, S, V)`` -> pixel masks ``(N * S, P)`` (bool)."""
        n, s, v = free.shape
        sample = torch.arange(n, device=free.device).repeat_interleave(s)
        return variables.pixel_mask(free.reshape(n * s, v), sample)[:, 0]

    def _values(
        self,
        inputs: torch.Tensor,
        target: torch.Tensor,
        variables: Variables,
        free: torch.Tensor,
        generator: torch.Generator,
    ) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def _params(self) -> dict:
        return {
            "n_subsets": self.n_subsets,
            "step_fraction": self.step_fraction,
            "include_prob": self.include_prob,
            "seed": self.seed,
        }

    def explain(self, inputs: torch.Tensor, target: TargetLike = None) -> GreedyExplanation:
        """Run the greedy search; see the module docstring."""
        check_inputs(inputs)
        start = time.perf_counter()
        x = inputs.detach()
        variables = self._variables(x)
        n, v = x.shape[0], variables.n_vars
        gen = torch.Generator().manual_seed(int(self.seed))
        per_step = max(1, math.ceil(self.step_fraction * v))
        selected = torch.zeros(n, v, dtype=torch.bool, device=x.device)
        order: list[torch.Tensor] = []
        coefs: list[torch.Tensor] = []
        history: list[torch.Tensor] = []
        with eval_mode(self.model):
            tgt = resolve_target(self.model, x, target)
            n_steps = math.ceil(v / per_step)
            for step in progress_bar(range(n_steps), self.progress, desc=self.name, leave=False):
                k = min(per_step, v - step * per_step)
                draws = torch.rand(n, self.n_subsets, v, generator=gen).to(x.device) < self.include_prob
                draws &= ~selected.unsqueeze(1)
                values = self._values(x, tgt, variables, selected.unsqueeze(1) | draws, gen)  # (N, S)
                w = fit_importance(draws, values)
                w = w.masked_fill(selected, float("-inf"))
                top_w, top = torch.topk(w, k, dim=1)  # ties: torch.topk's order
                selected.scatter_(1, top, True)
                order.append(top)
                coefs.append(top_w)
                history.append(values)
        order_t = torch.cat(order, dim=1)
        scores = torch.empty(n, v, dtype=x.dtype, device=x.device)
        pos = torch.arange(v, device=x.device, dtype=x.dtype).expand(n, v)
        scores.scatter_(1, order_t, (v - pos) / v)
        coef_t = torch.empty(n, v, dtype=torch.float64, device=x.device)
        coef_t.scatter_(1, order_t, torch.cat(coefs, dim=1))
        return GreedyExplanation(
            map=variables.paint(scores),
            scores=scores,
            order=order_t,
            coefficients=coef_t,
            values=history,
            seconds=time.perf_counter() - start,
            params=self._params(),
        )

    def attribute(self, inputs: torch.Tensor, target: TargetLike = None) -> torch.Tensor:
        """The map ``(N, H, W)`` (``(N, D)`` for flat inputs)."""
        return self.explain(inputs, target).map

    def attribute_raw(self, inputs: torch.Tensor, target: TargetLike = None) -> torch.Tensor:
        """The map repeated over channels ``(N, C, H, W)`` (``(N, D)`` for flat inputs)."""
        m = self.attribute(inputs, target)
        return m.unsqueeze(1).expand(-1, inputs.shape[1], -1, -1) if inputs.ndim == 4 else m


class GreedyAS(_Greedy):
    """Greedy-AS (Hsieh et al. 2021): greedy regression on the minimal adversarial distance.

    Args:
        model: any differentiable classifier.
        groups: the variables (default ``evax.groups.grid(12)``; ignored for flat inputs,
            whose features are the variables; ``None``: pixels).
        n_subsets: subsets ``v`` per step (the paper: 1000).
        step_fraction: fraction of the variables added per step (the paper: 0.1).
        include_prob: probability of each unselected variable in a subset.
        domain: ``(lo, hi)`` box of valid inputs for the attack (``None``: unbounded).
        pgd_steps, step_size, restarts, start, tol, rtol, max_radius, max_iter, patience: the
            distance search (see :func:`evax.core.attacks.minimal_l2_distance`); the
            defaults trade precision (5 % relative) for speed -- the regression only needs
            the values' order of magnitude.
        batch_size: PGD problems per forward/backward pass.
        seed: seed of the subsets and the random restarts.
        progress: tqdm bar over steps (``None``: when stderr is a TTY).
    """

    name = "greedy_as"

    def __init__(
        self,
        model: nn.Module,
        groups: GroupsLike = DEFAULT_GROUPS,
        n_subsets: int = 100,
        step_fraction: float = 0.1,
        include_prob: float = 0.5,
        domain: tuple[float, float] | None = (0.0, 1.0),
        pgd_steps: int = 50,
        step_size: float = 0.1,
        restarts: int = 1,
        start: float = 10.0,
        tol: float = 1e-3,
        rtol: float = 0.05,
        max_radius: float | None = None,
        max_iter: int = 20,
        patience: int | None = 10,
        batch_size: int = 512,
        seed: int = 0,
        progress: bool | None = None,
    ) -> None:
        super().__init__(model, groups, n_subsets, step_fraction, include_prob, seed, progress)
        if domain is not None and not float(domain[0]) < float(domain[1]):
            raise InvalidInputError(f"domain must be (lo, hi) with lo < hi, got {domain!r}")
        self.domain = None if domain is None else (float(domain[0]), float(domain[1]))
        self.search = {
            "steps": pgd_steps,
            "step_size": step_size,
            "restarts": restarts,
            "start": start,
            "tol": tol,
            "rtol": rtol,
            "max_radius": max_radius,
            "max_iter": max_iter,
            "patience": patience,
            "batch_size": batch_size,
        }
        if isinstance(pgd_steps, bool) or not isinstance(pgd_steps, int) or pgd_steps < 1:
            raise InvalidInputError(f"pgd_steps must be a positive int, got {pgd_steps!r}")

    def _params(self) -> dict:
        return {**super()._params(), "domain": self.domain, **self.search}

    def _values(self, inputs, target, variables, free, generator):
        n, s, _ = free.shape
        pix = self._free_pixels(variables, free)  # (N * S, P)
        sample = torch.arange(n, device=inputs.device).repeat_interleave(s)
        shape = inputs.shape[1:]
        free_x = pix.view(n * s, 1, *shape[1:]) if inputs.ndim == 4 else pix.view(n * s, *shape)
        if self.domain is not None and ((inputs < self.domain[0]).any() or (inputs > self.domain[1]).any()):
            raise InvalidInputError(
                f"inputs lie outside the domain {self.domain}; pass the right domain or domain=None"
            )
        res = minimal_l2_distance(self.model, inputs[sample], target[sample], free_x, generator,
                                  domain=self.domain, progress=False, **self.search)  # fmt: skip
        dist = res.distance
        if res.capped.any():  # one cap per image, the same for all its subsets
            if self.domain is not None:
                cap = farthest_point_distance(flatten_inputs(inputs), torch.ones(1, 1, 1, dtype=torch.bool), self.domain)
                if self.search["max_radius"] is not None:
                    cap = cap.clamp(max=float(self.search["max_radius"]))
            else:
                top = self.search["max_radius"]
                cap = torch.full((n,), float(top) if top is not None else 100.0 * float(self.search["start"]))
            dist = torch.where(res.capped, cap.to(dist)[sample], dist)
        return -dist.view(n, s)


class GreedyAO(_Greedy):
    """Greedy-AO (EVA paper, App. B): Greedy-AS with the verified adversarial overlap.

    ``val(u | v) = AO_bar(x, B^{u | v})`` where ``B^s`` perturbs only the variables ``s``
    (``fixed`` = every other pixel), bounded by :mod:`evax.bounds` exactly as :class:`evax.EVA`
    does (its margin specification and batched fixed-mask balls; each step is one engine call).

    Args:
        model: a classifier the bound engine supports, on images ``(N, C, H, W)``.
        eps, p, method, domain, batch_size, certify: the ball and the bound method, as
            :class:`evax.EVA` (the paper: eps = 0.5, p = inf).
        groups: the variables (default ``evax.groups.grid(12)``).
        n_subsets, step_fraction, include_prob, seed, progress: as :class:`GreedyAS`.

    Raises :class:`NotApplicableError` on flat inputs (the balls are built on image groups).
    """

    name = "greedy_ao"

    def __init__(
        self,
        model: nn.Module,
        eps: float = 0.5,
        p: float = math.inf,
        method: str = DEFAULT_METHOD,
        groups: GroupsLike = DEFAULT_GROUPS,
        n_subsets: int = 100,
        step_fraction: float = 0.1,
        include_prob: float = 0.5,
        domain: tuple[float, float] | None = None,
        batch_size: int | None = None,
        certify: bool = False,
        seed: int = 0,
        progress: bool | None = None,
    ) -> None:
        super().__init__(model, groups, n_subsets, step_fraction, include_prob, seed, progress)
        self.eva = EVA(
            model, eps=eps, p=p, method=method, domain=domain, batch_size=batch_size, certify=certify
        )

    def _params(self) -> dict:
        e = self.eva
        return {**super()._params(), "eps": float(e.eps), "p": str(e.p), "method": e.method}

    def _values(self, inputs, target, variables, free, generator):
        if inputs.ndim != 4:
            raise NotApplicableError(f"Greedy-AO needs image inputs (N, C, H, W), got {tuple(inputs.shape)}")
        n, s, _ = free.shape
        fixed = ~self._free_pixels(variables, free).view(n, s, *inputs.shape[2:])  # (N, S, H, W)
        with torch.no_grad():
            n_out = self.model(inputs[:1]).shape[1]
        if n_out < 2:
            raise InvalidInputError("Greedy-AO needs a classifier with at least two outputs")
        ao = self.eva._overlaps(inputs, fixed, margin_spec(target, n_out), sign=0)  # (N, 1 + S)
        return ao[:, 1:]
