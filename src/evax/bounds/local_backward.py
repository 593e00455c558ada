"""CROWN for the neurons of a convolutional stem, with multipliers kept as local patches.

Bounding one neuron ``(c, h, w)`` of a node reached from the input by stride-1 convolutions and
elementwise ops pulls a multiplier back that is nonzero only on a window around ``(h, w)`` at
every earlier node (its receptive field). The dense backward pass would carry the whole map
``(K, C, H, W)`` for each of the ``K`` rows; here each row carries its window
``(K, C, Rh, Rw)``, whose top-left corner sits at the row's position plus a shared offset. The
arithmetic is the same as :meth:`Propagator._pull_back` on the dense maps (zeros skipped), so
the bounds are identical; on the CIFAR-10 benchmark net this is what makes CROWN's
intermediate bounds affordable (auto_LiRPA's "patches" mode follows the same idea).

Only box-shaped input sets (``p = inf`` balls, boxes) are concretised here.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from evax.bounds.local_forms import axis_valid
from evax.bounds.ops.base import same_flat_order

if TYPE_CHECKING:  # pragma: no cover
    from evax.bounds.graph import Graph


def stem_chain(graph: Graph, i: int) -> list[int] | None:
    """Nodes from ``i`` down to the input (exclusive) when each has a local backward rule
    (``op.local_backward_ok``: stride-1 convolutions, elementwise affine maps and elementwise
    nonlinearities), a single input and a ``(C, H, W)`` shape. ``None`` otherwise."""
    chain = []
    j = i
    while j != 0:
        node = graph.nodes[j]
        if not node.op.local_backward_ok or len(node.inputs) != 1 or len(node.shape) != 3:
            return None
        chain.append(j)
        j = node.inputs[0]
    return chain if len(graph.input_shape) == 3 else None


def stem_window(graph: Graph, chain: list[int]) -> tuple[int, int]:
    """Size of a row's window at the input: the receptive field of the chain's ops."""
    rh, rw = 1, 1
    for j in chain:
        gh, gw = graph.nodes[j].op.local_growth()
        rh, rw = rh + gh, rw + gw
    return rh, rw


class Windows:
    """Windows ``(B, P, 1, C, Rh, Rw)`` of node-shaped maps at ``P`` positions ``(pos_h, pos_w)``.

    With ``box`` (``(P,)`` box indices) every position belongs to one box (a *pair*): windows
    are read from that box's map only and come back as ``(1, P, 1, C, Rh, Rw)``, so pairs of
    different boxes share one batch dimension. ``cache`` keeps the padded, channels-last copies
    of the maps across the chunks of one node (the maps do not change between chunks).
    """

    def __init__(
        self,
        pos_h: torch.Tensor,
        pos_w: torch.Tensor,
        box: torch.Tensor | None = None,
        cache: dict | None = None,
        size: tuple[int, int] | None = None,
    ) -> None:
        self.pos_h, self.pos_w, self.box = pos_h, pos_w, box
        self._cache = {} if cache is None else cache
        # Positions lie in [0, size): the padding is sized for all of them, so that the cached
        # copies serve every chunk.
        self._size = size if size is not None else (int(pos_h.max()) + 1, int(pos_w.max()) + 1)

    def _padded(self, t: torch.Tensor, offset: tuple[int, int], window: tuple[int, int]):
        """``t`` zero-padded so that every window of every position of the map is inside, as
        ``(B, [K,] Hp, Wp, C)``, with the padding added on top/left."""
        key = (id(t), offset, window, self._size)
        hit = self._cache.get(key)
        if hit is not None and hit[0] is t:
            return hit[1], hit[2]
        (oh, ow), (rh, rw) = offset, window
        h, w = t.shape[-2:]
        top, left = max(0, -oh), max(0, -ow)
        bottom = max(0, self._size[0] - 1 + oh + rh - h)
        right = max(0, self._size[1] - 1 + ow + rw - w)
        padded = F.pad(t, (left, right, top, bottom)).movedim(-3, -1).contiguous()
        self._cache[key] = (t, padded, (top, left))
        return padded, (top, left)

    def derived(self, source: object, make):
        """A map built from ``source`` by ``make()`` once per node (cached with the windows)."""
        key = ("derived", id(source))
        hit = self._cache.get(key)
        if hit is None or hit[0] is not source:
            hit = (source, make())
            self._cache[key] = hit
        return hit[1]

    def gather(self, t: torch.Tensor, offset: tuple[int, int], window: tuple[int, int]) -> torch.Tensor:
        """``t`` ``(B, C, H, W)`` (or ``(B, K, C, H, W)``: ``K`` maps per box) read on each
        position's window ``[pos + offset, + R)`` (zero outside the map): ``(B, P, K, C, Rh,
        Rw)`` (``K = 1`` for a single map), stored with channels innermost -- the layout of the
        multipliers after a transposed convolution on the CPU, so that elementwise rules mixing
        the two run on matching strides."""
        (oh, ow), (rh, rw) = offset, window
        padded, (top, left) = self._padded(t, offset, window)
        if padded.ndim == 4:
            padded = padded.unsqueeze(1)
        b, k, hp, wp, c = padded.shape
        s = padded.stride()
        windows = padded.as_strided(
            (b, hp - rh + 1, wp - rw + 1, k, rh, rw, c), (s[0], s[2], s[3], s[1], s[2], s[3], s[4])
        )
        rows, cols = self.pos_h + oh + top, self.pos_w + ow + left
        if self.box is None:
            got = windows[:, rows, cols]
        else:
            box = self.box if b > 1 else torch.zeros_like(self.box)
            got = windows[box, rows, cols].unsqueeze(0)
        return got.movedim(-1, -3)

    def valid(self, offset, window, shape_hw) -> torch.Tensor:
        """``(1, P, 1, 1, Rh, Rw)`` mask of the window entries inside an ``H x W`` map."""
        rows, cols = (
            axis_valid(pos, off, r, size)
            for pos, off, r, size in zip((self.pos_h, self.pos_w), offset, window, shape_hw, strict=True)
        )
        return (rows[:, :, None] & cols[:, None, :]).view(1, -1, 1, 1, *window)


def local_lower_bounds(
    graph: Graph,
    chain: list[int],
    positions: torch.Tensor,
    relax: dict,
    ref: torch.Tensor,
    rad: torch.Tensor,
    boxes: torch.Tensor | None = None,
    cache: dict | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """CROWN lower and upper bounds ``(N, C, P)`` of every channel of node ``chain[0]`` at the
    ``P`` flat ``h * W + w`` ``positions``; with ``boxes``, of position ``positions[q]`` of box
    ``boxes[q]`` only, ``(1, C, P)``.

    All channels of a position share their windows, so the relaxations are read once per
    position and broadcast over its ``2 C`` rows (``+e_c`` and ``-e_c``). The multipliers
    start shared by every position (the rows ``+-e_c``) and become per position where the
    window leaves the map or meets a relaxation.

    Args:
        graph: the bound graph.
        chain: :func:`stem_chain` of the node.
        positions: ``(P,)`` flat spatial indices.
        relax: the relaxations of the nonlinear nodes (as in the propagator).
        ref, rad: the input box ``ref +- rad``, each ``(N, C0, H0, W0)``.
        boxes: optional ``(P,)`` box of each position (pairs, see :class:`Windows`).
        cache: shared by the calls for one node (see :class:`Windows`).
    """
    node = graph.nodes[chain[0]]
    c, h, w = node.shape
    device, dtype = ref.device, ref.dtype
    windows = Windows(positions // w, positions % w, boxes, cache, (h, w))
    eye = torch.eye(c, device=device, dtype=dtype)
    lam = torch.cat([eye, -eye]).view(1, 1, 2 * c, c, 1, 1)
    offset = (0, 0)
    const = torch.zeros((1, 1, 2 * c), device=device, dtype=dtype)
    for j in chain:
        node = graph.nodes[j]
        in_shape = graph.nodes[node.inputs[0]].shape
        lam, const, offset = node.op.local_backward(
            lam, const, offset, windows, relax.get(j), node.shape, in_shape
        )
    window = (lam.shape[-2], lam.shape[-1])
    q, x = windows.gather(rad, offset, window), windows.gather(ref, offset, window)
    lower = window_dot(lam, x) - window_dot(lam.abs(), q) + const  # (N, P, 2C)
    return lower[:, :, :c].transpose(1, 2), -lower[:, :, c:].transpose(1, 2)


def window_dot(lam: torch.Tensor, win: torch.Tensor) -> torch.Tensor:
    """``sum over (C, Rh, Rw)`` of ``lam * win``: ``(B, P, K, ...) x (B', P, 1, ...) -> (B*, P, K)``,
    as a batched matrix-vector product (no temporary of ``lam``'s size)."""
    lam, win = same_flat_order(lam, win)
    return torch.matmul(lam.flatten(3), win.flatten(3).transpose(-1, -2)).squeeze(-1)


def node_map(t: torch.Tensor, shape: tuple[int, int, int]) -> torch.Tensor:
    """An elementwise constant (broadcastable to the node) as a ``(1, C, H, W)`` map."""
    return torch.broadcast_to(t, (1, *shape)).contiguous()
