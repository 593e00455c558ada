"""``evax.bound``: bounds of a network's outputs over a perturbation set."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from evax.bounds.differentiable import check_differentiable, grad_mode
from evax.bounds.graph import Graph, build_graph, check_against_model
from evax.bounds.propagate import (
    AlphaOptions,
    Propagator,
    bounds_its_own_temporaries,
    box_roots,
    estimate_floats_per_box,
    estimate_largest_tensor,
    estimate_state_floats_per_box,
    parse_method,
)
from evax.core.modes import eval_mode
from evax.errors import InvalidInputError
from evax.perturbation import PerturbationSet

DEFAULT_METHOD = "ibp+backward"
"""The default bound method: CROWN with IBP intersected at every node and at the output.

Not the EVA paper's ``ibp+forward+backward``: inside a coupled run forward is provably
dominated by backward (:func:`evax.bounds.propagate.forward_dominated`), so that combination
adds only forward's standalone run, which never tightened a bound beyond float32 rounding
(relative 2e-6) on the zoo's MNIST / Fashion-MNIST MLPs at eps 0.02-0.5 (3 images x 145 EVA
boxes each) nor on 16 random nets of every op x 3 norms, and costs 1.4-2.4x CROWN's time.
Name ``"ibp+forward+backward"`` to get it (the reproduction tables do)."""

_DEFAULT_MEMORY = 2 * 2**30  # bytes one chunk may use, when batch_size is automatic
_TEMPORARY_BYTES = 32 * 2**20  # target size of the largest temporary of a chunk
_CERTIFY_REL_MARGIN = 1e-7


@dataclass
class Bounds:
    """Guaranteed bounds ``lower <= spec @ f(x) <= upper`` for every ``x`` of the set.

    ``lower`` and ``upper`` have shape ``(N, K)``. Unpacks as ``lower, upper = bounds``.
    """

    lower: torch.Tensor
    upper: torch.Tensor

    def __iter__(self):
        yield self.lower
        yield self.upper

    @property
    def width(self) -> torch.Tensor:
        """``upper - lower``, shape ``(N, K)``."""
        return self.upper - self.lower

    def contains(self, values: torch.Tensor, atol: float = 0.0) -> torch.Tensor:
        """Whether ``values`` (``(..., N, K)``) lie inside the bounds (elementwise bool)."""
        return (values >= self.lower - atol) & (values <= self.upper + atol)




def get_graph(model: nn.Module, input_shape: tuple[int, ...], device, dtype) -> Graph:
    """The bound graph of ``model`` for per-sample ``input_shape``, in ``dtype``.

    The model is traced anew on every call (a few milliseconds, one forward pass of a batch of
    2 and one of 3): whatever the graph depends on -- submodules, Python attributes read in
    ``forward``, weights changed through ``.data`` -- a cached graph could silently go stale,
    and a stale graph is a false proof.
    """
    example = torch.zeros((2, *input_shape), device=device, dtype=_model_dtype(model))
    graph = build_graph(model, example)
    check_against_model(model, graph, device, _model_dtype(model))
    if dtype != _model_dtype(model):
        graph.to(dtype=dtype)
    return graph


def _model_device(model: nn.Module, fallback: torch.device) -> torch.device:
    for t in list(model.parameters()) + list(model.buffers()):
        return t.device
    return fallback


def _model_dtype(model: nn.Module) -> torch.dtype:
    for t in model.parameters():
        if t.is_floating_point():
            return t.dtype
    return torch.get_default_dtype()


def _check_spec(spec, n: int, n_out: int, device, dtype) -> torch.Tensor | None:
    if spec is None:
        return None
    if not isinstance(spec, torch.Tensor):
        raise InvalidInputError(f"spec must be a torch.Tensor, got {type(spec).__name__}")
    if spec.ndim == 2:
        spec = spec.unsqueeze(0)
    if spec.ndim != 3 or spec.shape[0] not in (1, n) or spec.shape[2] != n_out:
        raise InvalidInputError(
            f"spec must have shape (N={n}, K, n_out={n_out}) or (K, n_out); got {tuple(spec.shape)}"
        )
    if spec.shape[1] == 0:
        raise InvalidInputError("spec has no rows (K = 0)")
    if not torch.isfinite(spec).all():
        raise InvalidInputError("spec contains NaN or inf")
    return spec.to(device=device, dtype=dtype).expand(n, -1, -1)


def _run_combination(graph: Graph, inset: PerturbationSet, methods: frozenset[str], spec,
                     alpha: AlphaOptions | None = None, side: str = "both", chunk: dict | None = None):
    """Coupled propagation of ``methods``, intersected with members run on their own.

    Relaxations (CROWN's adaptive ReLU slope, the max-pool argmax) are not monotone in the
    intermediate bounds: tighter intermediate bounds can, rarely, give a looser final bound.
    Intersecting with every linear member's standalone result makes a combination provably
    never looser than any of its members. IBP's standalone run is skipped: interval arithmetic
    is inclusion-isotonic (every op's ``interval`` maps sub-intervals to sub-intervals), and the
    coupled run's IBP chain is intersected with the tighter bounds at every node, so its IBP
    output is inside the standalone one. A linear member's run is skipped too when the coupled
    run's intermediate bounds were that member's own at every node
    (:meth:`Propagator.dominated`). The coupled run itself computes no forward forms where
    backward runs (:func:`~evax.bounds.propagate.forward_dominated`: they cannot tighten it), so
    ``ibp+forward+backward`` costs the coupled ``ibp+backward`` run plus forward's standalone
    run, whose own intermediate bounds build other relaxations.

    ``chunk``: ``stem_cache`` and ``box_ids`` for the propagators (see :class:`Propagator`).
    """
    chunk = chunk or {}
    coupled = Propagator(graph, inset, methods, alpha=alpha, **chunk)
    lo, hi = coupled.run(spec, side)
    if len(methods) > 1:
        for member in sorted(methods - {"ibp"}):
            if coupled.dominated(member):
                continue  # its standalone run would rebuild the coupled run's relaxations
            lo_m, hi_m = Propagator(graph, inset, frozenset({member}), alpha=alpha, **chunk).run(spec, side)
            lo, hi = torch.maximum(lo, lo_m), torch.minimum(hi, hi_m)
    return lo, hi


def _box_roots(inset: PerturbationSet, input_shape) -> torch.Tensor:
    """``(N,)`` each box's root (:func:`~evax.bounds.propagate.box_roots`)."""
    centre = inset.reference().reshape(inset.batch_size, *input_shape)
    return box_roots(centre, inset.box_radius().reshape(centre.shape))[0]


def _chunk_index(start: int, stop: int, roots: torch.Tensor | None, device) -> torch.Tensor:
    """Boxes of the chunk ``[start, stop)``, preceded by the roots of its boxes that lie in an
    earlier chunk (their results are dropped): a chunk cut in the middle of a group of boxes
    (EVA's boxes of one image) still shares the stem's work with the group's root, which
    costs one box more rather than a whole box's stem for every box of the chunk (done for
    roots shared by at least two boxes of the chunk)."""
    index = torch.arange(start, stop, device=device)
    if roots is None:
        return index
    earlier, count = torch.unique(roots[start:stop], return_counts=True)
    earlier = earlier[(earlier < start) & (count > 1)].to(device)  # one box alone: no gain
    return torch.cat([earlier, index]) if earlier.numel() else index


def _alpha_options(iterations, lr, intermediate) -> AlphaOptions:
    if isinstance(iterations, bool) or not isinstance(iterations, int) or iterations < 0:
        raise InvalidInputError(f"alpha_iterations must be an int >= 0, got {iterations!r}")
    if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not 0 < lr < float("inf"):
        raise InvalidInputError(f"alpha_lr must be a finite number > 0, got {lr!r}")
    if not isinstance(intermediate, bool):
        raise InvalidInputError(f"alpha_intermediate must be True or False, got {intermediate!r}")
    return AlphaOptions(iterations, float(lr), intermediate)


BOUND_OPTIONS = ("alpha_iterations", "alpha_lr", "alpha_intermediate")


def check_bound_options(options: Mapping[str, Any] | None) -> dict[str, Any]:
    """Validate the method options an explainer forwards to :func:`bound` (``alpha_iterations``,
    ``alpha_lr``, ``alpha_intermediate``); returns them as a dict (``{}`` for ``None``)."""
    if options is None:
        return {}
    if not isinstance(options, Mapping):
        raise InvalidInputError(f"bound_options must be a dict, got {type(options).__name__}")
    unknown = sorted(set(options) - set(BOUND_OPTIONS))
    if unknown:
        raise InvalidInputError(f"unknown bound option(s) {unknown}; known: {list(BOUND_OPTIONS)}")
    defaults = {"alpha_iterations": 20, "alpha_lr": 0.5, "alpha_intermediate": False}
    merged = {**defaults, **options}
    _alpha_options(merged["alpha_iterations"], merged["alpha_lr"], merged["alpha_intermediate"])
    return dict(options)


def bound(
    model: nn.Module,
    ball: PerturbationSet,
    method: str = DEFAULT_METHOD,
    spec: torch.Tensor | None = None,
    *,
    batch_size: int | None = None,
    certify: bool = False,
    alpha_iterations: int = 20,
    alpha_lr: float = 0.5,
    alpha_intermediate: bool = False,
    side: str = "both",
    differentiable: bool = False,
) -> Bounds:
    """Guaranteed bounds of ``spec @ model(x)`` for every ``x`` in ``ball``.

    Args:
        model: a classifier ``(N, *S) -> (N, n_out)`` that torch.fx can trace, made of the
            supported layers (``evax.bounds.supported_layers()``). It is analysed in eval
            mode; its mode is restored afterwards.
        ball: an :class:`evax.Ball` (or :class:`evax.perturbation.Box`) of ``N`` boxes; different
            boxes may fix different variables.
        method: ``"ibp"``, ``"forward"``, ``"backward"`` (alias ``"crown"``, CROWN with CROWN
            intermediate bounds), ``"crown-ibp"`` (IBP intermediate bounds and one CROWN pass
            from the specification rows: the cheap linear method of certified training),
            ``"alpha-crown"`` (CROWN intermediate bounds; the final pass with the ReLU
            relaxations' free slopes optimised per box and row, never looser than CROWN), any
            ``+``-combination (every intermediate and final bound is the intersection of what
            each member proves, and the final bound is also intersected with each linear
            member's standalone result, so a combination is never looser than a member; where
            backward runs, forward's forms are not computed in the coupled run, as they cannot
            tighten anything there: :func:`~evax.bounds.propagate.forward_dominated`), or
            ``"exact"`` (MILP, small piecewise-linear nets, ``p=inf``). Default
            :data:`DEFAULT_METHOD` (``"ibp+backward"``; see there why not the EVA paper's
            ``"ibp+forward+backward"``).
        spec: optional ``(N, K, n_out)`` (or shared ``(K, n_out)``) matrix ``C``; bounds
            ``C f(x)`` directly, which is tighter than combining intervals of ``f``.
        batch_size: boxes per chunk; ``None`` picks a chunk whose largest temporary is about
            32 MiB (and whose total stays under about 2 GiB); backward-only methods on a
            convolutional stem keep their temporaries in budget themselves, so ``None`` gives
            them as many boxes as their state allows (about 2 GiB): boxes that differ in a few
            pixels, as EVA's, share the stem's work.
        certify: compute in float64 and widen the results by a relative rounding margin of
            ``1e-7 * (1 + max|bound|)`` (far above the accumulated float64 rounding error of any
            network this engine can handle), so the guarantee survives floating point.
        alpha_iterations: alpha-CROWN's Adam steps (``0`` gives CROWN's bound).
        alpha_lr: alpha-CROWN's learning rate.
        alpha_intermediate: alpha-CROWN optimises the slopes for every intermediate node's
            bounds too (each node's own slopes, both sides; ``alpha_iterations`` times CROWN's
            cost per node; see :class:`~evax.bounds.propagate.AlphaOptions`). Default False:
            CROWN intermediate bounds.
        side: ``"both"``; or ``"upper"`` / ``"lower"`` when only that side is read: the final
            backward pass then bounds only its rows (half the work of CROWN-IBP's main pass),
            and the other side comes back as ``-inf`` / ``+inf``. Intermediate bounds are
            unchanged, so the side computed is the same as with ``"both"``.
        differentiable: the bounds are a differentiable function of the model's live
            parameters (for certified training: ``loss.backward()`` reaches
            ``model.parameters()``); same values. Methods ``ibp`` and ``crown-ibp`` only
            (:mod:`evax.bounds.differentiable`).

    Returns:
        :class:`Bounds` with ``lower``/``upper`` of shape ``(N, K)`` (``K = n_out`` without
        spec), on the model's device, in float32 (float64 with ``certify``).
    """
    if not isinstance(model, nn.Module):
        raise InvalidInputError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if not isinstance(ball, PerturbationSet):
        raise InvalidInputError(f"ball must be an evax.Ball or Box, got {type(ball).__name__}")
    method_key = method.strip().lower() if isinstance(method, str) else method
    if batch_size is not None and (
        isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1
    ):
        raise InvalidInputError(f"batch_size must be a positive int or None, got {batch_size!r}")
    alpha = _alpha_options(alpha_iterations, alpha_lr, alpha_intermediate)
    if side not in ("both", "upper", "lower"):
        raise InvalidInputError(f"side must be 'both', 'upper' or 'lower', got {side!r}")
    check_differentiable(method, differentiable)

    declared = getattr(model, "input_shape", None)  # set by evax.zoo.from_onnx and its wrappers
    if isinstance(declared, tuple) and all(isinstance(d, int) for d in declared) and declared != ball.shape:
        layout = getattr(model, "input_layout", None)
        note = " (the wrapper takes NCHW tensors)" if layout == "NHWC" else ""
        raise InvalidInputError(
            f"the model declares per-sample inputs of shape {declared}{note}; the ball has {ball.shape}"
        )
    device = _model_device(model, ball.center.device)
    dtype = torch.float64 if certify else _model_dtype(model)
    with eval_mode(model):
        with grad_mode(differentiable):
            graph = get_graph(model, ball.shape, device, dtype)
            n = ball.batch_size
            spec_t = _check_spec(spec, n, graph.output_size, device, dtype)
            inset = ball.to(device=device, dtype=dtype)
            if method_key == "exact":
                from evax.bounds.exact import exact_bounds

                lower, upper = exact_bounds(graph, inset, spec_t)
                if side == "upper":
                    lower = torch.full_like(lower, -torch.inf)
                elif side == "lower":
                    upper = torch.full_like(upper, torch.inf)
            else:
                methods = parse_method(method)
                shares_stem = bounds_its_own_temporaries(graph, methods, inset)
                if batch_size is None and shares_stem:
                    itemsize = torch.finfo(dtype).bits // 8
                    state = estimate_state_floats_per_box(graph) * itemsize
                    batch_size = max(1, min(n, _DEFAULT_MEMORY // state))
                    batch_size = -(-n // -(-n // batch_size))
                if batch_size is None:
                    itemsize = torch.finfo(dtype).bits // 8
                    per_box = estimate_floats_per_box(graph, methods) * itemsize
                    largest = estimate_largest_tensor(graph, methods) * itemsize
                    batch_size = max(1, min(_DEFAULT_MEMORY // per_box, _TEMPORARY_BYTES // largest))
                    batch_size = -(-n // -(-n // batch_size))  # equal chunks: no small last one
                # Boxes share a stem's work only through CROWN's intermediate bounds.
                crown_nodes = bool(methods & {"backward", "alpha-crown"})
                roots = _box_roots(inset, graph.input_shape) if shares_stem and crown_nodes and batch_size < n else None
                los, his = [], []
                stem_cache: dict = {}  # roots' stem bounds, for the chunks that hold them again
                for start in range(0, n, batch_size):
                    index = _chunk_index(start, min(n, start + batch_size), roots, device)
                    extra = index.numel() - min(batch_size, n - start)
                    sub_spec = None if spec_t is None else spec_t[index]
                    chunk = {"stem_cache": stem_cache, "box_ids": index} if roots is not None else None
                    lo, hi = _run_combination(graph, inset.select(index), methods, sub_spec, alpha, side, chunk)
                    los.append(lo[extra:])
                    his.append(hi[extra:])
                lower, upper = torch.cat(los), torch.cat(his)
    if certify:
        magnitude = torch.maximum(lower.abs(), upper.abs())
        if side != "both":
            magnitude = (upper if side == "upper" else lower).abs()
        scale = 1 + magnitude
        lower = lower - _CERTIFY_REL_MARGIN * scale
        upper = upper + _CERTIFY_REL_MARGIN * scale
    computed = [t for t, s in ((lower, "lower"), (upper, "upper")) if side in ("both", s)]
    if not all(torch.isfinite(t).all() for t in computed):
        raise InvalidInputError("bounds are not finite: the model or set overflows float precision")
    return Bounds(lower, upper)


__all__ = ["Bounds", "bound"]
