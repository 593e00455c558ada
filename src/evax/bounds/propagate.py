"""Run a bound method (or an intersection of methods) over a :class:`~evax.bounds.graph.Graph`.

Nodes are visited in topological order. Every node that feeds a nonlinearity gets bounds from
each enabled method -- IBP (interval arithmetic), forward (affine forms of the input, then
concretised on the perturbation set) and backward (CROWN: a linear bound pulled back to the
input) -- and keeps their intersection; the nonlinearity is then relaxed on that intersection,
so every method downstream profits from the tightest bounds any method proved.

Outputs of monotone ops (ReLU-like activations, max pooling) get their bounds by applying the op
to their input's bounds: no linear bound can be tighter (see :meth:`Propagator._node_bounds`).
Backward passes for intermediate nodes skip neurons that are already *stable* (``l >= 0`` or
``u <= 0``) under interval arithmetic when all users of the node are ReLU/LeakyReLU whose own
bounds are not needed: their relaxation is exact whatever the bounds. Stability is judged per
box, on a running IBP chain that the engine keeps even when ``ibp`` is not one of the requested
methods: a neuron stable in a box keeps its interval bounds in that box even when its CROWN row
was computed for another box of the batch, so a box's bounds never depend on its batch (tighter
bounds of a stable neuron would only reach later nodes through the IBP chain). CROWN's
intermediate bounds are also intersected with it (nearly free, never looser: auto_LiRPA's ``compare_crown_with_ibp``),
so ``backward`` alone can be slightly tighter than textbook CROWN when IBP wins on a neuron.
On a box, the first affine layer's bounds come from that chain too: interval arithmetic is
exact for an affine map of a box, so a backward pass would only repeat it.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import torch

from evax.bounds.delta_backward import delta_lower, plan_delta, root_pass
from evax.bounds.graph import Graph
from evax.bounds.local_backward import local_lower_bounds, stem_chain, stem_window
from evax.bounds.local_forms import LocalForm, concretize_local, densify, input_local_form, local_forward
from evax.bounds.ops.base import Form, Interval
from evax.perturbation import PerturbationSet

BASE_METHODS = ("ibp", "forward", "backward")
# Methods that only change how the *output* is bounded: CROWN-IBP (IBP intermediate bounds, one
# CROWN pass from the specification rows) and alpha-CROWN (CROWN intermediate bounds, the final
# pass with optimised ReLU slopes).
OUTPUT_METHODS = ("crown-ibp", "alpha-crown")
_BLOCK_FLOATS = 2**18  # coefficients per fused block (1 MiB in float32: stays in L2)
ALIASES = {
    "crown": "backward",
    "affine": "forward",
    "interval": "ibp",
    "backward": "backward",
    "forward": "forward",
    "ibp": "ibp",
    "crown-ibp": "crown-ibp",
    "crown_ibp": "crown-ibp",
    "crownibp": "crown-ibp",
    "alpha-crown": "alpha-crown",
    "alpha_crown": "alpha-crown",
    "alpha": "alpha-crown",
}


@dataclass(frozen=True)
class AlphaOptions:
    """How alpha-CROWN optimises the ReLU relaxations' free slopes (Xu et al. 2021).

    Attributes:
        iterations: Adam steps (each one backward pass of the specification rows).
        lr: Adam's learning rate.
        intermediate: optimise the slopes for the intermediate bounds too: every backward pass
            that bounds an intermediate node's neurons (both sides, as rows) gets its own
            slopes of the relaxations below it, optimised the same way, so the relaxations the
            final pass uses are built on tighter bounds. ``iterations`` times CROWN's cost for
            every node; the convolutional stem then goes through the dense path (no per-position
            sharing). Tighter intermediate bounds nearly always tighten the output, but not
            provably (relaxations are not monotone in their bounds): ``"alpha-crown+backward"``
            intersects with CROWN's own result.
    """

    iterations: int = 20
    lr: float = 0.5
    intermediate: bool = False


def intersect(bounds: list[Interval]) -> Interval:
    lo, hi = bounds[0]
    for l2, h2 in bounds[1:]:
        lo, hi = torch.maximum(lo, l2), torch.minimum(hi, h2)
    return lo, hi


class Propagator:
    """Bounds of one batch of boxes.

    Args:
        graph: the model's bound graph.
        inset: the perturbation set (``N`` boxes).
        methods: subset of ``{"ibp", "forward", "backward", "crown-ibp", "alpha-crown"}``;
            ``crown-ibp`` adds IBP to the intermediate bounds and a CROWN pass to the output,
            ``alpha-crown`` adds CROWN to the intermediate bounds and an optimised CROWN pass to
            the output.
        alpha: options of alpha-CROWN.
        row_budget: how many floats a backward pass may hold at once (neuron chunking).
        patch_budget: the same for the position-by-position passes of a convolutional stem
            (:meth:`_backward_positions`): smaller, so that their many small temporaries stay
            in the CPU's caches (1.6x faster than ``row_budget``'s chunks on the CIFAR-10 net).
        box_budget: floats of one row's multipliers for all boxes beyond which dense backward
            passes go a few boxes at a time.
        local_forms: keep forward forms as patches through the convolutional stem when the
            input set is a box (:mod:`evax.bounds.local_forms`; same bounds, far less work).
        skip_stable: let CROWN skip the rows of neurons that interval arithmetic proves stable
            when they only feed activations with their kink at 0 (their bounds stay the IBP
            chain's, per box; False bounds every neuron by CROWN too, which can tighten the
            IBP chain downstream: slower, and sometimes tighter).
        prune_dominated: skip the forward pass where backward runs too (it cannot tighten
            anything: :func:`forward_dominated`); False computes both, for tests.
        delta_passes: run the dense backward passes of boxes that differ from their root on a
            few pixels as differences on a window (:mod:`evax.bounds.delta_backward`; same
            bounds); False runs every box densely, for tests.
        stem_cache, box_ids: a dict shared by the runs over chunks of one set of boxes, and the
            ``(N,)`` indices of this run's boxes in that set: a root's stem bounds computed by
            one chunk are reused by the next chunk that holds the root again (prepended by
            :func:`evax.bounds.api.bound` so that its boxes share the stem's work).
    """

    def __init__(
        self,
        graph: Graph,
        inset: PerturbationSet,
        methods: frozenset[str],
        row_budget: int = 2**27,
        patch_budget: int = 2**24,
        box_budget: int = 2**23,
        local_forms: bool = True,
        skip_stable: bool = True,
        alpha: AlphaOptions | None = None,
        prune_dominated: bool = True,
        delta_passes: bool = True,
        stem_cache: dict | None = None,
        box_ids: torch.Tensor | None = None,
    ) -> None:
        self.delta_passes = delta_passes
        self.stem_cache = stem_cache if box_ids is not None else None
        self.box_ids = box_ids
        self.skip_stable = skip_stable
        self.box_budget = box_budget
        self.graph = graph
        self.inset = inset
        node_methods = {m for m in methods if m in BASE_METHODS}
        if "crown-ibp" in methods:
            node_methods.add("ibp")
        if "alpha-crown" in methods:
            node_methods.add("backward")
        out_methods = set(node_methods) | ({"backward"} if "crown-ibp" in methods else set())
        if prune_dominated:
            # Forward is dominated by backward on the same relaxations (see forward_dominated):
            # where both run, forward's forms are never computed.
            node_methods = forward_dominated(node_methods)
            out_methods = forward_dominated(out_methods)
        self.methods = frozenset(node_methods)  # what bounds the intermediate nodes
        self.out_methods = frozenset(out_methods)  # what bounds the output
        self.alpha = (alpha or AlphaOptions()) if "alpha-crown" in methods else None
        # Base passes whose own intermediate bounds have been the coupled run's at every node so
        # far: a member run alone on them would rebuild the same relaxations (see dominated()).
        self.alone: set[str] = set(self.methods)
        self.row_budget = row_budget
        self.patch_budget = patch_budget
        self.best: dict[int, Interval] = {}
        self.ibp: dict[int, Interval] = {}
        self.forms: dict[int, Form] = {}
        self.relax: dict[int, object] = {}
        self._input_linears = _linears_on_input(graph)
        linear = "forward" in self.out_methods or "backward" in self.out_methods
        use_local = local_forms and linear and len(graph.input_shape) == 3
        box_radius = inset.box_radius()  # None unless the set is a box (p = inf)
        self._flat_radius = None if box_radius is None else box_radius.reshape(inset.batch_size, -1)
        self._box_radius = box_radius if use_local else None
        self._local = self._box_radius is not None

    # ------------------------------------------------------------------------------------------
    def run(self, spec: torch.Tensor | None, side: str = "both") -> Interval:
        """Bounds of ``spec @ f(x)`` over the set, each ``(N, K)`` (``K = n_out`` without spec).

        ``side="upper"`` (or ``"lower"``) runs the final backward pass for that side only and
        returns ``-inf`` (``+inf``) for the other: half the rows of the most expensive pass of
        CROWN-IBP, for callers that read one side (EVA reads upper bounds of margins)."""
        g = self.graph
        use_ibp_chain = "ibp" in self.methods or "backward" in self.methods
        linear_methods = "forward" in self.out_methods or "backward" in self.out_methods
        for i, node in enumerate(g.nodes[: g.output + 1]):
            if node.op is None:
                iv = self.inset.interval()
                self.best[i] = iv
                self.ibp[i] = iv
                if "forward" in self.methods:
                    self.forms[i] = self._input_form()
                continue
            op = node.op
            if op.needs_relaxation and linear_methods:
                self.relax[i] = op.relax(*self.best[node.inputs[0]])
            if use_ibp_chain:
                self.ibp[i] = self._interval(i)
            if "forward" in self.methods:
                self.forms[i] = self._forward_node(i)
            if g.needs_bounds(i):
                self.best[i] = self._node_bounds(i)
                if use_ibp_chain:
                    self.ibp[i] = self.best[i]
            self._release_forms(i)
        return self._output_bounds(spec, side)

    def dominated(self, member: str) -> bool:
        """After :meth:`run`: whether ``member`` run on its own would give exactly the bound the
        coupled run already holds for it (so its standalone run can be skipped).

        A member's standalone intermediate bounds are its own candidate at every node (for
        ``backward``: CROWN intersected with the IBP chain; ``crown-ibp``: the IBP chain). When
        the coupled bounds equalled that candidate at every node, both runs relax every
        nonlinearity identically, and the coupled run's output candidate of the member is the
        standalone result.
        """
        base = {"crown-ibp": "ibp", "alpha-crown": "backward"}.get(member, member)
        return base in self.alone

    def _interval(self, i: int) -> Interval:
        """IBP bounds of node ``i`` from its inputs' (``(N, *shape)`` each).

        The first affine layer of a box is computed straight from the box's centre and radius
        (``W c + b +- |W| r``, exact), not through the intervals of the reshapes and input
        normalisation before it; all boxes of an EVA batch share their centre, whose product
        is then computed once.
        """
        node = self.graph.nodes[i]
        if i in self._input_linears and self._flat_radius is not None:
            weight, bias, weight_abs = self._input_linears[i]
            n = self.inset.batch_size
            centre = shared_rows_matmul(self.inset.reference().reshape(n, -1), weight.T)
            if bias is not None:
                centre = centre + bias
            spread = self._flat_radius @ weight_abs.T
            shape = (n, *node.shape)
            return (centre - spread).view(shape), (centre + spread).view(shape)
        return node.op.interval(*[self.ibp[j] for j in node.inputs])

    def _forward_node(self, i: int):
        """Forward forms of node ``i``: local patches where a local rule applies, else dense."""
        node = self.graph.nodes[i]
        ins = [self.forms[j] for j in node.inputs]
        relaxation = self.relax.get(i)
        if len(ins) == 1 and isinstance(ins[0], LocalForm):
            out = local_forward(node.op, ins[0], relaxation, node.shape)
            if out is not None:
                return out
        for j, form in zip(node.inputs, ins, strict=True):
            if isinstance(form, LocalForm):
                self.forms[j] = densify(form)  # kept: other users of j reuse the dense form
        return node.op.forward(*[self.forms[j] for j in node.inputs], relaxation=relaxation)

    def _release_forms(self, i: int) -> None:
        """Drop the forward forms no later node needs (they are the engine's largest tensors)."""
        g = self.graph
        for j in g.nodes[i].inputs:
            if j in self.forms and j != g.output and all(u <= i for u in g.nodes[j].users):
                del self.forms[j]

    # ------------------------------------------------------------------------------------------
    def _input_form(self) -> Form | LocalForm:
        ref = self.inset.center
        if self._local:
            return input_local_form(self.graph.input_shape, ref)
        d = self.graph.nodes[0].numel
        eye = torch.eye(d, device=ref.device, dtype=ref.dtype).view(1, d, *self.graph.input_shape)
        zero = torch.zeros((1, *self.graph.input_shape), device=ref.device, dtype=ref.dtype)
        return Form(eye, zero, eye, zero)

    def _concretize_form(self, form: Form | LocalForm) -> Interval:
        n = self.inset.batch_size
        if isinstance(form, LocalForm):
            ref = self.inset.reference().reshape(n, *self.graph.input_shape)
            return concretize_local(form, ref, self._box_radius)
        al = form.al.flatten(2).transpose(1, 2)  # (B, M, d)
        lower = self.inset.concretize(al, form.bl.flatten(1).expand(n, -1))
        au = form.au.flatten(2).transpose(1, 2)
        upper = -self.inset.concretize(-au, -form.bu.flatten(1).expand(n, -1))
        return lower, upper

    def _node_bounds(self, i: int) -> Interval:
        node = self.graph.nodes[i]
        if node.op.monotone and all(j in self.best for j in node.inputs):
            # f monotone: f(best bounds of its input) is the exact range over that box, and any
            # forward/backward bound of f(x) is looser: its linear upper bound a_u x + b_u
            # (a_u >= 0) is maximised at an upper bound u' >= u of x, where it is >= f(u'),
            # and likewise below. So the linear passes are skipped here: these bounds are never
            # looser (downstream relaxations built on them may still, rarely, differ either way).
            return node.op.interval(*[self.best[j] for j in node.inputs])
        cands = self._candidates(i)
        best = intersect(list(cands.values()))
        if len(cands) > 1:
            for member, cand in cands.items():
                if member in self.alone and not (torch.equal(best[0], cand[0]) and torch.equal(best[1], cand[1])):
                    self.alone.discard(member)
        return best

    def _candidates(self, i: int) -> dict[str, Interval]:
        """Each enabled method's bounds of node ``i``, ``(N, *shape)`` each."""
        node = self.graph.nodes[i]
        shape = (self.inset.batch_size, *node.shape)
        cands: dict[str, Interval] = {}
        if "ibp" in self.methods:
            cands["ibp"] = self.ibp[i]
        if "forward" in self.methods:
            lo, hi = self._concretize_form(self.forms[i])
            cands["forward"] = (lo.view(shape), hi.view(shape))
        if "backward" in self.methods:
            if i in self._input_linears and self._flat_radius is not None:
                # An affine map of a box: interval arithmetic (the IBP chain, kept whenever
                # backward runs) is already exact, and CROWN would only repeat it.
                cands["backward"] = self.ibp[i]
            else:
                # Seeded with the IBP chain only (what backward alone would compute), so that
                # the coupled run can tell whether the other members changed anything.
                cands["backward"] = self._backward_node(i, self.ibp[i])
        return cands

    def _backward_node(self, i: int, ref: Interval) -> Interval:
        """CROWN bounds of node ``i``'s neurons; ``ref`` are sound bounds already known."""
        g = self.graph
        node = g.nodes[i]
        n = self.inset.batch_size
        ref_lo, ref_hi = ref[0].reshape(n, -1), ref[1].reshape(n, -1)
        # Stable neurons can be skipped when the bounds only feed ReLU relaxations (exact for
        # them whatever the bounds) -- not when a user's own bounds are read off these ones.
        kinks_only = self.skip_stable and all(
            g.nodes[u].op.kink_at_zero and not g.needs_bounds(u) for u in node.users
        )
        unstable = (ref_lo < 0) & (ref_hi > 0) if kinks_only else None  # (N, numel)
        if unstable is not None:
            rows = unstable.any(dim=0).nonzero()[:, 0]
        else:
            rows = torch.arange(node.numel, device=ref_lo.device)
        lower, upper = ref_lo.clone(), ref_hi.clone()
        optimise = self.alpha is not None and self.alpha.intermediate
        chain = stem_chain(g, i) if self._local and not optimise else None
        if chain is not None and rows.numel():
            self._backward_positions(i, chain, rows, lower, upper)
        elif rows.numel():
            todo = torch.arange(n, device=ref_lo.device)
            if self._local and self.delta_passes and not optimise:
                done = self._backward_delta(i, rows, lower, upper)
                if done is not None:
                    todo = (~done).nonzero()[:, 0]
            self._backward_dense(i, rows, todo, lower, upper, optimise)
        if unstable is not None:
            # A neuron stable in this box keeps its reference bounds even when it was computed
            # (because it is unstable in another box of the batch): its relaxation is exact
            # either way, but tighter bounds would feed the IBP chain downstream, and a box's
            # bounds would then depend on the other boxes it is batched with.
            lower = torch.where(unstable, lower, ref_lo)
            upper = torch.where(unstable, upper, ref_hi)
        shape = (n, *node.shape)
        return lower.view(shape), upper.view(shape)

    def _backward_dense(self, i: int, rows, boxes: torch.Tensor, lower, upper, optimise: bool) -> None:
        """CROWN bounds of the neurons ``rows`` of node ``i`` in the boxes ``boxes`` by dense
        backward passes (a few boxes at a time when one row for every box would not fit the
        budget); tightens ``lower``/``upper`` ``(N, numel)`` in place."""
        g = self.graph
        n, m = self.inset.batch_size, boxes.numel()
        if m == 0:
            return
        widest = max(g.nodes[j].numel for j in range(i + 1))
        step = self._box_step(2 * widest, m)
        budget = self.row_budget if step >= m else self.box_budget
        chunk = max(1, budget // max(1, 2 * step * widest))
        for b0 in range(0, m, step):
            sel = boxes[b0 : b0 + step]
            view = self if sel.numel() == n else self._boxes(sel)
            for start in range(0, rows.numel(), chunk):
                r = rows[start : start + chunk]
                lo_r, hi_r = view._backward_rows(i, r, optimise=optimise)
                at = (sel.view(-1, 1), r.view(1, -1))
                lower[at] = torch.maximum(lower[at], lo_r)
                upper[at] = torch.minimum(upper[at], hi_r)

    def _backward_delta(self, i: int, rows, lower, upper) -> torch.Tensor | None:
        """CROWN bounds of the neurons ``rows`` of node ``i`` for the boxes that differ from
        their root on a few pixels, as the root's dense pass plus each box's difference on a
        window (:mod:`evax.bounds.delta_backward`; the same bounds as the dense pass, to float
        rounding). Tightens ``lower``/``upper`` in place and returns the ``(N,)`` boxes done
        (those boxes and their roots), or ``None`` when no box gains from it."""
        g = self.graph
        if i in self._input_linears:
            return None
        n = self.inset.batch_size
        start, lam, const = self._start_rows(i, rows)
        if lam.shape[0] != 1:
            return None
        centre = self.inset.reference().reshape(n, *g.input_shape)
        radius = self._box_radius.reshape(centre.shape)
        root, _ = box_roots(centre, radius)
        plan = plan_delta(g, start, self.relax, root, centre, radius)
        if plan is None:
            return None
        roots = plan.roots
        view = self._boxes(roots)
        k = lam.shape[1]
        widest = max(g.nodes[j].numel for j in range(i + 1))
        row_step = max(1, self.row_budget // (4 * roots.numel() * widest))
        rh, rw = stem_window(g, plan.stem)
        channels = max(g.nodes[j].shape[0] for j in [*plan.stem, 0])
        per_pair = 6 * channels * (plan.window[0] + rh) * (plan.window[1] + rw)
        r = rows.numel()
        lows = []
        for k0 in range(0, k, row_step):
            part = slice(k0, k0 + row_step)
            record = dict.fromkeys(plan.recorded)
            low_root = view._pull_back({start: lam[:, part]}, None if const is None else const[:, part], record=record)
            record = root_pass(g, plan, self.relax, record)
            pairs = max(1, self.row_budget // (per_pair * low_root.shape[1]))
            cache: dict = {}
            diffs = [
                delta_lower(g, plan, self.relax, record, centre, radius, slice(p0, p0 + pairs), cache)
                for p0 in range(0, plan.boxes.numel(), pairs)
            ]
            lows.append(torch.cat([low_root, low_root[plan.root_pos] + torch.cat(diffs)]))
        low = torch.cat(lows, dim=1)
        done_boxes = torch.cat([roots, plan.boxes])
        at = (done_boxes.view(-1, 1), rows.view(1, -1))
        lower[at] = torch.maximum(lower[at], low[:, :r])
        upper[at] = torch.minimum(upper[at], -low[:, r:])
        done = torch.zeros(n, dtype=torch.bool, device=rows.device)
        done[done_boxes] = True
        return done

    def _backward_positions(self, i: int, chain: list[int], rows, lower, upper) -> None:
        """CROWN bounds of a conv-stem node, position by position (:mod:`local_backward`):
        every channel at each position holding one of ``rows``; tightens ``lower``/``upper``
        ``(N, C*H*W)`` in place.

        A stem neuron's bounds depend on the input box only through its receptive field (every
        bound and relaxation below it is local too). So a box that equals an earlier box of the
        batch (its *root*) outside a few pixels -- EVA's boxes, which fix one cell each -- is
        computed only at the positions whose field meets those pixels, and takes its root's
        bounds elsewhere: the same numbers as computing them, at a fraction of the work.
        """
        g = self.graph
        n = self.inset.batch_size
        c, h, w = g.nodes[i].shape
        positions = torch.unique(rows % (h * w))
        rh, rw = stem_window(g, chain)
        channels = max(g.nodes[j].shape[0] for j in [*chain, 0])
        chunk = max(1, self.patch_budget // (8 * c * channels * rh * rw))
        centre = self.inset.reference().reshape(n, *g.input_shape)
        root, needed = self._stem_roots(chain, centre)  # (N,), (N, H*W)
        roots = (root == torch.arange(n, device=root.device)).nonzero()[:, 0].tolist()
        known = self.stem_cache
        keys = {b: (self.methods, i, int(self.box_ids[b])) for b in roots} if known is not None else {}
        for b, key in keys.items():
            if key in known:  # computed by an earlier chunk: the same box, the same bounds
                lower[b], upper[b] = known[key]
                needed[b] = False
        pair_box, pair_pos = needed[:, positions].nonzero(as_tuple=True)
        pair_pos = positions[pair_pos]
        lo_all = torch.empty((c, pair_box.numel()), device=lower.device, dtype=lower.dtype)
        hi_all = torch.empty_like(lo_all)
        cache: dict = {}
        for start in range(0, pair_box.numel(), chunk):
            sl = slice(start, start + chunk)
            lo_p, hi_p = local_lower_bounds(
                g, chain, pair_pos[sl], self.relax, centre, self._box_radius, pair_box[sl], cache
            )
            lo_all[:, sl], hi_all[:, sl] = lo_p[0], hi_p[0]
        chans = torch.arange(c, device=rows.device).view(c, 1) * (h * w)
        flat = (chans + pair_pos).reshape(-1)  # (C * Q) neuron indices, channel-major
        boxes = pair_box.expand(c, -1).reshape(-1)
        lower[boxes, flat] = torch.maximum(lower[boxes, flat], lo_all.reshape(-1))
        upper[boxes, flat] = torch.minimum(upper[boxes, flat], hi_all.reshape(-1))
        for b, key in keys.items():
            if key not in known:
                known[key] = (lower[b].clone(), upper[b].clone())
        copied = ~needed.repeat(1, c)  # (N, C*H*W): the root's bounds hold there
        if bool(copied.any()):
            lower.copy_(torch.where(copied, lower[root], lower))
            upper.copy_(torch.where(copied, upper[root], upper))

    def _stem_roots(self, chain: list[int], centre: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Each box's root (:func:`box_roots`) and ``(N, H*W)`` the positions of node
        ``chain[0]`` to compute for each box: all of them for a root, those whose receptive
        field meets a pixel where the box differs from its root otherwise."""
        g = self.graph
        root, differs = box_roots(centre, self._box_radius.reshape(centre.shape))
        for j in reversed(chain):  # from the input up to the node
            differs = g.nodes[j].op.local_support(differs)
        needed = differs.flatten(1)
        return root, needed

    def _box_step(self, floats_per_box: int, n: int | None = None) -> int:
        """Boxes per dense backward pass over ``n`` boxes (default: all of them): all unless one
        row for every box would exceed ``box_budget`` floats (then the passes go a few boxes at
        a time, so that no temporary outgrows the budget: large fresh allocations cost more in
        page faults than they save)."""
        n = self.inset.batch_size if n is None else n
        if n * floats_per_box <= self.box_budget:
            return n
        return max(1, self.box_budget // max(1, floats_per_box))

    def _boxes(self, boxes: slice) -> Propagator:
        """A view of this propagator restricted to the boxes ``boxes`` (for the backward passes:
        the set, relaxations and bounds are sliced, nothing is copied)."""
        n = self.inset.batch_size
        view = copy.copy(self)
        view.inset = self.inset.select(boxes)
        view.relax = {j: select_boxes(r, boxes, n) for j, r in self.relax.items()}
        view.best = {j: select_boxes(b, boxes, n) for j, b in self.best.items()}
        if self._flat_radius is not None:
            view._flat_radius = self._flat_radius[boxes]
        if self._box_radius is not None:
            view._box_radius = self._box_radius[boxes]
        return view

    def _backward_rows(self, i: int, rows: torch.Tensor, optimise: bool = False) -> Interval:
        """Lower and upper CROWN bounds of the neurons ``rows`` of node ``i``: ``(N, R)`` each.

        ``optimise``: alpha-CROWN on these rows (:attr:`AlphaOptions.intermediate`)."""
        r = rows.numel()
        if i in self._input_linears:
            # The node is an affine map of the input: its bounds are concretised directly.
            weight, bias, _ = self._input_linears[i]
            w = weight[rows]
            lam = torch.cat([w, -w]).unsqueeze(0)
            const = torch.zeros((1, 2 * r), device=w.device, dtype=w.dtype)
            if bias is not None:
                const = torch.cat([bias[rows], -bias[rows]]).unsqueeze(0)
            lower = self.inset.concretize(lam, const.expand(self.inset.batch_size, -1))
            return lower[:, :r], -lower[:, r:]  # exact: nothing to optimise
        start, lam, const = self._start_rows(i, rows)
        lower = self._pull_back({start: lam}, const)
        if optimise:
            lower = self._optimise_slopes(start, lam, const, lower)
        return lower[:, :r], -lower[:, r:]

    def _start_rows(self, i: int, rows: torch.Tensor) -> tuple[int, torch.Tensor, torch.Tensor | None]:
        """Where the backward pass of the neurons ``rows`` of node ``i`` (both sides: ``+e`` then
        ``-e``) starts: ``(node, multipliers (1, 2R, *shape), constant (1, 2R) or None)``."""
        node = self.graph.nodes[i]
        r = rows.numel()
        ref = self.inset.center
        if node.op.as_matrix() is not None:
            # Start one op down: the rows of W are the multipliers of the linear layer's input.
            weight, bias = node.op.as_matrix()
            w = weight[rows]
            lam = torch.cat([w, -w]).unsqueeze(0)
            const = None
            if bias is not None:
                b = bias[rows]
                const = torch.cat([b, -b]).unsqueeze(0)
            return node.inputs[0], lam, const
        lam = torch.zeros((2 * r, node.numel), device=ref.device, dtype=ref.dtype)
        ar = torch.arange(r, device=ref.device)
        lam[ar, rows] = 1.0
        lam[ar + r, rows] = -1.0
        return i, lam.view(1, 2 * r, *node.shape), None

    def _pull_back(
        self, lams: dict[int, torch.Tensor], const: torch.Tensor | None, relax=None, record: dict | None = None
    ) -> torch.Tensor:
        """Propagate multipliers down to the input and concretise: lower bound ``(N, K)``.

        ``relax`` overrides the relaxations (alpha-CROWN's, with per-row slopes). ``record``:
        its keys are nodes whose multipliers (``(N, K, *shape)``, what reaches the node from
        above) are stored in it on the way."""
        g = self.graph
        relax = self.relax if relax is None else relax
        n = self.inset.batch_size
        total = const
        for j in range(max(lams), -1, -1):
            lam = lams.pop(j, None)
            if lam is None:
                continue
            node = g.nodes[j]
            if record is not None and j in record:
                record[j] = lam
            if node.op is None:
                bias = torch.zeros((n, lam.shape[1]), device=lam.device, dtype=lam.dtype)
                if total is not None:
                    bias = bias + total
                return self.inset.concretize(lam.flatten(2), bias)
            if j in self._input_linears:
                weight, bias, _ = self._input_linears[j]
                if not lams:  # the only path left: fused GEMM + concretisation
                    return self._concretize_through_linear(weight, bias, lam, total)
                # Other branches still carry multipliers (e.g. two affine layers on the input
                # summed later): fold this one into the input's multipliers and go on.
                lam_in = (lam @ weight).view(*lam.shape[:2], *g.input_shape)
                lams[0] = lam_in if 0 not in lams else lams[0] + lam_in
                if bias is not None:
                    c = lam @ bias
                    total = c if total is None else total + c
                continue
            ins, c = node.op.backward(lam, relax.get(j))
            if c is not None:
                total = c if total is None else total + c
            for k, lam_k in zip(node.inputs, ins, strict=True):
                lams[k] = lam_k if k not in lams else lams[k] + lam_k
        raise RuntimeError("backward pass did not reach the input")  # pragma: no cover

    def _concretize_through_linear(self, weight, bias, lam: torch.Tensor, const) -> torch.Tensor:
        """Lower bound of ``lam . (W x + b) + const`` over the input set, ``(N, K)``.

        ``W`` (out, d) and ``b`` are the affine map from the input to the first linear layer's
        output (input normalisation and reshapes folded in). Fuses the GEMM ``lam @ W`` with the
        concretisation, a few boxes at a time, so the ``(N, K, d)`` coefficients never leave
        the cache: ``lam . (W r + b) - spread(lam @ W)``.
        """
        n = self.inset.batch_size
        ref = self.inset.reference().reshape(n, -1)
        centre = shared_rows_matmul(ref, weight.T)
        if bias is not None:
            centre = centre + bias
        value = (lam @ centre.unsqueeze(-1))[..., 0] if lam.shape[0] > 1 else centre @ lam[0].T
        if lam.shape[0] == 1:
            spread = self.inset.spread(lam @ weight)
        else:
            k, d = lam.shape[1], weight.shape[1]
            step = max(1, _BLOCK_FLOATS // max(1, k * d))
            spread = torch.empty((n, k), device=lam.device, dtype=lam.dtype)
            radius = self._flat_radius
            for s in range(0, n, step):
                rows = slice(s, s + step)
                if radius is None:
                    spread[rows] = self.inset.spread(lam[rows] @ weight, rows)
                else:
                    coeffs = lam[rows].reshape(-1, lam.shape[-1]) @ weight  # (B K, d): one GEMM
                    spread[rows] = _block_box_spread(coeffs, radius[rows])
        out = value - spread
        return out if const is None else out + const

    # ------------------------------------------------------------------------------------------
    def _ibp_output(self, spec: torch.Tensor) -> Interval:
        """IBP bounds of ``C f(x)``, ``(N, K)`` each.

        When the last op is a Linear layer ``f = W h + b``, ``C`` is folded into it first:
        ``C f = (C W) h + C b`` over the interval of ``h``. This is never looser than applying
        ``C`` to the interval of ``f`` (``|C W| <= |C| |W|``), and much tighter for margins
        ``f_c' - f_c``, whose shared terms cancel (auto_LiRPA does the same).
        """
        g = self.graph
        out = g.output
        node = g.nodes[out]
        matrix = node.op.as_matrix()
        if matrix is not None and node.inputs[0] in self.ibp and out not in self.best:
            lo, hi = (t.flatten(1) for t in self.ibp[node.inputs[0]])
            weight = spec @ matrix[0]  # (B, K, in)
            mid, rad = ((hi + lo) / 2).unsqueeze(-1), ((hi - lo) / 2).unsqueeze(-1)
            centre, spread = (weight @ mid)[..., 0], (weight.abs() @ rad)[..., 0]
            if matrix[1] is not None:
                centre = centre + spec @ matrix[1]
            return centre - spread, centre + spread
        lo, hi = self.ibp[out] if out not in self.best else self.best[out]
        pos, neg = spec.clamp_min(0), spec.clamp_max(0)
        lower = (pos @ lo.unsqueeze(-1) + neg @ hi.unsqueeze(-1))[..., 0]
        upper = (pos @ hi.unsqueeze(-1) + neg @ lo.unsqueeze(-1))[..., 0]
        return lower, upper

    # ------------------------------------------------------------------------------------------
    def _output_bounds(self, spec: torch.Tensor | None, side: str) -> Interval:
        g = self.graph
        out = g.output
        n = self.inset.batch_size
        ref = self.inset.center
        if spec is None:
            spec = torch.eye(g.output_size, device=ref.device, dtype=ref.dtype).unsqueeze(0)
        k = spec.shape[1]
        cands: list[Interval] = []
        if "ibp" in self.out_methods:
            cands.append(self._ibp_output(spec))
        if "forward" in self.out_methods:
            f = self.forms[out]
            if isinstance(f, LocalForm):
                f = densify(f)
            pos, neg = spec.clamp_min(0), spec.clamp_max(0)
            al, au = f.al.transpose(1, 2), f.au.transpose(1, 2)  # (B, n_out, d)
            coef_l = pos @ al + neg @ au
            coef_u = pos @ au + neg @ al
            bl = (pos @ f.bl.expand(n, -1).unsqueeze(-1) + neg @ f.bu.expand(n, -1).unsqueeze(-1))[..., 0]
            bu = (pos @ f.bu.expand(n, -1).unsqueeze(-1) + neg @ f.bl.expand(n, -1).unsqueeze(-1))[..., 0]
            lower = self.inset.concretize(coef_l, bl)
            upper = -self.inset.concretize(-coef_u, -bu)
            cands.append((lower, upper))
        if "backward" in self.out_methods:
            if side == "both":
                lam = torch.cat([spec, -spec], dim=1)
            else:
                lam = spec if side == "lower" else -spec
            widest = max(node.numel for node in g.nodes)
            step = self._box_step(2 * k * widest)
            parts = []
            for b0 in range(0, n, step):
                boxes = slice(b0, b0 + step)
                view = self if step >= n else self._boxes(boxes)
                lam_b = lam if lam.shape[0] == 1 else lam[boxes]
                lower = view._pull_back({out: lam_b}, None)
                if self.alpha is not None:
                    lower = view._optimise_slopes(out, lam_b, None, lower)
                parts.append(lower)
            lower = torch.cat(parts) if len(parts) > 1 else parts[0]
            inf = torch.full_like(lower[:, :k], torch.inf)
            if side == "both":
                cands.append((lower[:, :k], -lower[:, k:]))
            else:
                cands.append((lower, inf) if side == "lower" else (-inf, -lower))
        lo, hi = intersect(cands)
        if side == "upper":
            lo = torch.full_like(lo, -torch.inf)
        elif side == "lower":
            hi = torch.full_like(hi, torch.inf)
        return lo.expand(n, k), hi.expand(n, k)

    def _optimise_slopes(self, start: int, lam: torch.Tensor, const, crown: torch.Tensor) -> torch.Tensor:
        """alpha-CROWN: lower bounds ``(N, R)`` of ``lam . h_start + const`` for the ``R`` rows of
        ``lam`` (multipliers of node ``start``), with the free slopes of every optimisable
        relaxation below ``start`` (``op.alpha_parameters``) chosen per box and per row by
        projected Adam, warm-started at CROWN's choice.

        Every slope in the admissible range gives a sound bound, so the best bound seen for each
        box and row is kept, starting from CROWN's ``crown``: never looser than CROWN.
        """
        g = self.graph
        n, rows = self.inset.batch_size, lam.shape[1]
        params: dict[int, tuple] = {}
        for j, relaxation in self.relax.items():
            if j > start:
                continue  # above the pass: never read
            node = g.nodes[j]
            found = node.op.alpha_parameters(*self.best[node.inputs[0]], relaxation)
            if found is not None:
                init, lo, hi = found  # (N, *S) each
                alpha = init.unsqueeze(1).expand(n, rows, *init.shape[1:]).clone().requires_grad_(True)
                params[j] = (alpha, lo.unsqueeze(1), hi.unsqueeze(1))
        best = crown
        if not params or self.alpha.iterations <= 0:
            return best
        opt = torch.optim.Adam([a for a, _, _ in params.values()], lr=self.alpha.lr)
        lam = lam.expand(n, *lam.shape[1:])
        with torch.enable_grad():
            for _ in range(self.alpha.iterations):
                relax = dict(self.relax)
                for j, (alpha, _, _) in params.items():
                    relax[j] = g.nodes[j].op.alpha_relaxation(self.relax[j], alpha)
                lower = self._pull_back({start: lam}, const, relax=relax)
                best = torch.maximum(best, lower.detach())
                opt.zero_grad(set_to_none=True)
                (-lower.sum()).backward()
                opt.step()
                with torch.no_grad():
                    for alpha, lo, hi in params.values():
                        alpha.copy_(torch.maximum(torch.minimum(alpha, hi), lo))
        return best


def box_roots(centre: torch.Tensor, radius: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Groups of boxes that differ from their group's first box (the *root*) on few pixels.

    A box starts a new group when it differs from the current root on more than half of the
    pixels; EVA's boxes (the whole ball, then one box per fixed cell) form one group per image.

    Args:
        centre, radius: ``(N, C, H, W)`` the boxes ``centre +- radius``.
    Returns:
        ``(N,)`` the index of each box's root (a root is its own), and ``(N, 1, H, W)`` the
        pixels where each box differs from its root (all of them for a root).
    """
    n = centre.shape[0]
    pixels = centre[0, 0].numel()
    root = torch.zeros(n, dtype=torch.long, device=centre.device)
    differs = torch.ones((n, 1, *centre.shape[2:]), dtype=torch.bool, device=centre.device)
    start = 0
    while start < n:
        diff = ((centre[start:] != centre[start]) | (radius[start:] != radius[start])).any(1, keepdim=True)
        far = (diff.flatten(1).sum(1) * 2 > pixels).nonzero()
        stop = n if far.numel() == 0 else start + int(far[0])  # > start: diff[0] is all False
        root[start:stop] = start
        differs[start + 1 : stop] = diff[1 : stop - start]
        start = stop
    return root, differs


def select_boxes(value, boxes: slice, n: int):
    """``value`` (a tensor, or a tuple/list of them, as relaxations and bounds are) restricted to
    the boxes ``boxes``: tensors of leading size ``n`` are sliced, shared ones (size 1) kept."""
    if isinstance(value, torch.Tensor):
        return value[boxes] if value.ndim and value.shape[0] == n and n > 1 else value
    if isinstance(value, (tuple, list)):
        return type(value)(select_boxes(v, boxes, n) for v in value)
    if value is None:
        return None
    raise TypeError(f"cannot restrict a {type(value).__name__} to a subset of boxes")


def _block_box_spread(coeffs: torch.Tensor, radius: torch.Tensor) -> torch.Tensor:
    """``|coeffs| . radius`` per box for a block of ``B`` boxes: ``(B K, d), (B, d) -> (B, K)``.

    Consumes ``coeffs`` (its absolute value is taken in place). For ``B > 1`` the products with
    every box's radius are one GEMM ``(B K, d) @ (d, B)`` whose block diagonal is kept: ``B``
    times the FLOPs of the matrix-vector products (a few percent of the GEMM that made
    ``coeffs``), at GEMM speed rather than a batched matrix-vector product's.
    """
    b = radius.shape[0]
    coeffs = coeffs.abs() if coeffs.requires_grad else coeffs.abs_()
    if b == 1:
        return (coeffs @ radius[0]).unsqueeze(0)
    every = (coeffs @ radius.T).view(b, -1, b)  # [box of the row, row, radius of box]
    return torch.diagonal(every, dim1=0, dim2=2).T


def shared_rows_matmul(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """``x @ w`` for ``x`` ``(N, d)``; one row's product when every row is the same memory
    (a broadcast centre, stride 0), expanded (read-only) to ``N`` rows."""
    if x.shape[0] > 1 and x.stride(0) == 0:
        return (x[:1] @ w).expand(x.shape[0], -1)
    return x @ w


def _linears_on_input(graph: Graph) -> dict[int, tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]]:
    """Dense affine nodes (``op.as_matrix()``) fed by the network input through single-use ops
    that fold into them (``op.fold_into``: reshapes, permutations, input normalisation), with
    the composed affine map ``(W_eff, b_eff, |W_eff|)`` from the input.

    Cached on the graph (its ops are fixed once built).
    """
    cached = getattr(graph, "_input_linears", None)
    if cached is not None:
        return cached
    found: dict[int, tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]] = {}
    for j, node in enumerate(graph.nodes):
        matrix = node.op.as_matrix() if node.op is not None else None
        if matrix is None:
            continue
        weight, bias = matrix
        k = node.inputs[0]
        while k != 0 and len(graph.nodes[k].users) == 1:
            inner = graph.nodes[k]
            folded = inner.op.fold_into(weight, bias, graph.nodes[inner.inputs[0]].shape)
            if folded is None:
                break
            weight, bias = folded
            k = inner.inputs[0]
        if k == 0:
            found[j] = (weight, bias, weight.abs())
    graph._input_linears = found
    return found


def parse_method(method: str) -> frozenset[str]:
    """``"ibp+forward+backward"`` -> ``{"ibp", "forward", "backward"}`` (aliases: crown, affine)."""
    from evax.errors import InvalidInputError

    if not isinstance(method, str) or not method.strip():
        raise InvalidInputError(f"method must be a non-empty string, got {method!r}")
    parts = [p.strip().lower() for p in method.split("+")]
    unknown = [p for p in parts if p not in ALIASES]
    if unknown:
        raise InvalidInputError(
            f"unknown bound method(s) {unknown}: use ibp, forward, backward (alias crown), "
            "crown-ibp, alpha-crown, any '+'-combination of them, or exact"
        )
    return frozenset(ALIASES[p] for p in parts)


def forward_dominated(methods: set[str]) -> set[str]:
    """``methods`` without ``forward`` when ``backward`` is there too.

    On the same relaxations, a backward (CROWN) bound is never looser than the forward bound of
    the same quantity. Proof: forward keeps affine bounds ``L_k(x) <= h_k(x) <= U_k(x)`` of every
    node and resolves each op's coefficients by sign at once (a linear op ``W`` gives
    ``W+ L + W- U``; a relaxed op the lines ``a_l h + b_l <= g(h) <= a_u h + b_u``, applied to
    ``L`` or ``U`` by the sign of the slope; max pooling its chosen input and its upper line). Run
    backward from the same row ``c`` and write, at every cut of the pass, the pending
    multipliers ``lam_j`` resolved on forward's forms: ``F = sum_j lam_j+ L_j + lam_j- U_j + const``.
    At the start ``F`` is forward's bound. Each backward step merges coefficients that forward
    resolved apart: for ``S = sum_t p_t >= 0``, ``sum_t (p_t+ L + p_t- U) = S L + N (U - L)`` with
    ``N = sum_t p_t- <= 0``, which is ``<= S L = S+ L + S- U`` wherever ``L <= U`` (and likewise
    for ``S < 0``), so ``F`` only grows, pointwise on the set; at the input ``L = U = x`` and
    ``F`` is backward's linear bound. Its minimum over the set is therefore >= forward's.
    Every op's forward and backward rules use the same relaxation object (``Propagator.relax``),
    so inside one coupled run this holds at every node and at the output: computing forward's
    forms there would change no bound (tests check it on random nets of every op; the standalone
    forward run of a combination is a different matter: its own, looser intermediate bounds
    give different relaxations, so :func:`evax.bounds.api._run_combination` still runs it).
    """
    if "backward" in methods:
        return set(methods) - {"forward"}
    return set(methods)


def _engine_methods(methods: frozenset[str]) -> frozenset[str]:
    """The base passes a method set runs (crown-ibp and alpha-crown run backward passes)."""
    extra = {"backward"} if methods & set(OUTPUT_METHODS) else set()
    return frozenset(m for m in methods if m in BASE_METHODS) | extra


def bounds_its_own_temporaries(graph: Graph, methods: frozenset[str], inset: PerturbationSet) -> bool:
    """Whether a run keeps its temporaries in budget whatever the number of boxes: backward
    passes without forward forms, on a box set, through a convolutional stem (its CROWN bounds
    go by position, the dense passes a few boxes at a time). Such runs should see many boxes at
    once, so that boxes sharing most of their input share the stem's work (see
    :meth:`Propagator._backward_positions`)."""
    methods = _engine_methods(methods)
    if "forward" in methods or "backward" not in methods or inset.box_radius() is None:
        return False
    if len(graph.input_shape) != 3:
        return False
    return any(graph.needs_bounds(i) and stem_chain(graph, i) is not None for i in range(1, len(graph.nodes)))


def estimate_state_floats_per_box(graph: Graph) -> int:
    """Floats one box keeps for a whole run: bounds, IBP chain, relaxations and their padded
    copies for the stem's windows (about 16 per neuron)."""
    return 16 * sum(node.numel for node in graph.nodes)


def _backward_rows(graph: Graph, methods: frozenset[str]) -> int:
    """Rows of the widest backward pass: every neuron of a relaxed node for CROWN and
    alpha-CROWN (intermediate bounds by backward passes), the output rows only for CROWN-IBP
    alone (its intermediate bounds are IBP's)."""
    if methods & {"backward", "alpha-crown"}:
        return max(
            max((graph.nodes[i].numel for i in range(len(graph.nodes)) if graph.needs_bounds(i)), default=1),
            graph.output_size,
        )
    return graph.output_size


def estimate_floats_per_box(graph: Graph, methods: frozenset[str]) -> int:
    """Rough peak number of floats one box needs (used to pick an automatic chunk size)."""
    base = _engine_methods(methods)
    d = graph.nodes[0].numel
    widest = max(node.numel for node in graph.nodes)
    total = 8 * widest
    if "forward" in base:
        total += 6 * d * widest
    if "backward" in base:
        total += 6 * min(_backward_rows(graph, methods), 4096) * max(d, widest)
    return int(math.ceil(total))


def estimate_largest_tensor(graph: Graph, methods: frozenset[str]) -> int:
    """Floats per box of the largest temporary (forward forms, backward multipliers).

    Chunks are sized so that this stays around a few tens of MB: larger temporaries are
    served by fresh ``mmap`` pages, whose page faults cost more than the arithmetic.
    """
    base = _engine_methods(methods)
    widest = max(node.numel for node in graph.nodes[1:])
    largest = widest
    if "forward" in base:
        largest = max(largest, graph.nodes[0].numel * widest)
    if "backward" in base:
        rows = _backward_rows(graph, methods)
        # Multipliers stop at the first affine layer on the input (concretised block by block,
        # see Propagator._concretize_through_linear): the reshapes before it never hold any.
        fused = _input_chain_nodes(graph)
        reached = max((n.numel for i, n in enumerate(graph.nodes) if i > 0 and i not in fused), default=1)
        largest = max(largest, 2 * min(rows, 4096) * reached)
    return largest


def _input_chain_nodes(graph: Graph) -> set[int]:
    """The reshape / input-normalisation nodes between the input and its affine layers."""
    chain: set[int] = set()
    for j in _linears_on_input(graph):
        k = graph.nodes[j].inputs[0]
        while k != 0:
            chain.add(k)
            k = graph.nodes[k].inputs[0]
    return chain
