"""Sampling-based variants of EVA (no guarantee): the empirical EVA and the hybrid EVA.

* :class:`EmpiricalEVA` (App. B, Eq. 3-4) estimates the adversarial overlap from ``n``
  uniform samples of the ball: ``AO_hat(x, B) = max_{i, c' != c} f_c'(x + delta_i) -
  f_c(x + delta_i)``. It is a *lower* estimate of the true AO (never above the verified bound).
* :class:`HybridEVA` (Sec. 3.4) splits ``f = g o h`` at a module, bounds ``h`` *empirically*
  over samples of ``B`` and ``B_u`` (the min/max of the sampled activations, widened to contain
  ``h(x)``), then propagates these boxes through ``g`` with verified perturbation analysis.
  The guarantee is lost for the sampled part: the activation boxes may miss the true extremes
  of ``h``, so ``ao`` is not an upper bound of ``AO(x, B)`` any more and there is no
  ``certified_robust`` flag.

Both use the same samples for every box of an image: a sample of ``B_u`` is the sample of
``B`` with the variables ``u`` reset to ``x``, which is uniform on ``B_u`` (``p=inf``), and every
such point also lies in ``B``; the estimate of ``AO(x, B)`` therefore takes the max over all of
them, which keeps the scores ``>= 0`` (Eq. 4).
"""

from __future__ import annotations

import math
import time

import torch
import torch.fx
from torch import nn

from evax import groups as groups_mod
from evax.attribution.base import Attribution, TargetLike, check_inputs, resolve_target
from evax.attribution.eva import DEFAULT_GROUPS, Explanation, _norm_name, margin_spec
from evax.bounds.api import DEFAULT_METHOD, bound, check_bound_options
from evax.bounds.propagate import parse_method
from evax.core.modes import eval_mode
from evax.errors import InvalidInputError, UnsupportedLayerError
from evax.perturbation import Ball, Box


def _box_points(
    x: torch.Tensor, masks: torch.Tensor, ball: Ball, n: int, gen: torch.Generator
) -> torch.Tensor:
    """``n`` samples of ``B`` then of every ``B_u`` for one image: ``(n, 1 + G, C, H, W)``."""
    pts = ball.sample(n, generator=gen, corners=0.0)[:, 0]  # (n, C, H, W)
    keep = (~masks[0]).unsqueeze(1).to(x.dtype)  # (G, 1, H, W): 1 where the box perturbs
    fixed_pts = x + (pts.unsqueeze(1) - x) * keep.unsqueeze(0)  # (n, G, C, H, W)
    return torch.cat([pts.unsqueeze(1), fixed_pts], dim=1)


class _SamplingEVA(Attribution):
    def __init__(self, model, eps, p, n_samples, groups, domain, batch_size, seed, allow_overlap):
        super().__init__(model)
        Ball(torch.zeros(1, 1), eps, p)
        if isinstance(n_samples, bool) or not isinstance(n_samples, int) or n_samples < 1:
            raise InvalidInputError(f"n_samples must be a positive int, got {n_samples!r}")
        self.eps, self.p, self.n_samples, self.groups = eps, p, n_samples, groups
        self.domain, self.batch_size, self.seed = domain, batch_size or 4096, seed
        self.allow_overlap = allow_overlap

    def _prepare(self, inputs, target):
        check_inputs(inputs)
        tgt = resolve_target(self.model, inputs, target)
        masks = groups_mod.resolve(self.groups, inputs, self.allow_overlap)
        return tgt, masks

    def _ball(self, x: torch.Tensor) -> Ball:
        return Ball(x, self.eps, self.p, domain=self.domain)

    def _batches(self, x, masks):
        """Yield point batches ``(b, 1 + G, C, H, W)`` covering ``n_samples`` samples."""
        gen = torch.Generator(device=x.device).manual_seed(self.seed)
        boxes = 1 + masks.shape[1]
        per = max(1, self.batch_size // boxes)
        ball = self._ball(x.unsqueeze(0))
        for start in range(0, self.n_samples, per):
            yield _box_points(x, masks, ball, min(per, self.n_samples - start), gen)

    def attribute(self, inputs: torch.Tensor, target: TargetLike = None) -> torch.Tensor:
        return self.explain(inputs, target).map

    def attribute_raw(self, inputs: torch.Tensor, target: TargetLike = None) -> torch.Tensor:
        return self.attribute(inputs, target).unsqueeze(1).expand(-1, inputs.shape[1], -1, -1)


def _finish(scores_ao: torch.Tensor, masks, tgt, method, params, start) -> Explanation:
    """``(N, 1 + G)`` estimates -> Explanation; AO(B) takes the max over every box's samples."""
    ao = scores_ao.amax(dim=1)
    ao_fixed = scores_ao[:, 1:]
    scores = ao.unsqueeze(1) - ao_fixed
    return Explanation(
        map=groups_mod.paint(scores, masks),
        scores=scores,
        ao=ao,
        ao_fixed=ao_fixed,
        certified_robust=None,
        target=tgt,
        masks=masks,
        method=method,
        params=params,
        seconds=time.perf_counter() - start,
    )


class EmpiricalEVA(_SamplingEVA):
    """EVA with the AO estimated from uniform samples of the ball (Eq. 3-4). No guarantee.

    Args:
        model: any classifier (no layer restriction: only forward passes).
        eps, p, groups, domain: as :class:`evax.EVA`.
        n_samples: samples of the ball per image (shared by every ``B_u``).
        batch_size: points per forward pass.
        seed: seed of the ``torch.Generator`` drawing the samples.
    """

    name = "empirical-eva"

    def __init__(
        self,
        model: nn.Module,
        eps: float = 0.5,
        p: float = math.inf,
        n_samples: int = 1000,
        groups=DEFAULT_GROUPS,
        domain=None,
        batch_size: int | None = None,
        seed: int = 0,
        allow_overlap: bool = False,
    ) -> None:
        super().__init__(model, eps, p, n_samples, groups, domain, batch_size, seed, allow_overlap)

    def explain(self, inputs: torch.Tensor, target: TargetLike = None) -> Explanation:
        start = time.perf_counter()
        with eval_mode(self.model):
            tgt, masks = self._prepare(inputs, target)
            rows = []
            with torch.no_grad():
                n_out = self.model(inputs[:1]).shape[1]
                for i in range(inputs.shape[0]):
                    m = masks[0 if masks.shape[0] == 1 else i].unsqueeze(0)
                    best = torch.full((1 + m.shape[1],), -math.inf, device=inputs.device)
                    spec = margin_spec(tgt[i : i + 1], n_out)[0]  # (K, n_out)
                    for pts in self._batches(inputs[i], m):
                        logits = self.model(pts.reshape(-1, *inputs.shape[1:]))
                        margins = (logits @ spec.T).amax(dim=1).view(pts.shape[0], -1)
                        best = torch.maximum(best, margins.amax(dim=0))
                    rows.append(best)
        params = {
            "eps": float(self.eps),
            "p": _norm_name(self.p),
            "groups": int(masks.shape[1]),
            "n_samples": self.n_samples,
            "seed": self.seed,
        }
        return _finish(torch.stack(rows), masks, tgt, "empirical", params, start)


# -- hybrid EVA -----------------------------------------------------------------------------
class _Stop(Exception):  # noqa: N818 - control flow, not an error
    def __init__(self, value):
        self.value = value


def split_tail(model: nn.Module, split: str) -> nn.Module:
    """The part ``g`` of ``model`` after module ``split`` (``f = g o h``) as a module.

    Uses torch.fx with ``split`` kept as a leaf; raises :class:`InvalidInputError` naming the
    valid module names when ``split`` is not a module of the model, and
    :class:`UnsupportedLayerError` when the rest of the network also reads values computed
    before the split (a skip connection across it).
    """
    names = [n for n, _ in model.named_modules() if n]
    if split not in names:
        raise InvalidInputError(f"split {split!r} is not a module of the model; valid names: {names}")

    class _Tracer(torch.fx.Tracer):
        def is_leaf_module(self, m, qualname):
            return qualname == split or super().is_leaf_module(m, qualname)

    try:
        graph = _Tracer().trace(model)
    except Exception as exc:  # noqa: BLE001
        raise UnsupportedLayerError(
            "<model>", type(model).__name__, f"torch.fx cannot trace it: {exc}"
        ) from exc
    cut = [n for n in graph.nodes if n.op == "call_module" and n.target == split]
    if len(cut) != 1:
        raise InvalidInputError(f"module {split!r} is called {len(cut)} times; split at a module called once")
    after: set[torch.fx.Node] = set()
    for n in graph.nodes:
        if n is cut[0] or any(a in after or a is cut[0] for a in n.all_input_nodes):
            after.add(n)
    tail = torch.fx.Graph()
    env: dict[torch.fx.Node, torch.fx.Node] = {cut[0]: tail.placeholder("h")}
    for n in graph.nodes:
        if n is cut[0] or not (n in after or n.op == "get_attr"):
            continue
        for a in n.all_input_nodes:
            if a not in env:
                raise UnsupportedLayerError(
                    n.name, n.op, f"the model reads {a.name!r}, computed before {split!r}, after the split"
                )
        env[n] = tail.node_copy(n, lambda a: env[a])
    return torch.fx.GraphModule(model, tail)


class HybridEVA(_SamplingEVA):
    """Hybrid EVA for large models (Sec. 3.4): empirical bounds up to ``split``, verified after.

    Args:
        model: the classifier ``f = g o h``; only ``g`` (after ``split``) must be made of layers
            the bound engine supports.
        split: name of the module whose output is ``h(x)`` (e.g. ``"flatten"`` or
            ``"features"`` for the zoo's EfficientNet-Lite0).
        n_samples: samples of the ball per image to estimate the activation boxes.
        method: bound method used through ``g``. Default ``"ibp+backward"``
            (:data:`evax.bounds.DEFAULT_METHOD`): the forward mode costs (activation size) x
            (width of ``g``) per box, prohibitive at a conv layer (e.g. 1280 x 7 x 7 for
            EfficientNet's last feature map).
        eps, p, groups, domain, batch_size, seed: as :class:`EmpiricalEVA`.
        bound_options: keyword arguments of :func:`evax.bound` for the method (as :class:`EVA`).

    The explanation's ``ao`` is *not* a guaranteed bound (the sampled activation boxes can miss
    extremes of ``h``); everything after the split is verified for those boxes.
    """

    name = "hybrid-eva"

    def __init__(
        self,
        model: nn.Module,
        split: str,
        eps: float = 0.5,
        p: float = math.inf,
        n_samples: int = 64,
        method: str = DEFAULT_METHOD,
        groups=DEFAULT_GROUPS,
        domain=None,
        batch_size: int | None = None,
        seed: int = 0,
        allow_overlap: bool = False,
        bound_options=None,
    ) -> None:
        super().__init__(model, eps, p, n_samples, groups, domain, batch_size or 256, seed, allow_overlap)
        if method != "exact":
            parse_method(method)  # validate now, with a clear error
        self.split = split
        self.method = method
        self.bound_options = check_bound_options(bound_options)
        self.tail = split_tail(model, split)
        self._module = dict(model.named_modules())[split]

    def _features(self, x: torch.Tensor) -> torch.Tensor:
        """``h(x)`` for a batch, stopping the forward pass at the split module."""

        def hook(_m, _inp, out):
            raise _Stop(out)

        handle = self._module.register_forward_hook(hook)
        try:
            self.model(x)
        except _Stop as stop:
            return stop.value
        finally:
            handle.remove()
        raise InvalidInputError(f"module {self.split!r} was not called by the model's forward")

    def explain(self, inputs: torch.Tensor, target: TargetLike = None) -> Explanation:
        start = time.perf_counter()
        with eval_mode(self.model):
            tgt, masks = self._prepare(inputs, target)
            with torch.no_grad():
                n_out = self.model(inputs[:1]).shape[1]
                lows, highs = [], []
                for i in range(inputs.shape[0]):
                    m = masks[0 if masks.shape[0] == 1 else i].unsqueeze(0)
                    centre = self._features(inputs[i : i + 1])  # (1, *F)
                    lo = centre.expand(1 + m.shape[1], *centre.shape[1:]).clone()
                    hi = lo.clone()
                    for pts in self._batches(inputs[i], m):
                        h = self._features(pts.reshape(-1, *inputs.shape[1:]))
                        h = h.view(pts.shape[0], 1 + m.shape[1], *h.shape[1:])
                        lo = torch.minimum(lo, h.amin(dim=0))
                        hi = torch.maximum(hi, h.amax(dim=0))
                    lows.append(lo)
                    highs.append(hi)
            boxes = Box(torch.cat(lows), torch.cat(highs))
            g = masks.shape[1]
            spec = margin_spec(tgt, n_out).repeat_interleave(1 + g, dim=0)
            b = bound(self.tail, boxes, self.method, spec, side="upper", **self.bound_options)
            ao_all = b.upper.amax(dim=1).view(inputs.shape[0], 1 + g)
        ao = ao_all[:, 0]
        ao_fixed = torch.minimum(ao_all[:, 1:], ao.unsqueeze(1))
        scores = ao.unsqueeze(1) - ao_fixed
        params = {
            "eps": float(self.eps),
            "p": _norm_name(self.p),
            "groups": int(g),
            "n_samples": self.n_samples,
            "seed": self.seed,
            "split": self.split,
        }
        return Explanation(
            map=groups_mod.paint(scores, masks),
            scores=scores,
            ao=ao,
            ao_fixed=ao_fixed,
            certified_robust=None,
            target=tgt,
            masks=masks,
            method=f"hybrid:{self.method}",
            params=params,
            seconds=time.perf_counter() - start,
        )
