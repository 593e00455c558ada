"""Verified sufficient explanations: a set of cells that provably keeps the decision.

For an input ``x`` of class ``c``, a ball ``B(x)`` (radius ``eps``, norm ``p``, optional domain)
and ``G`` cells (pixels or groups), a set ``S`` of cells is **sufficient** when, with the cells of
``S`` held at their values and every other cell free to move inside the ball, no point changes
the class. evax proves it with the bound engine: with ``B_S = {x' in B : x'_S = x_S}`` and the
margin specification ``C = [e_c' - e_c]_{c' != c}`` (bounded directly, tighter than intervals),

    AO_bar(x, B_S) = max_{c' != c} upper_{x' in B_S}(f_c'(x') - f_c(x')) < 0   =>  S sufficient.

``SufficientExplanation.certified`` is exactly that test, from an engine call on the returned set.

**Search** (VeriX's traversal, batched). An *order* ranks the cells; they are freed from the
least to the most important, and a cell is kept when freeing it breaks the proof. Freeing more
cells enlarges the ball, so for exact bounds ``cert(k) = [the first k cells can be freed]`` is
monotone in ``k``; the traversal is therefore a sequence of *prefix searches* -- the largest
freeable prefix of the remaining candidates -- each ending at a cell that must be kept:

1. prefix search: ``(B+1)``-section of ``[lo, hi]`` (``B = boxes_per_round`` candidate prefixes
   per image and round, all images' boxes in one ``evax.bound`` call), ``O(log_B G)`` calls;
2. refinement (``search="greedy"``): one call testing ``F + {u}`` for every remaining candidate
   ``u`` (``F`` the freed set): a failure marks ``u`` necessary for every superset of ``F``
   (monotonicity), then a prefix search over the survivors frees a run of them and keeps the
   cell that breaks it; repeat until no candidate is left.

For monotone bounds this returns exactly the set VeriX's one-cell-at-a-time traversal returns,
in a number of sequential engine calls that grows with ``log G`` per refinement iteration rather
than with ``G``. Linear relaxations are not always monotone (a rare smaller box with a looser
bound): the result stays sound -- only sets that an engine call certified are reported, and
``certified`` re-states that call -- but may then differ from VeriX's.

``search="prefix"`` stops after step 1 (kept = every cell from the first break on);
``search="smallest"`` enumerates the kept sets by increasing size (tiny ``G`` only): with
``method="exact"`` (MILP) it is the true smallest sufficient set, the reference to measure how
far the greedy set is from it.

**Edge cases.** If the whole ball is certified the empty set is returned (``size = 0``). Fixing
every cell leaves no perturbation, so the full set is sufficient whenever ``x`` itself is in
class ``c``; the search always returns a set. If the engine cannot certify even the point ``x``
(the target is not the predicted class), every cell is kept and ``certified`` is False.

**Counterfactuals.** For each kept cell ``u`` of a certified result, a PGD attack searches a
point of ``B`` that moves only ``F_final + {u}`` and changes the class: a concrete proof that
``S - {u}`` is not sufficient. Cells with such a witness are flagged in ``witnessed``; for the
others necessity rests on the bound alone (the bound may be loose). With ``method="exact"``
(``p = inf``) the cells PGD missed go to the MILP, which is complete: there every kept cell of a
greedy result is witnessed (the MILP's positive optimum is the reason it was kept), up to a
maximiser exactly on the decision boundary, which a forward pass does not count as a change.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from evax.attribution._witness import exact_witnesses, find_witnesses
from evax.attribution.base import TargetLike, check_inputs, resolve_target
from evax.attribution.eva import DEFAULT_GROUPS, EVA, _norm_name, margin_spec
from evax.bounds.api import bound
from evax.bounds.propagate import parse_method
from evax.core.explainers import call_explainer
from evax.core.modes import eval_mode
from evax.core.variables import GroupsLike, Variables
from evax.errors import InvalidInputError
from evax.perturbation import Ball

OrderLike = str | Callable[..., torch.Tensor] | torch.Tensor
_PREFIX, _SINGLES, _DONE = 0, 1, 2
SEARCHES = ("greedy", "prefix", "smallest")


@dataclass
class SufficientExplanation:
    """Sufficient explanations of ``N`` inputs over ``G`` cells.

    Attributes:
        mask: ``(N, H, W)`` (``(N, D)`` for flat inputs) bool, the pixels of the kept set.
        kept: ``(N, G)`` bool, the kept cells.
        size: ``(N,)`` number of kept cells.
        certified: ``(N,)`` bool, ``ao < 0``: with the kept cells fixed and the others free in
            the ball, no point changes the class -- proven by the engine.
        ao: ``(N,)`` upper bound of the adversarial overlap over that ball (the certificate).
        order: ``(N, G)`` cells in the order they were tried (least important first).
        scores: ``(N, G)`` the order's importance scores.
        target: ``(N,)`` explained classes.
        checks: sequential engine calls (``evax.bound`` calls) the search made for the whole
            batch (all images share each call); ``order="eva"`` adds one batched EVA call.
        boxes: boxes bounded in all.
        seconds: wall time (order, search and witnesses).
        witnessed: ``(N, G)`` bool, kept cells for which a counterfactual was found.
        counterfactuals: ``(M, *S)`` class-changing inputs, one per witnessed cell.
        counterfactual_index: ``(M, 2)`` ``(image, cell)`` of each counterfactual.
        counterfactual_class: ``(M,)`` the class each counterfactual gets.
        masks: ``(B, G, P)`` bool cell masks over the flattened pixels (``None`` for pixels).
        method, search, params: how it was computed (``params["witness_seconds"]``: the part
            of ``seconds`` spent on the counterfactual attack).
    """

    mask: torch.Tensor
    kept: torch.Tensor
    size: torch.Tensor
    certified: torch.Tensor
    ao: torch.Tensor
    order: torch.Tensor
    scores: torch.Tensor
    target: torch.Tensor
    checks: int
    boxes: int
    seconds: float
    witnessed: torch.Tensor
    counterfactuals: torch.Tensor
    counterfactual_index: torch.Tensor
    counterfactual_class: torch.Tensor
    masks: torch.Tensor | None
    method: str
    search: str
    params: dict = field(default_factory=dict)

    @property
    def n_cells(self) -> int:
        return int(self.kept.shape[1])

    def order_map(self) -> torch.Tensor:
        """The order's scores painted on the pixels, ``(N, H, W)`` (``(N, D)`` flat): with
        ``order="eva"`` this is the EVA map to draw next to the kept set."""
        n = self.scores.shape[0]
        spatial = tuple(self.mask.shape[1:])
        if self.masks is None:
            return self.scores.reshape(n, *spatial)
        m = self.masks.to(self.scores.dtype)
        eq = "ng,bgp->np" if m.shape[0] == 1 else "ng,ngp->np"
        total = torch.einsum(eq, self.scores, m)
        return (total / m.sum(dim=1).clamp_min(1)).reshape(n, *spatial)

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly summary (lists): sizes, certificates, kept cells, witnesses."""
        return {
            "kind": "sufficient",
            "method": self.method,
            "search": self.search,
            "params": self.params,
            "seconds": self.seconds,
            "checks": self.checks,
            "boxes": self.boxes,
            "cells": self.n_cells,
            "target": self.target.tolist(),
            "size": self.size.tolist(),
            "fraction": (self.size.double() / self.n_cells).tolist(),
            "certified": self.certified.tolist(),
            "ao": self.ao.tolist(),
            "kept_cells": [row.nonzero().squeeze(1).tolist() for row in self.kept],
            "witnessed_cells": [row.nonzero().squeeze(1).tolist() for row in self.witnessed],
            "counterfactual_class": self.counterfactual_class.tolist(),
        }


def _candidate_rank(cand: torch.Tensor, rank: torch.Tensor) -> torch.Tensor:
    """Position of each candidate cell among the candidates, in the order's ranking.

    ``cand`` ``(N, G)`` bool, ``rank`` ``(N, G)`` position of each cell in the order. Returns
    ``(N, G)`` long: ``0..n_cand-1`` on candidates, ``G`` (past every prefix) elsewhere.
    """
    n, g = cand.shape
    perm = rank.argsort(dim=1)  # cells in order
    c_sorted = cand.gather(1, perm)
    pos = torch.where(c_sorted, c_sorted.long().cumsum(1) - 1, torch.full_like(perm, g))
    return torch.empty_like(perm).scatter_(1, perm, pos)


def _section_points(lo: torch.Tensor, hi: torch.Tensor, b: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``b`` integer points spread over ``[lo + 1, hi - 1]`` (both ends included) per row.

    ``lo, hi`` ``(P,)`` with ``hi - lo >= 2``. Returns ``(points (P, b), unique (P, b) bool)``
    (duplicates masked out). The interval shrinks to about ``(hi - lo) / (b - 1)`` per round.
    """
    j = torch.arange(b, device=lo.device)
    span = (hi - lo - 2).clamp_min(0)
    pts = lo.unsqueeze(1) + 1 + (span.unsqueeze(1) * j) // (b - 1)
    uniq = torch.ones_like(pts, dtype=torch.bool)
    uniq[:, 1:] = pts[:, 1:] != pts[:, :-1]
    return pts, uniq


class Sufficient:
    """Verified sufficient explanations (see the module docstring).

    Args:
        model: classifier ``(N, *S) -> (N, K)`` made of layers the bound engine supports.
        eps: radius of the ball (``> 0``).
        p: its norm (``inf``, 2 or 1).
        method: bound method (``"backward"`` = CROWN by default; ``"crown-ibp"`` is much
            cheaper on conv nets, ``"exact"`` MILP for tiny ReLU nets; see :func:`evax.bound`).
        groups: cells: a grouping (default ``evax.groups.grid(12)``), masks / labels, or
            ``None`` for pixels (features for flat inputs).
        order: how cells are ranked (the least important is freed first):
            ``"eva"`` (EVA scores with the same ball and method, or ``order_method``),
            ``"verix"`` (VeriX's sensitivity heuristic: the largest change of the explained
            logit when the cell alone moves to ``x + eps`` or ``x - eps``, clipped to the
            domain), ``"random"`` (seeded), an explainer ``explain(inputs, target) -> map``
            (e.g. ``evax.attribution.Saliency(model)``), or explicit scores (``(N, G)`` per
            cell or a map ``(N, H, W)`` / ``(N, C, H, W)``).
        domain: optional ``(lo, hi)`` clipping (``p = inf``), e.g. ``(0, 1)``.
        search: ``"greedy"`` (default, VeriX's traversal, locally minimal), ``"prefix"``
            (binary search only) or ``"smallest"`` (exhaustive, ``G <= max_cells``).
        boxes_per_round: candidate prefixes per image per engine call (``>= 2``).
        counterfactuals: search PGD witnesses for the kept cells of certified results.
        attack_steps, attack_restarts: the witness attack's budget (steps per run; runs:
            untargeted, then against the runner-up classes, then random starts).
        order_method: bound method of the EVA order (default: ``method``).
        max_cells: largest ``G`` accepted by ``search="smallest"``.
        batch_size: boxes per engine chunk (``None``: automatic).
        certify: float64 bounds with a rounding margin (see :func:`evax.bound`).
        seed: seed of the random order and the attack's restarts.
    """

    def __init__(
        self,
        model: nn.Module,
        eps: float,
        p: float = math.inf,
        method: str = "backward",
        groups: GroupsLike = DEFAULT_GROUPS,
        order: OrderLike = "eva",
        domain: tuple[float, float] | None = None,
        search: str = "greedy",
        boxes_per_round: int = 16,
        counterfactuals: bool = True,
        attack_steps: int = 30,
        attack_restarts: int = 3,
        order_method: str | None = None,
        max_cells: int = 16,
        batch_size: int | None = None,
        certify: bool = False,
        seed: int = 0,
    ) -> None:
        if not isinstance(model, nn.Module):
            raise InvalidInputError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        probe = Ball(torch.zeros(1, 1), eps, p)  # validates eps and p
        if domain is not None:
            Ball(torch.zeros(1, 1) + float(domain[0]), eps, p, domain=domain)
        for name, m in (("method", method), ("order_method", order_method)):
            if m is not None and m != "exact":
                try:
                    parse_method(m)
                except InvalidInputError as exc:
                    raise InvalidInputError(f"{name}: {exc}") from None
        if search not in SEARCHES:
            raise InvalidInputError(f"search must be one of {SEARCHES}, got {search!r}")
        if isinstance(boxes_per_round, bool) or not isinstance(boxes_per_round, int) or boxes_per_round < 2:
            raise InvalidInputError(f"boxes_per_round must be an int >= 2, got {boxes_per_round!r}")
        for name, v in (("attack_steps", attack_steps), ("attack_restarts", attack_restarts), ("max_cells", max_cells)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise InvalidInputError(f"{name} must be a positive int, got {v!r}")
        if isinstance(order, str) and order not in ("eva", "verix", "random"):
            raise InvalidInputError(
                f"order must be 'eva', 'verix', 'random', an explainer or a tensor of scores, got {order!r}"
            )
        if not (isinstance(order, (str, torch.Tensor)) or callable(order)):
            raise InvalidInputError(f"order must be a string, an explainer or a tensor, got {type(order).__name__}")
        self.model, self.eps, self.p, self.method = model, float(eps), probe.p, method
        self.groups, self.order, self.domain, self.search = groups, order, domain, search
        self.boxes_per_round, self.counterfactuals = boxes_per_round, counterfactuals
        self.attack_steps, self.attack_restarts = attack_steps, attack_restarts
        self.order_method = order_method or method
        self.max_cells, self.batch_size, self.certify, self.seed = max_cells, batch_size, certify, seed
        self._calls = 0
        self._boxes = 0

    # -- the engine ---------------------------------------------------------------------------
    def _overlap(
        self, x: torch.Tensor, spec: torch.Tensor, variables: Variables, freed: torch.Tensor, sample: torch.Tensor
    ) -> torch.Tensor:
        """``AO_bar`` of ``M`` boxes in one engine call: ``freed`` ``(M, G)`` bool cells free,
        ``sample`` ``(M,)`` their image. Returns ``(M,)``."""
        m = freed.shape[0]
        if m == 0:
            return torch.empty(0, device=x.device, dtype=x.dtype)
        pix = variables.pixel_mask(freed, sample)  # (M, 1, P)
        fixed = ~pix.expand(m, variables.channels, variables.n_pixels).reshape(m, *x.shape[1:])
        ball = Ball(x[sample], self.eps, self.p, fixed, self.domain)
        b = bound(self.model, ball, self.method, spec[sample], batch_size=self.batch_size, certify=self.certify)
        self._calls += 1
        self._boxes += m
        return b.upper.amax(dim=1).to(x.dtype)

    # -- orders -------------------------------------------------------------------------------
    def _scores(self, x: torch.Tensor, tgt: torch.Tensor, variables: Variables) -> torch.Tensor:
        """Importance of every cell, ``(N, G)`` (higher = more important = freed last)."""
        n, g = x.shape[0], variables.n_vars
        order = self.order
        if isinstance(order, torch.Tensor):
            return self._check_scores(variables.scores(order.to(x.device)), n, g)
        if order == "random":
            gen = torch.Generator().manual_seed(self.seed)
            return torch.rand(n, g, generator=gen, dtype=torch.float64).to(x.device)
        if order == "verix":
            return self._sensitivity(x, tgt, variables)
        if order == "eva":
            if x.ndim != 4:
                raise InvalidInputError("order='eva' needs image inputs (N, C, H, W); pass scores or 'verix'")
            masks = self._cell_masks(x, variables)
            eva = EVA(self.model, self.eps, self.p, self.order_method, masks, self.domain, self.batch_size,
                      certify=self.certify)
            return eva.explain(x, tgt).scores
        out = call_explainer(getattr(order, "attribute", order), x, tgt)
        return self._check_scores(variables.scores(out.detach()), n, g)

    @staticmethod
    def _check_scores(scores: torch.Tensor, n: int, g: int) -> torch.Tensor:
        if scores.shape != (n, g):
            raise InvalidInputError(f"order scores must give ({n}, {g}) cell scores, got {tuple(scores.shape)}")
        if not torch.isfinite(scores).all():
            raise InvalidInputError("order scores contain NaN or inf")
        return scores

    @staticmethod
    def _cell_masks(x: torch.Tensor, variables: Variables) -> torch.Tensor:
        """``(B, G, H, W)`` bool masks of the cells (one per pixel when ``groups=None``)."""
        h, w = x.shape[2:]
        if variables.masks is None:
            return torch.eye(h * w, dtype=torch.bool, device=x.device).view(1, h * w, h, w)
        return variables.masks.view(variables.masks.shape[0], -1, h, w)

    def _sensitivity(self, x: torch.Tensor, tgt: torch.Tensor, variables: Variables) -> torch.Tensor:
        """VeriX's heuristic: ``max_{s = +-1} |f_c(x) - f_c(x + s eps 1_u)|`` per cell ``u``,
        ``(N, G)``; all ``2 N G`` inputs in batched forward passes (chunks of 2048)."""
        n, g = x.shape[0], variables.n_vars
        sample = torch.arange(n, device=x.device).repeat_interleave(g)  # (N G,)
        cells = torch.arange(g, device=x.device).repeat(n)
        out = []
        with torch.no_grad():
            base = self.model(x).gather(1, tgt.view(-1, 1)).squeeze(1)  # (N,)
            for sl in torch.arange(n * g, device=x.device).split(2048):
                one = torch.nn.functional.one_hot(cells[sl], g).bool()
                pix = variables.pixel_mask(one, sample[sl]).to(x.dtype)  # (B, 1, P)
                pix = pix.expand(-1, variables.channels, -1).reshape(sl.shape[0], *x.shape[1:])
                change = torch.zeros(sl.shape[0], dtype=x.dtype, device=x.device)
                for s in (1.0, -1.0):
                    z = x[sample[sl]] + s * self.eps * pix
                    if self.domain is not None:
                        z = z.clamp(float(self.domain[0]), float(self.domain[1]))
                    f = self.model(z).gather(1, tgt[sample[sl]].view(-1, 1)).squeeze(1)
                    change = torch.maximum(change, (f - base[sample[sl]]).abs())
                out.append(change)
        return torch.cat(out).view(n, g)

    # -- searches -----------------------------------------------------------------------------
    def _greedy(self, x, spec, variables, rank, refine: bool):
        """Prefix search + refinement (module docstring); ``(freed, kept, ao)`` ``(N, G)``..."""
        n, g = rank.shape
        dev = x.device
        freed = torch.zeros(n, g, dtype=torch.bool, device=dev)
        kept = torch.zeros_like(freed)
        phase = torch.full((n,), _PREFIX, device=dev)
        lo = torch.full((n,), -1, device=dev)  # -1: not even the point x is certified yet
        hi = torch.full((n,), g + 1, device=dev)
        ao = torch.full((n,), math.inf, device=dev, dtype=x.dtype)
        b = self.boxes_per_round
        while (phase != _DONE).any():
            cand = ~freed & ~kept
            crank = _candidate_rank(cand, rank)
            pi = (phase == _PREFIX).nonzero().squeeze(1)
            pts, uniq = _section_points(lo[pi], hi[pi], b)
            img_p = pi.unsqueeze(1).expand_as(pts)[uniq]
            k_p = pts[uniq]
            box_p = freed[img_p] | (crank[img_p] < k_p.unsqueeze(1))
            pairs = (cand & (phase == _SINGLES).unsqueeze(1)).nonzero()
            img_s, cell_s = pairs[:, 0], pairs[:, 1]
            box_s = freed[img_s].clone()
            box_s[torch.arange(img_s.shape[0], device=dev), cell_s] = True
            ao_all = self._overlap(x, spec, variables, torch.cat([box_p, box_s]), torch.cat([img_p, img_s]))
            ao_p, ao_s = ao_all[: k_p.shape[0]], ao_all[k_p.shape[0] :]
            cert_p = ao_p < 0
            # prefix phase: the largest certified candidate, the smallest failure above it
            best = lo.clone().scatter_reduce(0, img_p, torch.where(cert_p, k_p, -1), "amax")
            first = (k_p == 0) & (lo[img_p] < 0)  # the point itself: keep its bound in any case
            ao[img_p[first]] = ao_p[first]
            hit = cert_p & (k_p == best[img_p]) & (k_p > lo[img_p])
            ao[img_p[hit]] = ao_p[hit]
            bad = torch.where(~cert_p & (k_p > best[img_p]), k_p, g + 1)
            hi = torch.minimum(hi, torch.full_like(hi, g + 1).scatter_reduce(0, img_p, bad, "amin"))
            lo = best
            fin = pi[hi[pi] - lo[pi] <= 1]
            if fin.numel():
                point_fails = fin[lo[fin] < 0]
                kept[point_fails] = True
                phase[point_fails] = _DONE
                ok = fin[lo[fin] >= 0]
                freed[ok] |= cand[ok] & (crank[ok] < lo[ok].unsqueeze(1))
                kept[ok] |= cand[ok] & (crank[ok] == lo[ok].unsqueeze(1))
                rest = cand[ok] & (crank[ok] > lo[ok].unsqueeze(1))
                if refine:
                    phase[ok] = torch.where(rest.any(1), _SINGLES, _DONE)
                else:
                    kept[ok] |= rest
                    phase[ok] = _DONE
            # singles phase: a candidate whose addition alone breaks the proof is kept
            if img_s.numel():
                fail = ao_s >= 0
                kept[img_s[fail], cell_s[fail]] = True
                si = torch.unique(img_s)
                left = (~freed[si] & ~kept[si]).sum(1)
                phase[si] = torch.where(left > 0, _PREFIX, _DONE)
                lo[si] = 0  # F is certified
                hi[si] = left + 1
        return freed, kept, ao

    def _smallest(self, x, spec, variables):
        """Exhaustive: kept sets by increasing size, one engine call per size."""
        n, g = x.shape[0], variables.n_vars
        if g > self.max_cells:
            raise InvalidInputError(
                f"search='smallest' enumerates subsets: {g} cells is more than max_cells={self.max_cells}; "
                "use coarser groups or search='greedy'"
            )
        dev = x.device
        kept = torch.ones(n, g, dtype=torch.bool, device=dev)
        ao = torch.full((n,), math.inf, device=dev, dtype=x.dtype)
        done = torch.zeros(n, dtype=torch.bool, device=dev)
        for s in range(g + 1):
            act = (~done).nonzero().squeeze(1)
            if act.numel() == 0:
                break
            combos = torch.combinations(torch.arange(g, device=dev), s) if s > 0 else torch.empty(1, 0, dtype=torch.long, device=dev)
            if s == 1:
                combos = combos.view(-1, 1)
            sets = torch.zeros(combos.shape[0], g, dtype=torch.bool, device=dev)
            sets.scatter_(1, combos, True)  # (Q, G) kept cells
            q = sets.shape[0]
            img = act.repeat_interleave(q)
            k = sets.repeat(act.shape[0], 1)
            val = self._overlap(x, spec, variables, ~k, img).view(act.shape[0], q)
            if s == g:  # the point: record its bound even when it fails
                ao[act] = val[:, 0]
            best, arg = val.min(dim=1)
            win = best < 0
            ao[act[win]] = best[win]
            kept[act[win]] = sets[arg[win]]
            done[act[win]] = True
        return ~kept, kept, ao

    # -- public -------------------------------------------------------------------------------
    def explain(self, inputs: torch.Tensor, target: TargetLike = None) -> SufficientExplanation:
        """Sufficient explanations of ``inputs`` ``(N, C, H, W)`` (or ``(N, D)``) for ``target``
        (default: the predicted class). See the class and module docstrings."""
        check_inputs(inputs)
        if inputs.ndim not in (2, 4):
            raise InvalidInputError(
                f"inputs must be images (N, C, H, W) or flat (N, D), got shape {tuple(inputs.shape)}"
            )
        start = time.perf_counter()
        x = inputs.detach()
        self._calls = self._boxes = 0
        with eval_mode(self.model):
            with torch.no_grad():
                try:
                    n_out = self.model(x[:1]).shape[1]
                except RuntimeError as exc:
                    raise InvalidInputError(
                        f"the model cannot take inputs of shape {tuple(x.shape[1:])}: {exc}"
                    ) from None
            tgt = resolve_target(self.model, x, target)
            if n_out < 2:
                raise InvalidInputError("a sufficient explanation needs a classifier with at least two outputs")
            variables = Variables(x, self.groups)
            if variables.masks is not None and (~variables.masks.any(dim=1)).any():
                raise InvalidInputError("the groups do not cover every pixel: uncovered pixels could not be freed")
            spec = margin_spec(tgt, n_out).to(x.dtype)
            scores = self._scores(x, tgt, variables)
            # least important first; ties by cell index (stable sort)
            order = torch.sort(scores, dim=1, stable=True).indices
            rank = torch.empty_like(order).scatter_(1, order, torch.arange(order.shape[1], device=x.device).expand_as(order))
            order_calls = self._calls
            if self.search == "smallest":
                freed, kept, ao = self._smallest(x, spec, variables)
            else:
                freed, kept, ao = self._greedy(x, spec, variables, rank, refine=self.search == "greedy")
            checks, boxes = self._calls - order_calls, self._boxes
            certified = ao < 0
            t_witness = time.perf_counter()
            witnessed, cf, cf_idx, cf_cls = self._witnesses(x, tgt, variables, freed, kept, certified)
            t_witness = time.perf_counter() - t_witness
        n = x.shape[0]
        pix = variables.pixel_mask(kept, torch.arange(n, device=x.device)).squeeze(1)
        mask = pix.reshape(n, *variables.spatial)
        params = {
            "eps": self.eps,
            "p": _norm_name(self.p),
            "cells": int(variables.n_vars),
            "domain": None if self.domain is None else [float(self.domain[0]), float(self.domain[1])],
            "order": self.order if isinstance(self.order, str) else type(self.order).__name__,
            "boxes_per_round": self.boxes_per_round,
            "witness_seconds": t_witness,
        }
        return SufficientExplanation(
            mask=mask,
            kept=kept,
            size=kept.sum(1),
            certified=certified,
            ao=ao,
            order=order,
            scores=scores,
            target=tgt,
            checks=checks,
            boxes=boxes,
            seconds=time.perf_counter() - start,
            witnessed=witnessed,
            counterfactuals=cf,
            counterfactual_index=cf_idx,
            counterfactual_class=cf_cls,
            masks=variables.masks,
            method=self.method,
            search=self.search,
            params=params,
        )

    def attribute(self, inputs: torch.Tensor, target: TargetLike = None) -> torch.Tensor:
        """The kept set as a float map ``(N, H, W)`` (1 = kept)."""
        return self.explain(inputs, target).mask.to(inputs.dtype)

    def _witnesses(self, x, tgt, variables, freed, kept, certified):
        """Counterfactuals for the kept cells of certified results (module docstring): PGD,
        then, with ``method="exact"`` and ``p = inf``, the MILP for the cells PGD missed."""
        n, g = kept.shape
        witnessed = torch.zeros_like(kept)
        pairs = (kept & certified.unsqueeze(1)).nonzero()
        if not self.counterfactuals or pairs.shape[0] == 0:
            return witnessed, x.new_zeros(0, *x.shape[1:]), pairs.new_zeros(0, 2), tgt.new_zeros(0)
        img, cell = pairs[:, 0], pairs[:, 1]
        box = freed[img].clone()
        box[torch.arange(img.shape[0], device=x.device), cell] = True
        pix = variables.pixel_mask(box, img)
        free = pix.expand(-1, variables.channels, -1).reshape(img.shape[0], *x.shape[1:])
        gen = torch.Generator().manual_seed(self.seed + 1)
        found, pts = find_witnesses(
            self.model, x[img], tgt[img], free, self.eps, self.p, self.domain,
            self.attack_steps, self.attack_restarts, gen,
        )
        if self.method == "exact" and self.p == math.inf and not found.all():
            rest = (~found).nonzero().squeeze(1)  # PGD failed: the MILP settles it
            ok, exact_pts = exact_witnesses(self.model, x[img[rest]], tgt[img[rest]], free[rest], self.eps, self.domain)
            found[rest[ok]] = True
            pts[rest[ok]] = exact_pts[ok]
        witnessed[img[found], cell[found]] = True
        cf = pts[found]
        with torch.no_grad():
            cls = self.model(cf).argmax(1) if cf.shape[0] else tgt.new_zeros(0)
        return witnessed, cf, pairs[found], cls
