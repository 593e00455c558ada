"""Exact bounds of small piecewise-linear networks by mixed-integer linear programming.

Each node becomes a block of continuous variables and adds its own encoding
(:meth:`evax.bounds.ops.base.Op.milp`): affine ops are equality constraints (their matrix is
read off by applying the op to a basis, so Linear, Conv2d, pooling, reshapes, BatchNorm and sums
are all covered); piecewise-linear activations (ReLU, LeakyReLU, Hardtanh) are written with
ReLUs ``r = max(w, 0)``, each unstable one with one binary ``a`` and the big-M constraints
(``l, u`` are sound pre-activation bounds computed first by ``ibp+forward+backward``)::

    r >= 0,  r >= w,  r <= u a,  r <= w - l (1 - a)

which is exact for ``a in {0, 1}``; max pooling selects one input per window with binaries.
Each specification row is minimised and maximised with scipy's HiGHS solver. Only ``p=inf``
sets (boxes) are supported; the cost grows exponentially with the number of unstable neurons:
this is the ground truth for tightness studies on tiny networks, not a production method.
"""

from __future__ import annotations

import copy
import math

import numpy as np
import torch

from evax.bounds.graph import Graph
from evax.bounds.milp import MILP
from evax.bounds.propagate import Propagator
from evax.errors import InvalidInputError
from evax.perturbation import Ball, PerturbationSet

MAX_BINARIES = 400


def exact_bounds(graph: Graph, inset: PerturbationSet, spec: torch.Tensor | None):
    """Exact ``(lower, upper)`` of ``spec @ f(x)`` over each box, shapes ``(N, K)``."""
    if isinstance(inset, Ball) and inset.p != math.inf:
        raise InvalidInputError("method='exact' supports only p=inf balls (boxes)")
    cpu = inset.to(device="cpu", dtype=torch.float64)
    graph = copy.deepcopy(graph).to(device="cpu", dtype=torch.float64)
    prop = Propagator(graph, cpu, frozenset({"ibp", "forward", "backward"}))
    prop.run(None)
    n_out = graph.output_size
    if spec is None:
        spec_np = np.broadcast_to(np.eye(n_out), (cpu.batch_size, n_out, n_out))
    else:
        spec_np = spec.detach().cpu().double().numpy()
    lows = np.zeros(spec_np.shape[:2])
    highs = np.zeros(spec_np.shape[:2])
    for b in range(cpu.batch_size):
        model, out = _build_problem(graph, cpu, prop, b)
        for k in range(spec_np.shape[1]):
            objective = dict(zip(out.tolist(), spec_np[b, k].tolist(), strict=True))
            lows[b, k] = model.solve(objective)
            highs[b, k] = model.solve(objective, maximize=True)
    dev = inset.center.device
    return torch.as_tensor(lows, device=dev), torch.as_tensor(highs, device=dev)


def exact_counterexamples(graph: Graph, inset: PerturbationSet, spec: torch.Tensor):
    """For each box, the point maximising its specification rows, when that maximum is > 0.

    Used with margin rows ``f_c' - f_c``: a positive maximum is a point of the box that a
    classifier puts in class ``c'`` (or ties it), found by the same MILP as
    :func:`exact_bounds`, so the search is complete: no point is returned only when none exists.

    Args:
        graph, inset: as :func:`exact_bounds` (``p=inf`` boxes); ``spec`` ``(N, K, n_out)``.

    Returns:
        ``(found (N,) bool, points (N, *S) float64, values (N,))``: ``points[b]`` (clipped into
        the box against solver round-off) maximises the best row of box ``b``, of optimal value
        ``values[b]``; ``found`` where that value is > 0. Points where nothing was found are the
        box centres.
    """
    if isinstance(inset, Ball) and inset.p != math.inf:
        raise InvalidInputError("exact counterexamples support only p=inf balls (boxes)")
    cpu = inset.to(device="cpu", dtype=torch.float64)
    graph = copy.deepcopy(graph).to(device="cpu", dtype=torch.float64)
    prop = Propagator(graph, cpu, frozenset({"ibp", "forward", "backward"}))
    prop.run(None)
    spec_np = spec.detach().cpu().double().numpy()
    lo, hi = cpu.interval()
    points = cpu.center.clone()
    values = np.full(cpu.batch_size, -np.inf)
    d = points[0].numel()
    for b in range(cpu.batch_size):
        model, out = _build_problem(graph, cpu, prop, b)
        for k in range(spec_np.shape[1]):
            objective = dict(zip(out.tolist(), spec_np[b, k].tolist(), strict=True))
            value, x = model.solve_point(objective, maximize=True)
            if value > values[b]:
                values[b] = value
                points[b] = torch.as_tensor(x[:d]).view(points[b].shape)  # the input block
    points = torch.minimum(torch.maximum(points, lo), hi)
    dev = inset.center.device
    values_t = torch.as_tensor(values, device=dev)
    return values_t > 0, points.to(dev), values_t


def _node_bounds(prop: Propagator, j: int, b: int) -> tuple[np.ndarray, np.ndarray]:
    """Sound bounds of node ``j`` for box ``b``: the best proven, else the IBP chain."""
    lo, hi = prop.best.get(j, prop.ibp.get(j))
    shape = prop.graph.nodes[j].shape
    return lo[b].reshape(shape).numpy(), hi[b].reshape(shape).numpy()


def _build_problem(graph: Graph, inset: PerturbationSet, prop: Propagator, b: int) -> tuple[MILP, np.ndarray]:
    """The MILP of box ``b``: one variable block per node; returns it and the output variables."""
    model = MILP()
    lo, hi = inset.interval()
    variables: list[np.ndarray] = [model.add_vars(lo[b].reshape(-1).numpy(), hi[b].reshape(-1).numpy())]
    for node in graph.nodes[1 : graph.output + 1]:
        free = np.full(node.numel, np.inf)
        out = model.add_vars(-free, free)
        ins = [variables[j] for j in node.inputs]
        node.op.milp(model, ins, out, [_node_bounds(prop, j, b) for j in node.inputs])
        variables.append(out)
        if model.n_binary > MAX_BINARIES:
            raise InvalidInputError(
                f"method='exact' would need more than {MAX_BINARIES} binary variables; "
                "use a smaller network or a smaller perturbation"
            )
    return model, variables[graph.output]
