"""Variables of an input (pixels, features or groups), shared by the attribution methods and
the metrics.

A metric or a method such as Greedy-AS reasons about *variables* ``u``: the things it ranks,
removes or frees. Inputs are flattened to ``(N, C, P)`` (``P = H * W`` pixels for images
``(N, C, H, W)``, ``C = 1, P = D`` for flat inputs ``(N, D)``); a variable is

* a pixel (all its channels together) or a feature, when ``groups`` is ``None``
  (``V = P`` variables), or
* a group of pixels, given as a grouping callable (``evax.groups.grid(12)``), masks
  ``(G, H, W)`` / ``(N or 1, G, H, W)`` (bool), or an int label map ``(N or 1, H, W)``;
  for flat inputs masks ``(G, D)`` / ``(N or 1, G, D)`` or labels ``(N or 1, D)``
  (``V = G`` variables).

:class:`Variables` turns explanations into per-variable scores ``(N, V)`` and boolean
selections of variables ``(M, V)`` into pixel masks ``(M, 1, P)``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from evax import groups as groups_mod
from evax.errors import InvalidInputError

GroupsLike = Callable[[torch.Tensor], torch.Tensor] | torch.Tensor | None

__all__ = ["GroupsLike", "Variables", "flatten_inputs", "reduce_channels"]


def reduce_channels(attr: torch.Tensor, how: str = "sum") -> torch.Tensor:
    """(N, C, H, W) -> (N, H, W) by summing (``"sum"``), summing absolute values (``"abs"``) or
    taking the max absolute value (``"max_abs"``) over channels; other shapes are returned as is.
    """
    if attr.ndim != 4:
        return attr
    if how == "sum":
        return attr.sum(dim=1)
    if how == "abs":
        return attr.abs().sum(dim=1)
    if how == "max_abs":
        return attr.abs().amax(dim=1)
    raise InvalidInputError(f"unknown channel reduction {how!r}: use 'sum', 'abs' or 'max_abs'")


def _flat_masks(groups: GroupsLike, inputs: torch.Tensor, allow_overlap: bool) -> torch.Tensor:
    """Group masks ``(B, G, P)`` (bool, ``B`` in ``{1, N}``) for ``inputs``."""
    n = inputs.shape[0]
    if inputs.ndim == 4:
        g = groups
        if isinstance(g, torch.Tensor) and g.dtype == torch.bool and g.ndim == 3:
            g = g.unsqueeze(0)  # (G, H, W) -> (1, G, H, W)
        masks = groups_mod.resolve(g, inputs, allow_overlap)  # type: ignore[arg-type]
        return masks.flatten(2)
    if inputs.ndim != 2:
        raise InvalidInputError(f"groups need inputs (N, C, H, W) or (N, D), got {tuple(inputs.shape)}")
    d = inputs.shape[1]
    masks = groups(inputs) if callable(groups) else groups
    if not isinstance(masks, torch.Tensor):
        raise InvalidInputError("groups must be a grouping callable or a tensor")
    masks = masks.to(inputs.device)
    if masks.dtype == torch.bool:
        if masks.ndim == 2:
            masks = masks.unsqueeze(0)
    elif masks.is_floating_point():
        raise InvalidInputError("group labels must be integers (or masks must be bool)")
    else:
        if masks.ndim != 2:
            raise InvalidInputError(f"a label map must have shape (N or 1, D), got {tuple(masks.shape)}")
        masks = masks.unsqueeze(1) == torch.unique(masks).view(1, -1, 1)
    if masks.ndim != 3 or masks.shape[0] not in (1, n) or masks.shape[2] != d:
        raise InvalidInputError(
            f"group masks must have shape (N={n} or 1, G, D={d}), got {tuple(masks.shape)}"
        )
    if masks.shape[1] == 0:
        raise InvalidInputError("there are no groups")
    if (~masks.any(dim=2)).any():
        raise InvalidInputError("a group is empty")
    if not allow_overlap and (masks.sum(dim=1) > 1).any():
        raise InvalidInputError("groups overlap; pass allow_overlap=True if that is intended")
    return masks


class Variables:
    """The variables of ``inputs`` (pixels/features or groups); see the module docstring.

    Args:
        inputs: ``(N, C, H, W)`` images or ``(N, D)`` flat inputs.
        groups: ``None`` (each pixel / feature is a variable) or a grouping / masks / labels.
        reduce: channel reduction of ``(N, C, H, W)`` explanations before aggregation
            (``"sum"``, ``"abs"``, ``"max_abs"``; see :func:`evax.attribution.base.reduce_channels`).
        group_reduce: how pixel scores make a group score: ``"sum"`` (the attribution of the
            set, additive as Xplique's muFidelity), ``"mean"`` (a painted per-group map gives
            back exactly the group's score), or ``"auto"`` (default): per sample, ``"mean"``
            when the map is constant on every group -- a group-level explanation such as EVA's,
            KernelSHAP's or Greedy-AS's painted map, whose group score is that constant (summing
            would weight unequal cells, e.g. a 12x12 grid on 28x28, by their area) -- else
            ``"sum"``.
        allow_overlap: accept overlapping groups.

    Attributes:
        n_vars: ``V``; ``masks``: ``(B, V, P)`` bool or ``None`` for pixels; ``shape``: the
        input's per-sample shape.
    """

    def __init__(
        self,
        inputs: torch.Tensor,
        groups: GroupsLike = None,
        reduce: str = "sum",
        group_reduce: str = "auto",
        allow_overlap: bool = False,
    ) -> None:
        if inputs.ndim not in (2, 4):
            raise InvalidInputError(
                f"inputs must be images (N, C, H, W) or flat (N, D), got shape {tuple(inputs.shape)}"
            )
        if group_reduce not in ("sum", "mean", "auto"):
            raise InvalidInputError(f"group_reduce must be 'sum', 'mean' or 'auto', got {group_reduce!r}")
        reduce_channels(torch.zeros(1, 1, 1, 1), reduce)  # validate now
        self.n = inputs.shape[0]
        self.shape = tuple(inputs.shape[1:])
        self.channels = inputs.shape[1] if inputs.ndim == 4 else 1
        self.spatial = tuple(inputs.shape[2:]) if inputs.ndim == 4 else (inputs.shape[1],)
        self.n_pixels = int(torch.tensor(self.spatial).prod())
        self.reduce, self.group_reduce = reduce, group_reduce
        self.masks = None if groups is None else _flat_masks(groups, inputs, allow_overlap)
        self.n_vars = self.n_pixels if self.masks is None else self.masks.shape[1]
        # label of each pixel (V where no group covers it), for cheap gathers; None if overlapping
        self._labels: torch.Tensor | None = None
        if self.masks is not None and not (self.masks.sum(dim=1) > 1).any():
            covered = self.masks.any(dim=1)
            self._labels = torch.where(covered, self.masks.to(torch.uint8).argmax(dim=1), self.n_vars)

    # -- explanations -> variable scores ----------------------------------------------------
    def scores(self, explanations: torch.Tensor) -> torch.Tensor:
        """Per-variable scores ``(N, V)`` from explanations.

        Accepted shapes: the input's ``(N, C, H, W)`` (channels reduced with ``reduce``),
        ``(N, 1, H, W)``, ``(N, H, W)``, flat ``(N, D)``, or -- with groups -- the group scores
        ``(N, G)`` themselves.
        """
        if not isinstance(explanations, torch.Tensor):
            raise InvalidInputError(
                f"explanations must be a tensor or a callable explain(inputs, target), "
                f"got {type(explanations).__name__}"
            )
        e = explanations.detach()
        if e.shape[0] != self.n:
            raise InvalidInputError(
                f"explanations have {e.shape[0]} samples, the metric was configured with {self.n}"
            )
        if not e.is_floating_point():
            e = e.float()
        if not torch.isfinite(e).all():
            raise InvalidInputError("explanations contain NaN or inf")
        if self.masks is not None and e.ndim == 2 and e.shape[1] == self.n_vars and len(self.shape) == 3:
            return e
        if len(self.shape) == 3:
            c, h, w = self.shape
            if e.ndim == 4 and e.shape[1] in (c, 1) and e.shape[2:] == (h, w):
                e = reduce_channels(e, self.reduce) if e.shape[1] > 1 else e[:, 0]
            if e.shape[1:] != (h, w):
                raise InvalidInputError(
                    f"explanations must have shape (N, H, W)=(N, {h}, {w}), (N, C, H, W)=(N, {c}, {h}, {w})"
                    + (f" or group scores (N, {self.n_vars})" if self.masks is not None else "")
                    + f"; got {tuple(explanations.shape)}"
                )
        elif e.shape[1:] != self.shape:
            raise InvalidInputError(
                f"explanations must have shape (N, D)=(N, {self.shape[0]}), got {tuple(explanations.shape)}"
            )
        flat = e.reshape(self.n, self.n_pixels)
        if self.masks is None:
            return flat
        m = self.masks.to(flat.dtype)
        total = (
            torch.einsum("np,bgp->ng", flat, m) if m.shape[0] == 1 else torch.einsum("np,ngp->ng", flat, m)
        )
        if self.group_reduce == "sum":
            return total
        mean = total / m.sum(dim=2)
        if self.group_reduce == "mean":
            return mean
        # "auto": mean where the map is constant on every group of the sample (a painted map)
        back = torch.einsum("ng,bgp->np", mean, m) if m.shape[0] == 1 else torch.einsum("ng,ngp->np", mean, m)
        covered = m.sum(dim=1) > 0  # (B, P)
        count = m.sum(dim=1).clamp_min(1)
        dev = ((flat - back / count).abs() * covered).amax(dim=1)
        scale = flat.abs().amax(dim=1).clamp_min(1e-30)
        painted = dev <= 1e-5 * scale
        return torch.where(painted.unsqueeze(1), mean, total)

    # -- selections of variables -> pixel masks ---------------------------------------------
    def pixel_mask(self, selected: torch.Tensor, sample: torch.Tensor) -> torch.Tensor:
        """Pixel masks ``(M, 1, P)`` (bool) of ``selected`` variables ``(M, V)`` (bool) for the
        samples ``sample`` ``(M,)`` (only used to pick per-sample group masks)."""
        if self.masks is None:
            return selected.unsqueeze(1)
        if self._labels is not None:
            labels = (
                self._labels.expand(selected.shape[0], -1)
                if self._labels.shape[0] == 1
                else self._labels[sample]
            )
            ext = torch.cat([selected, selected.new_zeros(selected.shape[0], 1)], dim=1)
            return ext.gather(1, labels).unsqueeze(1)
        m = self.masks[0].unsqueeze(0) if self.masks.shape[0] == 1 else self.masks[sample]
        covered = torch.einsum("mg,mgp->mp", selected.to(torch.float32), m.to(torch.float32)) > 0
        return covered.unsqueeze(1)

    def paint(self, var_scores: torch.Tensor) -> torch.Tensor:
        """Map ``(N, *spatial)`` giving every pixel its variable's score (0 if uncovered)."""
        if self.masks is None:
            return var_scores.reshape(var_scores.shape[0], *self.spatial)
        m = self.masks.to(var_scores.dtype)
        total = (
            torch.einsum("ng,bgp->np", var_scores, m)
            if m.shape[0] == 1
            else torch.einsum("ng,ngp->np", var_scores, m)
        )
        return (total / m.sum(dim=1).clamp_min(1)).reshape(var_scores.shape[0], *self.spatial)


def flatten_inputs(inputs: torch.Tensor) -> torch.Tensor:
    """``(N, C, H, W) -> (N, C, H*W)``, ``(N, D) -> (N, 1, D)``."""
    return inputs.flatten(2) if inputs.ndim == 4 else inputs.unsqueeze(1)

