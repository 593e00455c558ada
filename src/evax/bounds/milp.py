"""A small builder of mixed-integer linear programs (scipy's HiGHS), used by the exact bounds.

Ops add their encodings through it (:meth:`evax.bounds.ops.base.Op.milp`): affine ops as
equality rows, piecewise-linear activations through :meth:`MILP.relu` (the big-M encoding of
``r = max(w, 0)`` with one binary per unstable neuron), which is exact for binary values.
Everything is vectorised over the neurons of a layer.
"""

from __future__ import annotations

import numpy as np
from scipy import sparse
from scipy.optimize import Bounds as LPBounds
from scipy.optimize import LinearConstraint, milp


class MILP:
    """Variables with box bounds, sparse linear rows ``lo <= A v <= hi`` and integrality."""

    def __init__(self) -> None:
        self.var_lo: list[np.ndarray] = []
        self.var_hi: list[np.ndarray] = []
        self.integer: list[np.ndarray] = []
        self.n_var = 0
        self._rows: list[np.ndarray] = []
        self._cols: list[np.ndarray] = []
        self._vals: list[np.ndarray] = []
        self.row_lo: list[np.ndarray] = []
        self.row_hi: list[np.ndarray] = []
        self.n_row = 0
        self.n_binary = 0

    def add_vars(self, lo, hi, integer: bool = False) -> np.ndarray:
        """New variables with bounds ``lo <= v <= hi`` (arrays of one shape); their indices."""
        lo = np.asarray(lo, dtype=float).reshape(-1)
        hi = np.asarray(hi, dtype=float).reshape(-1)
        idx = np.arange(self.n_var, self.n_var + lo.size)
        self.var_lo.append(lo)
        self.var_hi.append(hi)
        self.integer.append(np.full(lo.size, int(integer)))
        self.n_var += lo.size
        if integer:
            self.n_binary += lo.size
        return idx

    def add_rows(self, terms: list[tuple[np.ndarray, np.ndarray]], lo, hi) -> None:
        """``R`` rows ``lo <= sum_t coef_t * v[var_t] <= hi``; each term is ``(var (R,), coef (R,))``."""
        r = max([np.size(lo), np.size(hi)] + [np.size(var) for var, _ in terms])
        lo = np.broadcast_to(np.asarray(lo, dtype=float).reshape(-1), (r,)).copy()
        rows = np.arange(self.n_row, self.n_row + r)
        for var, coef in terms:
            var = np.broadcast_to(np.asarray(var), (r,))
            coef = np.broadcast_to(np.asarray(coef, dtype=float), (r,))
            self._rows.append(rows)
            self._cols.append(var)
            self._vals.append(coef)
        self.row_lo.append(lo)
        self.row_hi.append(np.broadcast_to(np.asarray(hi, dtype=float), (r,)).copy())
        self.n_row += r

    def add_linear_equality(self, mats: list[np.ndarray], ins: list[np.ndarray], out: np.ndarray,
                            bias: np.ndarray) -> None:
        """``out = sum_k mats[k] @ v[ins[k]] + bias``."""
        blocks = [sparse.csr_matrix(m) for m in mats] + [-sparse.identity(out.size, format="csr")]
        mat = sparse.hstack(blocks).tocoo()
        cols = np.concatenate([*ins, out])
        self._rows.append(mat.row + self.n_row)
        self._cols.append(cols[mat.col])
        self._vals.append(mat.data)
        self.row_lo.append(-bias)
        self.row_hi.append(-bias.copy())
        self.n_row += out.size

    def relu(self, z: np.ndarray, z_lo: np.ndarray, z_hi: np.ndarray, scale: float = 1.0,
             shift: float = 0.0, out: np.ndarray | None = None) -> np.ndarray:
        """Variables ``r = max(scale * z + shift, 0)`` (exact), given sound bounds of ``z``.

        Stable neurons are equalities; each unstable one gets a binary ``a`` and, with
        ``w = scale z + shift`` in ``[lw, uw]``::

            r >= 0,  r >= w,  r <= uw a,  r <= w - lw (1 - a)
        """
        w_lo = np.minimum(scale * z_lo, scale * z_hi) + shift
        w_hi = np.maximum(scale * z_lo, scale * z_hi) + shift
        if out is None:
            out = self.add_vars(np.maximum(w_lo, 0.0), np.maximum(w_hi, 0.0))
        active, dead = w_lo >= 0, w_hi <= 0
        unstable = ~(active | dead)
        if active.any():  # r - scale z = shift
            self.add_rows([(out[active], 1.0), (z[active], -scale)], shift, shift)
        if dead.any():
            self.add_rows([(out[dead], 1.0)], 0.0, 0.0)
        if unstable.any():
            r, zu = out[unstable], z[unstable]
            lw, uw = w_lo[unstable], w_hi[unstable]
            a = self.add_vars(np.zeros(r.size), np.ones(r.size), integer=True)
            self.add_rows([(r, 1.0)], 0.0, np.inf)
            self.add_rows([(r, 1.0), (zu, -scale)], shift, np.inf)
            self.add_rows([(r, 1.0), (a, -uw)], -np.inf, 0.0)
            self.add_rows([(r, 1.0), (zu, -scale), (a, -lw)], -np.inf, shift - lw)
        return out

    def solve(self, objective: dict[int, float] | np.ndarray, maximize: bool = False) -> float:
        """Optimal value of the linear objective (``(n_var,)`` or sparse ``{var: coef}``)."""
        return self.solve_point(objective, maximize)[0]

    def solve_point(self, objective: dict[int, float] | np.ndarray, maximize: bool = False) -> tuple[float, np.ndarray]:
        """Optimal value and an optimal assignment ``(n_var,)`` of every variable."""
        c = np.zeros(self.n_var)
        if isinstance(objective, dict):
            for k, v in objective.items():
                c[k] = v
        else:
            c[: objective.size] = objective
        sign = -1.0 if maximize else 1.0
        if getattr(self, "_compiled", None) is None or self._compiled[0] != (self.n_row, self.n_var):
            a = sparse.csr_matrix(
                (np.concatenate(self._vals), (np.concatenate(self._rows), np.concatenate(self._cols))),
                shape=(self.n_row, self.n_var),
            )
            self._compiled = (
                (self.n_row, self.n_var),
                LinearConstraint(a, np.concatenate(self.row_lo), np.concatenate(self.row_hi)),
                LPBounds(np.concatenate(self.var_lo), np.concatenate(self.var_hi)),
                np.concatenate(self.integer),
            )
        _, constraints, bounds, integrality = self._compiled
        res = milp(sign * c, constraints=constraints, bounds=bounds, integrality=integrality,
                   options={"mip_rel_gap": 0.0})
        if not res.success:
            raise RuntimeError(f"MILP solver failed: {res.message}")
        return sign * res.fun, np.asarray(res.x)
