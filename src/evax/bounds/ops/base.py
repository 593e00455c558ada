"""The operator interface of the bound engine.

Every op of the graph holds all of its rules side by side (auto_LiRPA's operator design):

* ``convert``   -- build the op from a traced call (:class:`~evax.bounds.ops.registry.Call`),
  reading and checking every argument;
* ``evaluate``  -- concrete outputs (the graph is checked against the model with it);
* ``interval``  -- IBP: bounds of the output from intervals of the inputs;
* ``forward``   -- affine forms ``A x + b`` of the output in terms of the network input ``x``;
* ``backward``  -- CROWN: given a linear function ``lam . y`` of the output, a linear function of
  the inputs that lower-bounds it;
* ``local_forward`` / ``local_backward`` -- the same rules on patches (forms and multipliers
  kept on each neuron's receptive field through a convolutional stem, see
  :mod:`evax.bounds.local_forms` and :mod:`evax.bounds.local_backward`); ``None`` when the op
  has no local rule;
* ``milp``      -- its encoding for the exact MILP bounds (:mod:`evax.bounds.exact`).

Conventions (``N`` boxes, ``K`` specification rows, ``d`` input variables, ``S`` the op's
per-sample output shape):

* intervals are pairs ``(lower, upper)`` of shape ``(N, *S)``;
* a :class:`Form` holds ``lower = al . x + bl`` and ``upper = au . x + bu`` with coefficients of
  shape ``(N or 1, d, *S)`` and offsets ``(N or 1, *S)`` (batch ``1`` = shared by every box);
* backward multipliers ``lam`` have shape ``(N or 1, K, *S)``; ``backward`` returns the
  multipliers of each input and the ``(N or 1, K)`` constant it produced. The engine only ever
  computes *lower* bounds backward (an upper bound of ``lam . y`` is ``-lower(-lam . y)``).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:  # pragma: no cover
    from evax.bounds.milp import MILP
    from evax.bounds.ops.registry import Call

Interval = tuple[torch.Tensor, torch.Tensor]


@dataclass
class Form:
    """Affine lower/upper forms of a node in terms of the flattened input."""

    al: torch.Tensor
    bl: torch.Tensor
    au: torch.Tensor
    bu: torch.Tensor

    @property
    def shared(self) -> bool:
        """True when lower and upper forms are the same object (no relaxation seen yet)."""
        return self.al is self.au and self.bl is self.bu


def flat_batch(x: torch.Tensor, n_lead: int) -> tuple[torch.Tensor, tuple[int, ...]]:
    """Merge the first ``n_lead`` dimensions into one (for ops that take a batch)."""
    lead = tuple(x.shape[:n_lead])
    return x.reshape(-1, *x.shape[n_lead:]), lead


class Op(ABC):
    """A node of the bound graph. ``path`` is the module path shown in error messages."""

    kind: str = "op"
    n_inputs: int = 1
    path: str = ""
    # Set by @register: the handles and the line of the supported-layer list.
    handles: tuple = ()
    registry_doc: str = ""

    # Nonlinear ops need the bounds of their input to build a relaxation.
    needs_relaxation: bool = False
    # Monotone nondecreasing in every input: ``interval`` is then the exact range over a box,
    # and no linear bound of the output can beat it (see Propagator._node_bounds). False unless
    # an op says so.
    monotone: bool = False
    # A piecewise-linear activation whose only kink is at 0 (ReLU, LeakyReLU): its relaxation
    # of a neuron that is stable (l >= 0 or u <= 0) is exact whatever the bounds, so CROWN may
    # skip those neurons' rows.
    kink_at_zero: bool = False
    # The output is a view of the input's values (reshape, permute, identity): an in-place op
    # on it would write through to the input.
    alias: bool = False

    @classmethod
    def convert(cls, call: Call) -> Op | None:
        """Build the op from a traced call; ``None`` means the call is the identity of its
        (single) input. Must read every argument of ``call`` (see ``Call.finish``)."""
        raise NotImplementedError(f"{cls.__name__} has no converter")

    @abstractmethod
    def evaluate(self, *xs: torch.Tensor) -> torch.Tensor:
        """Concrete output for concrete inputs ``(B, *S_in)``."""

    @abstractmethod
    def interval(self, *ivs: Interval) -> Interval:
        """IBP rule."""

    @abstractmethod
    def forward(self, *forms: Form, relaxation=None) -> Form:
        """Forward (affine) rule."""

    @abstractmethod
    def backward(self, lam: torch.Tensor, relaxation=None) -> tuple[list[torch.Tensor], torch.Tensor | None]:
        """Backward (CROWN) rule for a lower bound of ``lam . y``."""

    def relax(self, lower: torch.Tensor, upper: torch.Tensor):  # pragma: no cover - linear ops
        return None

    # -- optional structure the engine exploits ---------------------------------------------------
    def as_matrix(self) -> tuple[torch.Tensor, torch.Tensor | None] | None:
        """``(W, b)`` with ``y = W x + b`` on flat features, for dense affine layers; else None."""
        return None

    def fold_into(
        self, weight: torch.Tensor, bias: torch.Tensor | None, in_shape: tuple[int, ...]
    ) -> tuple[torch.Tensor, torch.Tensor | None] | None:
        """Compose a downstream affine map ``W y + b`` (``W`` is ``(out, numel(S))``) with this
        op: ``(W', b')`` such that ``W' x + b' = W op(x) + b`` on the flat input of per-sample
        shape ``in_shape``. ``None`` when the op is not an affine map that folds cheaply."""
        return None

    def alpha_parameters(self, lower: torch.Tensor, upper: torch.Tensor, relaxation):
        """alpha-CROWN: ``(init, lo, hi)``, each ``(N, *S)``, when the relaxation has a free
        slope per neuron (admissible in ``[lo, hi]``, CROWN's choice ``init``); else ``None``."""
        return None

    def alpha_relaxation(self, relaxation, alpha: torch.Tensor):
        """The relaxation with the free slopes set to ``alpha`` ``(N, K, *S)`` (one per box and
        specification row): ``(a_l, b_l, a_u, b_u)`` whose entries may carry that row axis."""
        raise NotImplementedError(f"{type(self).__name__} has no free slopes")

    def compose(self, inner: Op) -> Op | str | None:
        """A simpler op computing ``self(inner(x))`` from ``inner``'s input (e.g. two
        permutations, two reshapes), ``"identity"`` when the composition is the identity, or
        ``None``. Lets exported graphs (NHWC -> NCHW -> NHWC transposes) keep their structure."""
        return None

    def local_forward(self, form, relaxation, out_shape: tuple[int, ...]):
        """Forward rule on a :class:`~evax.bounds.local_forms.LocalForm`, or ``None``."""
        return None

    local_backward_ok: bool = False  # has a local CROWN rule (see local_backward)

    def local_growth(self) -> tuple[int, int]:
        """How much the op widens a receptive field (rows, columns)."""
        return (0, 0)

    def local_support(self, mask: torch.Tensor) -> torch.Tensor:
        """Ops with a local rule: ``(N, 1, H, W)`` bool of input positions -> ``(N, 1, H', W')``
        bool of the output positions whose value can depend on them (elementwise: the same)."""
        if self.local_growth() != (0, 0):
            raise NotImplementedError(f"{type(self).__name__} widens windows: it must implement local_support")
        return mask

    def local_backward(self, lam, const, offset, windows, relaxation, shape, in_shape):
        """CROWN rule on patches of multipliers; see :func:`evax.bounds.local_backward.local_lower_bounds`.

        Args:
            lam: ``(B, P, K, C, Rh, Rw)`` multipliers of this op's output on each position's window.
            const: ``(B, P, K)`` constant accumulated so far.
            offset: node row/column of window entry 0 for position 0.
            windows: the positions' :class:`~evax.bounds.local_backward.Windows`.
            relaxation: this op's relaxation (nonlinear ops).
            shape, in_shape: per-sample shapes of the output and of the input.
        Returns:
            ``(lam, const, offset)`` of the input.
        """
        raise NotImplementedError(f"{type(self).__name__} has no local backward rule")

    def milp(self, model: MILP, ins: list, out, in_bounds: list) -> None:
        """Add the op's exact encoding to a MILP (see :class:`evax.bounds.milp.MILP`).

        Args:
            model: the problem being built.
            ins: per input, the ``(numel,)`` int array of its variable indices.
            out: ``(numel,)`` variable indices of the output.
            in_bounds: per input, sound ``(lower, upper)`` float arrays of its values.
        """
        from evax.errors import UnsupportedLayerError

        raise UnsupportedLayerError(
            self.path,
            type(self).__name__,
            "method='exact' needs a piecewise-linear network (affine layers, ReLU, LeakyReLU, "
            "Hardtanh/ReLU6, max pooling)",
        )

    def to(self, device=None, dtype=None) -> Op:
        """Move the op's constant tensors (in place on the op; returns self)."""
        for key, value in list(vars(self).items()):
            if isinstance(value, torch.Tensor):
                setattr(
                    self,
                    key,
                    value.to(device=device, dtype=dtype if value.is_floating_point() else None),
                )
        return self

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.path!r})"


class LinearOp(Op):
    """An op ``y = L(x_1, ..., x_k) + bias`` with ``L`` linear.

    Subclasses implement :meth:`apply` (``L``), :meth:`apply_abs` (``|L|``, the entrywise
    absolute value of its matrix) and :meth:`transpose` (``L^T``), all batch-first.
    """

    bias: torch.Tensor | None = None

    @abstractmethod
    def apply(self, *xs: torch.Tensor) -> torch.Tensor:
        """``L(x)`` for ``xs`` of shape ``(B, *S_in)`` -> ``(B, *S)``."""

    def apply_abs(self, *xs: torch.Tensor) -> torch.Tensor:
        """``|L|(x)``; defaults to ``L`` (ops with nonnegative matrices)."""
        return self.apply(*xs)

    @abstractmethod
    def transpose(self, lam: torch.Tensor) -> list[torch.Tensor]:
        """``L^T lam`` for ``lam`` of shape ``(B, *S)`` -> one ``(B, *S_in)`` per input."""

    def evaluate(self, *xs: torch.Tensor) -> torch.Tensor:
        y = self.apply(*xs)
        return y if self.bias is None else y + self.bias

    def interval(self, *ivs: Interval) -> Interval:
        mids = [(lo + hi) / 2 for lo, hi in ivs]
        rads = [(hi - lo) / 2 for lo, hi in ivs]
        mid = self.evaluate(*mids)
        rad = self.apply_abs(*rads)
        return mid - rad, mid + rad

    def _apply_forms(self, coeffs: list[torch.Tensor], use_abs: bool) -> torch.Tensor:
        """Apply ``L`` (or ``|L|``) to coefficient tensors ``(B, d, *S_in)``."""
        b = max(c.shape[0] for c in coeffs)
        d = coeffs[0].shape[1]
        flat = [c.expand(b, *c.shape[1:]).reshape(b * d, *c.shape[2:]) for c in coeffs]
        out = self.apply_abs(*flat) if use_abs else self.apply(*flat)
        return out.reshape(b, d, *out.shape[1:])

    def forward(self, *forms: Form, relaxation=None) -> Form:
        if all(f.shared for f in forms):
            a = self._apply_forms([f.al for f in forms], use_abs=False)
            b = self.evaluate(*[f.bl for f in forms])
            return Form(a, b, a, b)
        # L applied to al + au and |L| to au - al (twice the centre and the radius): the halving
        # moves to the outputs, in place -- exact in binary floating point, and two passes fewer
        # over the (N, d, *S_in) coefficients.
        mid2 = self._apply_forms([f.al + f.au for f in forms], use_abs=False)
        rad2 = self._apply_forms([f.au - f.al for f in forms], use_abs=True)
        al = torch.sub(mid2, rad2).mul_(0.5)
        au = mid2.add_(rad2).mul_(0.5)
        mid_b = self.evaluate(*[(f.bl + f.bu) / 2 for f in forms])
        rad_b = self.apply_abs(*[(f.bu - f.bl) / 2 for f in forms])
        return Form(al, mid_b - rad_b, au, mid_b + rad_b)

    def backward(self, lam: torch.Tensor, relaxation=None):
        flat, lead = flat_batch(lam, 2)
        ins = [t.reshape(*lead, *t.shape[1:]) for t in self.transpose(flat)]
        const = None if self.bias is None else bias_dot(lam, self.bias)
        return ins, const

    def dense_matrices(self, in_shapes: list[tuple[int, ...]], dtype=torch.float64) -> list[torch.Tensor]:
        """The matrix of ``L`` w.r.t. each input, ``(numel_out, numel_in_k)`` (small ops only)."""
        mats = []
        for k, shape in enumerate(in_shapes):
            numel = 1
            for s in shape:
                numel *= s
            basis = torch.eye(numel, dtype=dtype).view(numel, *shape)
            args = [basis if j == k else torch.zeros((numel, *s), dtype=dtype) for j, s in enumerate(in_shapes)]
            mats.append(self.apply(*args).reshape(numel, -1).T)
        return mats

    def milp(self, model: MILP, ins: list, out, in_bounds: list) -> None:
        """Equality constraints ``y = L x + b`` (the matrix read off a basis)."""
        import copy

        op = copy.deepcopy(self).to(device="cpu", dtype=torch.float64)
        in_shapes = [tuple(b[0].shape) for b in in_bounds]
        mats = [m.numpy() for m in op.dense_matrices(in_shapes)]
        zeros = [torch.zeros((1, *s), dtype=torch.float64) for s in in_shapes]
        bias = op.evaluate(*zeros).reshape(-1).numpy()
        model.add_linear_equality(mats, [i.reshape(-1) for i in ins], out.reshape(-1), bias)


class ElementwiseOp(Op):
    """An elementwise nonlinearity ``y = f(x)`` with linear relaxations.

    :meth:`relax` returns ``(a_l, b_l, a_u, b_u)``, each ``(N, *S)``, such that
    ``a_l x + b_l <= f(x) <= a_u x + b_u`` for every ``x`` in ``[lower, upper]``.

    ``monotone`` is False unless a subclass says so; a subclass that is not monotone must
    implement :meth:`interval` itself (class creation fails otherwise), so that no op can
    inherit the endpoint rule ``[f(l), f(u)]`` that is only sound for nondecreasing ``f``.
    """

    needs_relaxation = True
    monotone = False
    local_backward_ok = True

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        abstract = any(getattr(getattr(cls, name, None), "__isabstractmethod__", False) for name in dir(cls))
        if not abstract and not cls.monotone and cls.interval is ElementwiseOp.interval:
            raise TypeError(
                f"{cls.__name__} is not declared monotone, so it must implement interval() "
                "(the endpoint rule [f(l), f(u)] is only sound for nondecreasing functions)"
            )

    @abstractmethod
    def relax(self, lower: torch.Tensor, upper: torch.Tensor):
        """Linear relaxation on ``[lower, upper]``."""

    def interval(self, iv: Interval) -> Interval:
        if not self.monotone:  # an instance that is not monotone (e.g. LeakyReLU with s < 0)
            raise NotImplementedError(f"{type(self).__name__} must implement interval()")
        return self.evaluate(iv[0]), self.evaluate(iv[1])

    def forward(self, form: Form, relaxation=None) -> Form:
        a_l, b_l, a_u, b_u = relaxation
        al = signed_combine(a_l.unsqueeze(1), form.al, form.au)
        au = signed_combine(a_u.unsqueeze(1), form.au, form.al)
        bl = signed_combine(a_l, form.bl, form.bu) + b_l
        bu = signed_combine(a_u, form.bu, form.bl) + b_u
        return Form(al, bl, au, bu)

    def backward(self, lam: torch.Tensor, relaxation=None):
        a_l, b_l, a_u, b_u = relaxation
        a_l, a_u = per_row(a_l, lam), per_row(a_u, lam)
        # pos * a_l + neg * a_u == lam * a_l + neg * (a_u - a_l): two passes instead of five.
        neg = lam.clamp_max(0)
        lam_in = lam * a_l
        lam_in = lam_in.addcmul_(neg, a_u - a_l) if not lam_in.requires_grad else lam_in + neg * (a_u - a_l)
        const = row_dot(lam, b_l) + row_dot(neg, b_u - b_l)
        return [lam_in], const

    def local_forward(self, form, relaxation, out_shape):
        from evax.bounds.local_forms import LocalForm, to_patches

        if relaxation is None:
            return None
        a_l, b_l, a_u, b_u = relaxation
        al = signed_combine(to_patches(a_l, form), form.al, form.au)
        au = signed_combine(to_patches(a_u, form), form.au, form.al)
        bl = signed_combine(a_l, form.bl, form.bu) + b_l
        bu = signed_combine(a_u, form.bu, form.bl) + b_u
        return LocalForm(al, bl, au, bu, form.offset, form.shape)

    def const_map(self, lam: torch.Tensor, relaxation) -> torch.Tensor:
        """Each neuron's share of :meth:`backward`'s constant, ``(B, K, C, H, W)``: the
        constant is its sum over the neurons (:mod:`evax.bounds.delta_backward` sums it over
        windows)."""
        _, b_l, _, b_u = relaxation
        b_l, b_u = per_row(b_l, lam), per_row(b_u, lam)
        return lam.clamp_max(0) * (b_u - b_l) + lam * b_l

    def local_backward(self, lam, const, offset, windows, relaxation, shape, in_shape):
        from evax.bounds.local_backward import window_dot

        a_l, b_l, a_u, b_u = relaxation
        window = (lam.shape[-2], lam.shape[-1])
        neg = lam.clamp_max(0)
        # Every map is gathered as it is (the windows cache their padded copies across chunks);
        # differences are taken on the windows, which are K times smaller than lam.
        w_bl, w_bu = windows.gather(b_l, offset, window), windows.gather(b_u, offset, window)
        const = const + window_dot(neg, w_bu - w_bl)
        if windows.derived(b_l, lambda: bool((b_l != 0).any())):
            const = const + window_dot(lam, w_bl)
        w_al, w_au = windows.gather(a_l, offset, window), windows.gather(a_u, offset, window)
        lam = (lam * w_al).addcmul_(neg, w_au - w_al)
        return lam, const, offset


def bias_dot(lam: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """``sum_s lam[b, k, s] * bias[s]`` -> ``(B, K)`` for a ``bias`` broadcastable to the node
    shape ``S``: ``lam`` is first summed over the axes the bias is broadcast along (a conv bias
    ``(C, 1, 1)``: over ``H, W``), so no temporary of ``lam``'s size is made, whatever its
    memory layout."""
    offset = lam.ndim - bias.ndim
    axes = [offset + d for d in range(bias.ndim) if bias.shape[d] == 1 and lam.shape[offset + d] != 1]
    if axes:
        lam = lam.sum(dim=axes, keepdim=True)
    return (lam * bias).flatten(2).sum(dim=2)


def same_flat_order(lam: torch.Tensor, other: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``lam`` and ``other`` (``(..., C, H, W)`` each) with channels moved last when ``lam`` is
    stored channels-last (after a transposed convolution on the CPU), so that flattening their
    trailing dimensions reads ``lam`` in place and copies only ``other`` (usually ``K`` times
    smaller); unchanged otherwise. Sums over the flattened dimensions are the same."""
    if lam.ndim >= 4 and not lam.is_contiguous() and lam.movedim(-3, -1).is_contiguous():
        return lam.movedim(-3, -1), other.movedim(-3, -1)
    return lam, other


def signed_combine(coef: torch.Tensor, x_pos: torch.Tensor, x_neg: torch.Tensor) -> torch.Tensor:
    """``max(coef, 0) * x_pos + min(coef, 0) * x_neg`` (a bound of ``coef * x`` from bounds of
    ``x``); a single product when ``coef`` has one sign everywhere."""
    if bool((coef >= 0).all()):
        return coef * x_pos
    if bool((coef <= 0).all()):
        return coef * x_neg
    return coef.clamp_min(0) * x_pos + coef.clamp_max(0) * x_neg


def per_row(t: torch.Tensor, lam: torch.Tensor) -> torch.Tensor:
    """A relaxation tensor ``(N, *S)`` (shared by every row) or ``(N, K, *S)`` (alpha-CROWN's,
    one per row) shaped to multiply multipliers ``lam`` ``(B, K, *S)``."""
    return t if t.ndim == lam.ndim else t.unsqueeze(1)


def row_dot(lam: torch.Tensor, vec: torch.Tensor) -> torch.Tensor:
    """``sum_s lam[b, k, s] * vec[b, (k,) s]`` -> ``(N, K)``: :func:`batched_dot` for shared
    vectors, an elementwise product for per-row ones ``(N, K, *S)``."""
    if vec.ndim == lam.ndim:
        return (lam * vec).flatten(2).sum(dim=2)
    return batched_dot(lam, vec)


def batched_dot(lam: torch.Tensor, vec: torch.Tensor) -> torch.Tensor:
    """``sum_s lam[b, k, s] * vec[b, s]``: ``(B or 1, K, *S), (N, *S) -> (N, K)`` as a GEMM."""
    n = vec.shape[0]
    lam, vec = same_flat_order(lam, vec)
    flat_vec = vec.reshape(n, -1)
    flat_lam = lam.flatten(2)
    if flat_lam.shape[0] == 1:
        return flat_vec @ flat_lam[0].T
    return (flat_lam @ flat_vec.unsqueeze(-1))[..., 0]
