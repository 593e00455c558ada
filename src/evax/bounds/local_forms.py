"""Forward (affine) forms kept as local patches through the convolutional stem of a network.

A dense forward form holds, for every input variable, its coefficient on every neuron of a node:
``(B, d, C, H, W)`` with ``d = C0 * H0 * W0``. Through stride-1 convolutions and elementwise
ops, input pixel ``(a, b)`` only reaches an ``Rh x Rw`` window of neurons (the receptive field),
so a :class:`LocalForm` keeps that window only: coefficients ``(B, C0, H0, W0, C, Rh, Rw)``.
Patch row ``i`` of input row ``a`` is neuron row ``a + offset_h + i`` (likewise for columns);
entries that fall outside the layer are kept at zero, which is also what a zero-padded
convolution sees there. On CIFAR-sized images this stores and convolves 10-100x fewer
coefficients than the dense form, with identical results (it is the same arithmetic, minus the
zeros).

The form is scattered into the dense layout (:func:`densify`) at the first op the local rules do
not cover (pooling, strided convolutions, reshapes, sums, linear layers) or once the window
would be as large as the layer. Only box-shaped input sets (``p = inf`` balls, boxes) are
concretised locally; other norms use the dense path.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from evax.bounds.ops.base import Form


@dataclass
class LocalForm:
    """Affine lower/upper forms of a ``(C, H, W)`` node as patches around each input pixel.

    Attributes:
        al, au: coefficients ``(B, C0, H0, W0, C, Rh, Rw)`` (``B`` is ``N`` or ``1``).
        bl, bu: offsets ``(B, C, H, W)``.
        offset: ``(offset_h, offset_w)``, both ``<= 0``: the node row/column of patch entry 0
            for input row/column 0.
        shape: the node's per-sample shape ``(C, H, W)``.
    """

    al: torch.Tensor
    bl: torch.Tensor
    au: torch.Tensor
    bu: torch.Tensor
    offset: tuple[int, int]
    shape: tuple[int, int, int]

    @property
    def shared(self) -> bool:
        return self.al is self.au and self.bl is self.bu

    @property
    def window(self) -> tuple[int, int]:
        return int(self.al.shape[-2]), int(self.al.shape[-1])

    @property
    def input_hw(self) -> tuple[int, int]:
        return int(self.al.shape[2]), int(self.al.shape[3])


def input_local_form(shape: tuple[int, ...], ref: torch.Tensor) -> LocalForm:
    """The identity form of a ``(C0, H0, W0)`` input: a ``1 x 1`` window per pixel."""
    c0, h0, w0 = shape
    eye = torch.eye(c0, device=ref.device, dtype=ref.dtype).view(1, c0, 1, 1, c0, 1, 1)
    eye = eye.expand(1, c0, h0, w0, c0, 1, 1).contiguous()
    zero = torch.zeros((1, c0, h0, w0), device=ref.device, dtype=ref.dtype)
    return LocalForm(eye, zero, eye, zero, (0, 0), (c0, h0, w0))


def axis_valid(pos: torch.Tensor, offset: int, r: int, size: int) -> torch.Tensor:
    """``(len(pos), r)``: whether window entry ``i`` of position ``p`` -- row (or column)
    ``p + offset + i`` -- lies inside a map of ``size`` rows (or columns)."""
    idx = pos.view(-1, 1) + offset + torch.arange(r, device=pos.device)
    return (idx >= 0) & (idx < size)


def _validity(form_hw, window, offset, layer_hw, device) -> torch.Tensor:
    """``(1, 1, H0, W0, 1, Rh, Rw)`` float mask: 1 where the patch entry is a neuron of the layer."""
    rows, cols = (
        axis_valid(torch.arange(n_in, device=device), off, r, size)
        for n_in, r, off, size in zip(form_hw, window, offset, layer_hw, strict=True)
    )
    valid = rows[:, None, :, None] & cols[None, :, None, :]
    h0, w0 = form_hw
    return valid.view(1, 1, h0, w0, 1, *window)


def to_patches(t: torch.Tensor, form: LocalForm) -> torch.Tensor:
    """A node-shaped tensor ``(B, C, H, W)`` seen through each input pixel's window:
    ``(B, 1, H0, W0, C, Rh, Rw)``, zero outside the layer."""
    b, c = t.shape[:2]
    (h0, w0), (rh, rw) = form.input_hw, form.window
    cols = F.unfold(t, (rh, rw), padding=(-form.offset[0], -form.offset[1]))
    return cols.view(b, c, rh, rw, h0, w0).permute(0, 4, 5, 1, 2, 3).unsqueeze(1)


def densify(form: LocalForm) -> Form:
    """The same forms in the dense layout: coefficients ``(B, C0*H0*W0, C, H, W)``."""

    def scatter(p: torch.Tensor) -> torch.Tensor:
        b, c0, h0, w0, c, rh, rw = p.shape
        _, h, w = form.shape
        ph, pw = -form.offset[0], -form.offset[1]
        full = p.new_zeros((b, c0, h0, w0, c, h0 + rh - 1, w0 + rw - 1))
        s = full.stride()
        # Patch entry (a, b, i, j) lands on padded row a + i, column b + j of its own slab.
        windows = full.as_strided(p.shape, (s[0], s[1], s[2] + s[5], s[3] + s[6], s[4], s[5], s[6]))
        windows.copy_(p)
        return full[..., ph : ph + h, pw : pw + w].reshape(b, c0 * h0 * w0, c, h, w)

    al = scatter(form.al)
    au = al if form.al is form.au else scatter(form.au)
    return Form(al, form.bl, au, form.bu)


def concretize_local(
    form: LocalForm, ref: torch.Tensor, rad: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Bounds ``(N, C, H, W)`` of the forms over the box ``ref +- rad`` (each ``(N, C0, H0, W0)``).

    ``min_x al . x = al . ref - |al| . rad``; the per-window sums are gathered onto the neurons
    with ``fold`` (the adjoint of the ``unfold`` that defines the windows).
    """
    n = ref.shape[0]
    r = ref.reshape(n, *ref.shape[1:4], 1, 1, 1)
    q = rad.reshape(n, *rad.shape[1:4], 1, 1, 1)
    _, h, w = form.shape
    (h0, w0), (rh, rw) = form.input_hw, form.window

    def fold(p: torch.Tensor) -> torch.Tensor:  # (N, H0, W0, C, Rh, Rw) -> (N, C, H, W)
        c = p.shape[3]
        cols = p.permute(0, 3, 4, 5, 1, 2).reshape(n, c * rh * rw, h0 * w0)
        return F.fold(cols, (h, w), (rh, rw), padding=(-form.offset[0], -form.offset[1]))

    value_l = (form.al * r).sum(dim=1)
    spread_l = (form.al.abs() * q).sum(dim=1)
    if form.shared:
        value_u, spread_u = value_l, spread_l
    else:
        value_u = (form.au * r).sum(dim=1)
        spread_u = (form.au.abs() * q).sum(dim=1)
    lower = fold(value_l - spread_l) + form.bl
    upper = fold(value_u + spread_u) + form.bu
    return lower, upper


# ----------------------------------------------------------------------------------------------
def local_forward(op, form: LocalForm, relaxation, out_shape: tuple[int, ...]) -> LocalForm | Form | None:
    """The op's forward rule on local forms (:meth:`Op.local_forward`), or ``None`` when it has
    no local rule here (the caller then densifies the form)."""
    if len(out_shape) != 3:
        return None
    return op.local_forward(form, relaxation, tuple(out_shape))


def scale_patches(scale: torch.Tensor, form: LocalForm) -> torch.Tensor:
    """An elementwise scale (broadcastable to the node) broadcast to the patches of ``form``."""
    if scale.numel() == 1:
        return scale.reshape(())
    c, h, w = form.shape
    full = torch.broadcast_to(scale, (1, c, h, w))
    if scale.ndim >= 3 and scale.shape[-1] == 1 and scale.shape[-2] == 1:  # per channel
        return full[:, :, 0, 0].reshape(1, 1, 1, 1, c, 1, 1)
    return to_patches(full.contiguous(), form)


def linear_local(op, form: LocalForm, apply, apply_abs, offset, window, out_shape) -> LocalForm:
    """A linear op ``L`` applied to local forms (``apply``/``apply_abs`` act on patches
    ``(B, C0, H0, W0, C, Rh, Rw)``) and to the offsets (``op.evaluate``/``op.apply_abs``).

    ``offset``/``window`` are the output's patch geometry; entries that fall outside the layer
    are zeroed when the window grew."""
    valid = None
    if window != form.window:
        valid = _validity(form.input_hw, window, offset, out_shape[1:], form.al.device)

    def masked(x: torch.Tensor) -> torch.Tensor:
        return x if valid is None else x.mul_(valid)

    if form.shared:
        a = masked(apply(form.al))
        b = op.evaluate(form.bl)
        return LocalForm(a, b, a, b, offset, out_shape)
    mid_a = masked(apply((form.al + form.au) / 2))
    rad_a = masked(apply_abs((form.au - form.al) / 2))
    mid_b = op.evaluate((form.bl + form.bu) / 2)
    rad_b = op.apply_abs((form.bu - form.bl) / 2)
    return LocalForm(mid_a - rad_a, mid_b - rad_b, mid_a + rad_a, mid_b + rad_b, offset, out_shape)
