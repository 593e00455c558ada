"""CROWN passes of boxes that differ from a *root* box on a few pixels, as differences on windows.

EVA bounds the whole ball and one box per fixed cell; every such box differs from the whole
ball (its root, see :func:`~evax.bounds.propagate.box_roots`) on one cell. Rows that start with
the same multipliers in every box -- the neurons of a dense layer after a convolutional stem
and pooling -- then keep the root's multipliers everywhere except on a window around that cell:
below an op, a box's multipliers can differ from its root's only where they already differed
or where the op's relaxation differs (where the op's input bounds differ), and a convolution
spreads a difference by its kernel. So each box runs only the *difference* to its root's pass,
on a window of the stem's maps, with the ops' patch rules (:mod:`evax.bounds.local_backward`)::

    delta_in = rule_box(lam_root + delta) - rule_root(lam_root)     (relaxed op)
    delta_in = W^T delta                                             (affine op)

and its bound is the root's plus the differences of the constants and of the concretisation on
the input window. These are the dense pass's numbers (to float rounding) at a fraction of its
work: the root's pass is run once, densely, recording its multipliers.

Where the differences would not stay on a small window (a box differing from its root on much
of the image, an op above the stem whose relaxation differs), the box gets the dense pass.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from evax.bounds.local_backward import Windows, stem_chain, window_dot

if TYPE_CHECKING:  # pragma: no cover
    from evax.bounds.graph import Graph

_MAX_AREA = 0.5
"""A box whose differences cover more than this share of the stem's top map gets the dense pass."""


def split_path(graph: Graph, start: int) -> tuple[list[int], list[int]] | None:
    """The backward path from node ``start`` to the input as ``(top, stem)``: the nodes whose
    ops run first (``start`` first; the last one's op maps onto the stem) and the stem's
    :func:`~evax.bounds.local_backward.stem_chain`. ``None`` when the path branches, has no
    stem, or the op entering the stem is relaxed without a window rule (``window_backward``)."""
    top: list[int] = []
    j = start
    while j != 0:
        stem = stem_chain(graph, j)
        if stem is not None:
            entry = graph.nodes[top[-1]].op if top else None
            if entry is not None and entry.needs_relaxation and not hasattr(entry, "window_backward"):
                return None
            return top, stem
        node = graph.nodes[j]
        if len(node.inputs) != 1:
            return None
        top.append(j)
        j = node.inputs[0]
    return None


def _tensors(value) -> list[torch.Tensor]:
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, (tuple, list)):
        return [t for v in value for t in _tensors(v)]
    return []


def relaxation_differs(relaxation, root: torch.Tensor, hw: tuple[int, int] | None) -> torch.Tensor | None:
    """Where each box's relaxation differs from its root's: ``(N, H, W)`` for ``hw`` (any
    channel), ``(N,)`` (anywhere) without. ``None`` when a tensor's layout is not understood."""
    n = root.shape[0]
    out = torch.zeros((n, *hw) if hw else (n,), dtype=torch.bool, device=root.device)
    for t in _tensors(relaxation):
        if t.ndim == 0 or t.shape[0] == 1:
            continue  # shared by every box
        if t.shape[0] != n:
            return None
        d = t != t[root]
        if hw is None:
            out |= d.reshape(n, -1).any(1)
        elif t.ndim >= 3 and tuple(t.shape[-2:]) == hw:
            out |= d.reshape(n, -1, *hw).any(1)
        else:
            return None
    return out


def _rects(mask: torch.Tensor) -> torch.Tensor:
    """``(N, H, W)`` -> ``(N, 4)`` bounding rectangles ``[top, left, bottom, right)`` of the
    True entries (an empty mask gives ``[0, 0, 1, 1]``: one entry, where nothing differs)."""
    rows, cols = mask.any(2), mask.any(1)
    h, w = mask.shape[1:]
    ar_h, ar_w = torch.arange(h, device=mask.device), torch.arange(w, device=mask.device)
    top = torch.where(rows, ar_h, h).amin(1)
    bottom = torch.where(rows, ar_h + 1, 0).amax(1)
    left = torch.where(cols, ar_w, w).amin(1)
    right = torch.where(cols, ar_w + 1, 0).amax(1)
    empty = ~rows.any(1)
    rect = torch.stack([top, left, bottom, right], dim=1)
    return torch.where(empty.unsqueeze(1), torch.tensor([0, 0, 1, 1], device=mask.device), rect)


@dataclass
class DeltaPlan:
    """Which boxes run as differences to their root, and on which windows.

    Attributes:
        top, stem: :func:`split_path`.
        boxes: ``(P,)`` the boxes run as differences.
        roots: ``(R,)`` their roots (run densely, recording their multipliers).
        root_pos: ``(P,)`` each box's root as an index into ``roots``.
        anchor: ``(P, 2)`` top-left corner of each box's window on the stem's top node.
        window: ``(Rh, Rw)`` the window (the largest any box needs).
        relaxed: the relaxed ops' nodes on the way (their root multipliers are read).
        stem_inputs: the input nodes of :attr:`sums_for`.
        entry_anchor, entry_window: the same as ``anchor``/``window`` on the output of the op
            entering the stem (when it is relaxed), where its relaxation differs;
            ``entry_mask`` ``(N, Ho, Wo)``.
    """

    top: list[int]
    stem: list[int]
    boxes: torch.Tensor
    roots: torch.Tensor
    root_pos: torch.Tensor
    anchor: torch.Tensor
    window: tuple[int, int]
    relaxed: list[int]
    stem_inputs: tuple[int, ...] = ()
    entry_anchor: torch.Tensor | None = None
    entry_window: tuple[int, int] | None = None
    entry_mask: torch.Tensor | None = None

    @property
    def recorded(self) -> list[int]:
        """Nodes whose root multipliers the differences read: the relaxed ops' outputs and
        inputs on the way, and the input."""
        return sorted({*self.relaxed, *self.stem_inputs, 0})

    @property
    def sums_for(self) -> list[int]:
        """The relaxed stem ops: the root's side of their rule is read off the root's pass
        (their input's multipliers, and the prefix sums of the constant's shares)."""
        return [j for j in self.relaxed if j in self.stem]


def plan_delta(
    graph: Graph, start: int, relax: dict, root: torch.Tensor, centre: torch.Tensor, radius: torch.Tensor
) -> DeltaPlan | None:
    """The plan for a pass from ``start`` over boxes ``centre +- radius`` (``(N, C, H, W)``)
    with roots ``root`` (``(N,)``), or ``None`` when no box gains from it."""
    split = split_path(graph, start)
    if split is None:
        return None
    top, stem = split
    n = root.shape[0]
    candidate = root != torch.arange(n, device=root.device)
    if not bool(candidate.any()):
        return None
    nodes = graph.nodes
    # Ops above the entry must relax every box as its root does (their multipliers stay shared).
    for j in top[:-1]:
        if nodes[j].op.needs_relaxation:
            d = relaxation_differs(relax.get(j), root, None)
            if d is None:
                return None
            candidate &= ~d
    t = stem[0]
    _, h_t, w_t = nodes[t].shape
    mask = torch.zeros((n, h_t, w_t), dtype=torch.bool, device=root.device)

    def up(m: torch.Tensor, below: list[int]) -> torch.Tensor:
        """A ``(N, h, w)`` mask on a stem node up to node ``t`` through the ops ``below``."""
        m = m.unsqueeze(1)
        for k in reversed(below):
            m = nodes[k].op.local_support(m)
        return m[:, 0]

    relaxed = []
    for idx, j in enumerate(stem):
        if nodes[j].op.needs_relaxation:
            d = relaxation_differs(relax.get(j), root, tuple(nodes[j].shape[1:]))
            if d is None or not hasattr(nodes[j].op, "const_map"):
                return None
            mask |= up(d, stem[:idx])
            relaxed.append(j)
    differs_in = ((centre != centre[root]) | (radius != radius[root])).any(1)
    mask |= up(differs_in, stem)
    entry = nodes[top[-1]] if top else None
    entry_mask = None
    if entry is not None and entry.op.needs_relaxation:
        entry_mask = relaxation_differs(relax.get(top[-1]), root, tuple(entry.shape[1:]))
        if entry_mask is None:
            return None
        mask |= entry.op.input_support(entry_mask.unsqueeze(1))[:, 0]
        relaxed = [top[-1], *relaxed]
    rect = _rects(mask)
    area = (rect[:, 2] - rect[:, 0]) * (rect[:, 3] - rect[:, 1])
    candidate &= area <= _MAX_AREA * h_t * w_t
    boxes = candidate.nonzero()[:, 0]
    if boxes.numel() == 0:
        return None
    rect = rect[boxes]
    window = (int((rect[:, 2] - rect[:, 0]).max()), int((rect[:, 3] - rect[:, 1]).max()))
    roots, root_pos = torch.unique(root[boxes], return_inverse=True)
    plan = DeltaPlan(top, stem, boxes, roots, root_pos, rect[:, :2], window, relaxed)
    plan.stem_inputs = tuple(nodes[j].inputs[0] for j in plan.sums_for)
    if entry_mask is not None:
        e_rect = _rects(entry_mask[boxes])
        plan.entry_anchor = e_rect[:, :2]
        plan.entry_window = (int((e_rect[:, 2] - e_rect[:, 0]).max()), int((e_rect[:, 3] - e_rect[:, 1]).max()))
        plan.entry_mask = entry_mask
    return plan


def delta_lower(
    graph: Graph,
    plan: DeltaPlan,
    relax: dict,
    root: RootPass,
    centre: torch.Tensor,
    radius: torch.Tensor,
    pairs: slice,
    cache: dict | None = None,
) -> torch.Tensor:
    """``(P', K)`` each box's lower bound minus its root's, for the boxes ``plan.boxes[pairs]``.

    Args:
        root: what the roots' dense pass left (:func:`root_pass`).
        centre, radius: ``(N, C, H, W)`` the input boxes.
        cache: shared by the calls with the same ``recorded`` (padded copies of the maps, see
            :class:`~evax.bounds.local_backward.Windows`).
    """
    nodes = graph.nodes
    boxes, root_pos = plan.boxes[pairs], plan.root_pos[pairs]
    root_box = plan.roots[root_pos]
    t = plan.stem[0]
    size = tuple(nodes[t].shape[1:])
    anchor = plan.anchor[pairs]
    cache = {} if cache is None else cache
    win_box = Windows(anchor[:, 0], anchor[:, 1], boxes, cache, size)
    win_root = Windows(anchor[:, 0], anchor[:, 1], root_box, cache, size)
    win_rec = Windows(anchor[:, 0], anchor[:, 1], root_pos, cache, size)
    recorded = root.maps
    ref = recorded[0]
    p, k = boxes.numel(), ref.shape[1]

    def root_lam(j: int, offset, window) -> torch.Tensor:
        return win_rec.gather(recorded[j], offset, window)  # (1, P, K, C, Rh, Rw)

    const = torch.zeros((1, p, k), device=ref.device, dtype=ref.dtype)
    c_t = nodes[t].shape[0]
    delta = torch.zeros((1, p, k, c_t, *plan.window), device=ref.device, dtype=ref.dtype)
    if plan.entry_mask is not None:
        delta, const = _entry_delta(graph, plan, relax, recorded, pairs, boxes, root_box, root_pos, cache)
    offset = (0, 0)
    for j in plan.stem:
        node = nodes[j]
        in_shape = nodes[node.inputs[0]].shape
        if node.op.needs_relaxation:
            window = tuple(delta.shape[-2:])
            lam_r = root_lam(j, offset, window)
            new_u, c_u, out_offset = node.op.local_backward(
                lam_r + delta, const, offset, win_box, relax.get(j), node.shape, in_shape
            )
            # The root's side, read off its pass: its input's multipliers and constant's shares.
            new_r = root_lam(node.inputs[0], out_offset, tuple(new_u.shape[-2:]))
            top, left = anchor[:, 0] + offset[0], anchor[:, 1] + offset[1]
            c_r = _window_sum(root.const_sums[j], root_pos, top, left, window)
            delta, const = new_u - new_r, c_u - c_r
        else:
            delta, const, out_offset = node.op.local_backward(
                delta, const, offset, win_box, relax.get(j), node.shape, in_shape
            )
        offset = out_offset
    window = tuple(delta.shape[-2:])
    lam_r = root_lam(0, offset, window)
    lam_u = lam_r + delta
    x_u, q_u = win_box.gather(centre, offset, window), win_box.gather(radius, offset, window)
    x_r, q_r = win_root.gather(centre, offset, window), win_root.gather(radius, offset, window)
    value_u = window_dot(lam_u, x_u) - window_dot(lam_u.abs(), q_u)
    value_r = window_dot(lam_r, x_r) - window_dot(lam_r.abs(), q_r)
    return (value_u - value_r + const)[0]


@dataclass
class RootPass:
    """What the differences read of their roots' dense pass.

    Attributes:
        maps: the roots' multipliers ``(R, K, C, H, W)`` at ``plan.recorded``.
        const_sums: for the ops ``plan.sums_for``, 2-D prefix sums ``(R, K, H + 1, W + 1)`` of
            each neuron's share of the op's constant (summed over channels): a window's share is
            four reads.
    """

    maps: dict[int, torch.Tensor]
    const_sums: dict[int, torch.Tensor]


def root_pass(graph: Graph, plan: DeltaPlan, relax: dict, recorded: dict[int, torch.Tensor]) -> RootPass:
    """:class:`RootPass` from the multipliers recorded in the roots' pass (``(R or 1, K, *shape)``)."""
    r = plan.roots.numel()
    maps = {j: t.expand(r, *t.shape[1:]) for j, t in recorded.items()}
    sums = {}
    for j in plan.sums_for:
        relaxation = tuple(t[plan.roots] if t.shape[0] > 1 else t for t in relax[j])
        share = graph.nodes[j].op.const_map(maps[j], relaxation).sum(dim=2)  # (R, K, H, W)
        sums[j] = torch.nn.functional.pad(share.cumsum(-2).cumsum(-1), (1, 0, 1, 0))
    return RootPass(maps, sums)


def _window_sum(sums: torch.Tensor, box: torch.Tensor, top: torch.Tensor, left: torch.Tensor, window) -> torch.Tensor:
    """``(P, K)`` sums over the windows ``[top, + Rh) x [left, + Rw)`` (clipped to the map) of
    the maps whose prefix sums are ``sums`` ``(R, K, H + 1, W + 1)``, map ``box[q]`` for pair ``q``."""
    h, w = sums.shape[-2] - 1, sums.shape[-1] - 1
    y0, y1 = top.clamp(0, h), (top + window[0]).clamp(0, h)
    x0, x1 = left.clamp(0, w), (left + window[1]).clamp(0, w)
    s = sums[box]  # (P, K, H + 1, W + 1)
    ar = torch.arange(box.numel(), device=box.device)

    def at(y, x):
        return s[ar, :, y, x]

    return at(y1, x1) - at(y0, x1) - at(y1, x0) + at(y0, x0)


def _entry_delta(graph, plan: DeltaPlan, relax, recorded: dict[int, torch.Tensor], pairs, boxes, root_box, root_pos, cache):
    """Difference of the op entering the stem (relaxed, e.g. max pooling) between each box and
    its root, on the box's window of the stem's top node: ``(1, P, K, C, Rh, Rw)``, ``(1, P, K)``.
    Only the outputs where the relaxations differ contribute (elsewhere both are the same)."""
    e = plan.top[-1]
    op = graph.nodes[e].op
    size = tuple(graph.nodes[e].shape[1:])
    anchor = plan.entry_anchor[pairs]
    window = plan.entry_window
    win_box = Windows(anchor[:, 0], anchor[:, 1], boxes, cache, size)
    win_root = Windows(anchor[:, 0], anchor[:, 1], root_box, cache, size)
    win_rec = Windows(anchor[:, 0], anchor[:, 1], root_pos, cache, size)
    lam = win_rec.gather(recorded[e], (0, 0), window)[0]  # (P, K, C, ph, pw)
    differs = win_box.gather(plan.entry_mask.unsqueeze(1).to(lam.dtype), (0, 0), window)[0]  # (P, 1, 1, ph, pw)
    lam = lam * differs

    def gathered(win: Windows) -> tuple:
        out = []
        for t in relax[e]:
            g = win.gather(t.to(torch.float64 if t.dtype == torch.long else lam.dtype), (0, 0), window)
            out.append(g[0, :, 0].to(t.dtype))  # (P, C, ph, pw)
        return tuple(out)

    origin = plan.anchor[pairs]
    out_u, c_u = op.window_backward(lam, gathered(win_box), origin, plan.window, differs[:, 0, 0] > 0)
    out_r, c_r = op.window_backward(lam, gathered(win_root), origin, plan.window, differs[:, 0, 0] > 0)
    return (out_u - out_r).unsqueeze(0), (c_u - c_r).unsqueeze(0)
