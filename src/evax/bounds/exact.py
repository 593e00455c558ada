"""Exact bounds of small piecewise-linear networks by mixed-integer linear programming.

Each node becomes a block of continuous variables; linear ops are equality constraints (their
matrix is read off by applying the op to a basis, so Linear, Conv2d, pooling, reshapes,
BatchNorm and sums are all covered); every unstable ReLU/LeakyReLU ``y = max(z, s z)`` gets one
binary ``a`` and the big-M constraints (``l, u`` are sound pre-activation bounds computed first
by ``ibp+forward+backward``)::

    y >= z,  y >= s z,  y <= s z + (1 - s) u a,  y <= z - (1 - s) l (1 - a)

which is exact for ``a in {0, 1}``. Each specification row is minimised and maximised with
scipy's HiGHS solver. Only ``p=inf`` sets (boxes) are supported; the cost grows exponentially
with the number of unstable neurons: this is the ground truth for tightness studies on tiny
networks, not a production method.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from scipy import sparse
from scipy.optimize import Bounds as LPBounds
from scipy.optimize import LinearConstraint, milp

from evax.bounds.graph import Graph
from evax.bounds.ops.activation import LeakyReLU, ReLU
from evax.bounds.ops.base import LinearOp
from evax.bounds.propagate import Propagator
from evax.errors import InvalidInputError, UnsupportedLayerError
from evax.perturbation import Ball, PerturbationSet

MAX_BINARIES = 400


def _dense_matrix(op: LinearOp, in_shapes: list[tuple[int, ...]], dtype) -> list[np.ndarray]:
    """The matrix of ``op`` w.r.t. each input: ``(numel_out, numel_in_k)``."""
    mats = []
    for k, shape in enumerate(in_shapes):
        numel = int(np.prod(shape))
        basis = torch.eye(numel, dtype=dtype).view(numel, *shape)
        args = [basis if j == k else torch.zeros((numel, *s), dtype=dtype) for j, s in enumerate(in_shapes)]
        mats.append(op.apply(*args).reshape(numel, -1).T.double().numpy())
    return mats


def exact_bounds(graph: Graph, inset: PerturbationSet, spec: torch.Tensor | None):
    """Exact ``(lower, upper)`` of ``spec @ f(x)`` over each box, shapes ``(N, K)``."""
    if isinstance(inset, Ball) and inset.p != math.inf:
        raise InvalidInputError("method='exact' supports only p=inf balls (boxes)")
    for node in graph.nodes[1:]:
        if not isinstance(node.op, (LinearOp, ReLU, LeakyReLU)):
            raise UnsupportedLayerError(
                node.name,
                type(node.op).__name__,
                "method='exact' handles only piecewise-linear networks of linear layers and ReLU/LeakyReLU",
            )
    cpu = inset.to(device="cpu", dtype=torch.float64)
    graph = _cpu_graph(graph)
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
        problem = _build_problem(graph, cpu, prop, b)
        for k in range(spec_np.shape[1]):
            lows[b, k], highs[b, k] = _solve_row(problem, graph, spec_np[b, k])
    dev = inset.center.device
    return torch.as_tensor(lows, device=dev), torch.as_tensor(highs, device=dev)


def _cpu_graph(graph: Graph) -> Graph:
    import copy

    return copy.deepcopy(graph).to(device="cpu", dtype=torch.float64)


def _build_problem(graph: Graph, inset: PerturbationSet, prop: Propagator, b: int) -> dict:
    offsets, total = [], 0
    for node in graph.nodes:
        offsets.append(total)
        total += node.numel
    lo, hi = inset.interval()
    var_lo = np.full(total, -np.inf)
    var_hi = np.full(total, np.inf)
    var_lo[: graph.nodes[0].numel] = lo[b].reshape(-1).numpy()
    var_hi[: graph.nodes[0].numel] = hi[b].reshape(-1).numpy()
    rows, cols, vals, row_lo, row_hi = [], [], [], [], []
    integrality = [0] * total
    extra_lo: list[float] = []
    extra_hi: list[float] = []
    n_row = 0

    def add_row(entries: list[tuple[int, float]], low: float, high: float) -> None:
        nonlocal n_row
        for c, v in entries:
            rows.append(n_row)
            cols.append(c)
            vals.append(v)
        row_lo.append(low)
        row_hi.append(high)
        n_row += 1

    for i, node in enumerate(graph.nodes[1:], start=1):
        op, out0 = node.op, offsets[i]
        if isinstance(op, LinearOp):
            in_shapes = [graph.nodes[j].shape for j in node.inputs]
            mats = _dense_matrix(op, in_shapes, torch.float64)
            bias = op.evaluate(*[torch.zeros((1, *s), dtype=torch.float64) for s in in_shapes])
            bias = bias.reshape(-1).numpy()
            mat = sparse.hstack(
                [sparse.csr_matrix(m) for m in mats] + [-sparse.identity(node.numel, format="csr")]
            ).tocoo()
            col_map = np.concatenate(
                [offsets[j] + np.arange(graph.nodes[j].numel) for j in node.inputs]
                + [out0 + np.arange(node.numel)]
            )
            rows.extend((mat.row + n_row).tolist())
            cols.extend(col_map[mat.col].tolist())
            vals.extend(mat.data.tolist())
            row_lo.extend((-bias).tolist())
            row_hi.extend((-bias).tolist())
            n_row += node.numel
            continue
        slope = op.negative_slope if isinstance(op, LeakyReLU) else 0.0
        j = node.inputs[0]
        z_lo, z_hi = (t[b].reshape(-1).numpy() for t in prop.best[j])
        for q in range(node.numel):
            z, y = offsets[j] + q, out0 + q
            lq, uq = float(z_lo[q]), float(z_hi[q])
            if lq >= 0:
                add_row([(y, 1.0), (z, -1.0)], 0.0, 0.0)
            elif uq <= 0:
                add_row([(y, 1.0), (z, -slope)], 0.0, 0.0)
            else:
                a = total + len(extra_lo)
                extra_lo.append(0.0)
                extra_hi.append(1.0)
                integrality.append(1)
                add_row([(y, 1.0), (z, -1.0)], 0.0, np.inf)
                add_row([(y, 1.0), (z, -slope)], 0.0, np.inf)
                add_row([(y, 1.0), (z, -slope), (a, -(1 - slope) * uq)], -np.inf, 0.0)
                add_row([(y, 1.0), (z, -1.0), (a, -(1 - slope) * lq)], -np.inf, -(1 - slope) * lq)
    if len(extra_lo) > MAX_BINARIES:
        raise InvalidInputError(
            f"method='exact' would need {len(extra_lo)} binary variables (> {MAX_BINARIES}); "
            "use a smaller network or a smaller perturbation"
        )
    n_var = total + len(extra_lo)
    a_mat = sparse.csr_matrix((vals, (rows, cols)), shape=(n_row, n_var))
    return {
        "A": a_mat,
        "lo": np.array(row_lo),
        "hi": np.array(row_hi),
        "var_lo": np.concatenate([var_lo, extra_lo]),
        "var_hi": np.concatenate([var_hi, extra_hi]),
        "integrality": np.array(integrality),
        "n_var": n_var,
        "out": offsets[graph.output],
    }


def _solve_row(problem: dict, graph: Graph, row: np.ndarray) -> tuple[float, float]:
    c = np.zeros(problem["n_var"])
    out = problem["out"]
    c[out : out + graph.output_size] = row
    cons = LinearConstraint(problem["A"], problem["lo"], problem["hi"])
    bnds = LPBounds(problem["var_lo"], problem["var_hi"])
    res = []
    for sign in (1.0, -1.0):
        r = milp(
            sign * c,
            constraints=cons,
            bounds=bnds,
            integrality=problem["integrality"],
            options={"mip_rel_gap": 0.0},
        )
        if not r.success:
            raise RuntimeError(f"MILP solver failed: {r.message}")
        res.append(sign * r.fun)
    return res[0], res[1]
