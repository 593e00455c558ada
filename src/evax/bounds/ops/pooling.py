"""Max pooling and its relaxation.

For a window with input bounds ``[l_i, u_i]`` let ``j = argmax_i l_i``. If ``l_j >= u_i`` for
every other ``i`` the window's max *is* ``x_j`` (exact). Otherwise the relaxation is
``x_j <= max_i x_i <= max_i u_i`` (lower: the input with the largest lower bound, upper: the
constant largest upper bound), as in DeepPoly (Singh et al. 2019). Windows are handled with
``unfold``/gather so the op supports any kernel, stride, padding and dilation.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from evax.bounds.ops.base import Form, Op
from evax.bounds.ops.registry import Call, register


def _pair(v) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else tuple(int(t) for t in v)


@register(nn.MaxPool2d, F.max_pool2d,
          signature="(input, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False, "
                    "return_indices=False)",
          doc="MaxPool2d (any kernel, stride, padding, dilation; not ceil_mode)")
class MaxPool2d(Op):
    """``max_pool2d`` over ``(C, H, W)`` per-sample inputs (ceil_mode not supported)."""

    kind = "maxpool2d"
    needs_relaxation = True
    monotone = True

    def __init__(self, kernel_size, stride, padding, dilation, in_shape, out_shape) -> None:
        self.kernel_size, self.stride = kernel_size, stride
        self.padding, self.dilation = padding, dilation
        self.in_shape, self.out_shape = tuple(in_shape), tuple(out_shape)

    @classmethod
    def convert(cls, call: Call) -> MaxPool2d:
        call.input("input")
        if call.module is not None:
            mod = call.module
            kernel, stride, padding = mod.kernel_size, mod.stride, mod.padding
            dilation, ceil_mode, indices = mod.dilation, mod.ceil_mode, mod.return_indices
        else:
            kernel, stride, padding = call.const("kernel_size"), call.const("stride"), call.const("padding")
            dilation, ceil_mode, indices = call.const("dilation"), call.const("ceil_mode"), call.const(
                "return_indices")
        if ceil_mode or indices:
            raise call.unsupported("ceil_mode=True or return_indices=True")
        if len(call.input_shape("input")) != 3:
            raise call.unsupported("max pooling of inputs that are not (C, H, W) per sample")
        return cls(_pair(kernel), _pair(stride or kernel), _pair(padding), _pair(dilation),
                   call.input_shape("input"), call.out_shape)

    def evaluate(self, x: torch.Tensor) -> torch.Tensor:
        return F.max_pool2d(x, self.kernel_size, self.stride, self.padding, self.dilation)

    def interval(self, iv):
        return self.evaluate(iv[0]), self.evaluate(iv[1])

    def _windows(self, x: torch.Tensor, fill: float) -> torch.Tensor:
        """``(N, C, H, W)`` -> ``(N, C, k, L)`` window values (padding filled with ``fill``)."""
        n, c = x.shape[:2]
        pad = self.padding
        if any(pad):
            x = F.pad(x, (pad[1], pad[1], pad[0], pad[0]), value=fill)
        cols = F.unfold(x, self.kernel_size, self.dilation, 0, self.stride)
        return cols.view(n, c, -1, cols.shape[-1])

    def _window_index(self, device) -> torch.Tensor:
        """``(k, L)`` flat ``H*W`` index of each window element (``-1`` on padding)."""
        _, h, w = self.in_shape
        idx = torch.arange(h * w, device=device, dtype=torch.float64).view(1, 1, h, w)
        return self._windows(idx, -1.0)[0, 0].long()

    def relax(self, lower: torch.Tensor, upper: torch.Tensor):
        """Returns ``(index, dominant, upper_const)``: for each output ``(N, C, Ho, Wo)`` the flat
        ``C*H*W`` index of the input with the largest lower bound, whether it dominates the
        window, and the constant upper bound ``max_i u_i``."""
        n, c = lower.shape[:2]
        lw = self._windows(lower, -float("inf"))
        uw = self._windows(upper, -float("inf"))
        best_l, j = lw.max(dim=2)  # (N, C, L); ties go to the first input of the window
        others = uw.scatter(2, j.unsqueeze(2), -float("inf"))
        dominant = best_l >= others.amax(dim=2)
        u_max = uw.amax(dim=2)
        pos = self._window_index(lower.device)  # (k, L)
        flat = pos.gather(0, j.reshape(n * c, -1)).view(n, c, -1)
        _, h, w = self.in_shape
        flat = flat + (torch.arange(c, device=lower.device) * h * w).view(1, c, 1)
        shape = (n, *self.out_shape)
        return flat.view(shape), dominant.view(shape), u_max.view(shape)

    def forward(self, form: Form, relaxation=None) -> Form:
        index, dominant, u_max = relaxation
        n = index.shape[0]

        def pick(coeffs: torch.Tensor) -> torch.Tensor:  # (B, d, *S_in) -> (B, d, *S_out)
            b, d = coeffs.shape[:2]
            flat = coeffs.expand(n, *coeffs.shape[1:]).reshape(n, d, -1)
            out = flat.gather(2, index.view(n, 1, -1).expand(n, d, -1))
            return out.view(n, d, *self.out_shape)

        def pick_b(bias: torch.Tensor) -> torch.Tensor:
            flat = bias.expand(n, *bias.shape[1:]).reshape(n, -1)
            return flat.gather(1, index.view(n, -1)).view(n, *self.out_shape)

        al, bl = pick(form.al), pick_b(form.bl)
        au, bu = pick(form.au), pick_b(form.bu)
        au = au * dominant.unsqueeze(1)
        bu = torch.where(dominant, bu, u_max)
        return Form(al, bl, au, bu)

    def backward(self, lam: torch.Tensor, relaxation=None):
        index, dominant, u_max = relaxation
        n = index.shape[0]
        lam = lam.expand(n, *lam.shape[1:])
        k = lam.shape[1]
        pos, neg = lam.clamp_min(0), lam.clamp_max(0)
        # Lower bound of lam . y: positive multipliers take y >= x_j; negative ones take
        # y <= x_j (dominant windows) or y <= u_max (the rest).
        coef = pos + neg * dominant.unsqueeze(1)
        const = (neg * (~dominant).unsqueeze(1) * u_max.unsqueeze(1)).flatten(2).sum(dim=2)
        numel_in = 1
        for s in self.in_shape:
            numel_in *= s
        out = torch.zeros((n, k, numel_in), device=lam.device, dtype=lam.dtype)
        out.scatter_add_(2, index.view(n, 1, -1).expand(n, k, -1), coef.reshape(n, k, -1))
        return [out.view(n, k, *self.in_shape)], const

    def input_support(self, mask: torch.Tensor) -> torch.Tensor:
        """``(N, 1, Ho, Wo)`` bool -> ``(N, 1, H, W)``: the inputs some True output reads."""
        kernel = torch.ones((1, 1, *self.kernel_size), device=mask.device, dtype=torch.float32)
        extra = tuple(
            size - ((o - 1) * s - 2 * p + d * (k - 1) + 1)
            for size, o, s, p, d, k in zip(self.in_shape[1:], mask.shape[-2:], self.stride, self.padding,
                                           self.dilation, self.kernel_size, strict=True)
        )
        hit = F.conv_transpose2d(mask.to(torch.float32), kernel, None, self.stride, self.padding, extra, 1,
                                 self.dilation)
        return hit > 0

    def window_backward(self, lam, relaxation, origin, window, valid):
        """:meth:`backward` of a window of outputs into a window of the input (for
        :mod:`evax.bounds.delta_backward`).

        Args:
            lam: ``(P, K, C, ph, pw)`` multipliers of each pair's output window (zero where
                ``valid`` is False).
            relaxation: the relaxation read on the same windows, each ``(P, C, ph, pw)``.
            origin: ``(P, 2)`` input row/column of entry ``(0, 0)`` of each input window.
            window: ``(Rh, Rw)`` the input window, which holds every input a valid output picks.
            valid: ``(P, ph, pw)`` the outputs that may contribute.
        Returns:
            ``(P, K, C, Rh, Rw)`` multipliers of the input window and the ``(P, K)`` constant.
        """
        index, dominant, u_max = relaxation
        p, k, c = lam.shape[:3]
        _, h, w = self.in_shape
        rh, rw = window
        row = (index % (h * w)) // w - origin[:, 0].view(p, 1, 1, 1)
        col = index % w - origin[:, 1].view(p, 1, 1, 1)
        inside = (row >= 0) & (row < rh) & (col >= 0) & (col < rw)
        if bool((valid.unsqueeze(1) & ~inside).any()):
            raise RuntimeError("max pooling: a picked input lies outside its window")  # pragma: no cover
        local = ((index // (h * w)) * rh + row.clamp(0, rh - 1)) * rw + col.clamp(0, rw - 1)
        pos, neg = lam.clamp_min(0), lam.clamp_max(0)
        dom = dominant.unsqueeze(1)
        coef = pos + neg * dom
        const = (neg * (~dom) * u_max.unsqueeze(1)).flatten(2).sum(dim=2)
        out = torch.zeros((p, k, c * rh * rw), device=lam.device, dtype=lam.dtype)
        out.scatter_add_(2, local.reshape(p, 1, -1).expand(p, k, -1), coef.reshape(p, k, -1))
        return out.view(p, k, c, rh, rw), const

    def local_forward(self, form, relaxation, out_shape) -> Form | None:
        """:meth:`forward` with the picked inputs gathered from the patches (a dense form out:
        the stride breaks the window geometry, and this is much cheaper than densifying first).

        Output neuron ``o`` picks input neuron ``(c, h, w)`` (``relaxation[0]``); its coefficient
        for input pixel ``(a, b)`` is patch entry ``(c, h - a - offset_h, w - b - offset_w)`` when
        that lies in the window, else 0.
        """
        if relaxation is None:
            return None
        index, dominant, u_max = relaxation
        n = index.shape[0]
        c, h, w = form.shape
        (h0, w0), (rh, rw) = form.input_hw, form.window
        flat = index.reshape(n, 1, 1, -1)  # (N, 1, 1, M), M = C * Ho * Wo
        chan, row, col = flat // (h * w), (flat % (h * w)) // w, flat % w
        # Rows depend on (a, output) only, columns on (b, output): build them apart, then broadcast.
        i = row - torch.arange(h0, device=flat.device).view(1, h0, 1, 1) - form.offset[0]  # (N, H0, 1, M)
        j = col - torch.arange(w0, device=flat.device).view(1, 1, w0, 1) - form.offset[1]  # (N, 1, W0, M)
        dtype = form.al.dtype
        keep = (((i >= 0) & (i < rh)).to(dtype) * ((j >= 0) & (j < rw)).to(dtype)).unsqueeze(1)
        pos = (chan * rh + i.clamp(0, rh - 1)) * rw + j.clamp(0, rw - 1)  # (N, H0, W0, M)
        c0 = form.al.shape[1]
        pos = pos.unsqueeze(1).expand(n, c0, h0, w0, flat.shape[-1])

        def pick(p: torch.Tensor) -> torch.Tensor:  # -> (N, d, *S_out)
            patches = p.expand(n, *p.shape[1:]).reshape(n, c0, h0, w0, -1)
            return (patches.gather(4, pos) * keep).view(n, c0 * h0 * w0, *index.shape[1:])

        def pick_b(b: torch.Tensor) -> torch.Tensor:
            return b.expand(n, *b.shape[1:]).reshape(n, -1).gather(1, index.view(n, -1)).view(index.shape)

        al = pick(form.al)
        au = pick(form.au) * dominant.unsqueeze(1)
        bu = torch.where(dominant, pick_b(form.bu), u_max)
        return Form(al, pick_b(form.bl), au, bu)

    def milp(self, model, ins, out, in_bounds) -> None:
        """``y = max_i x_i`` per window: ``y >= x_i``; one binary per candidate ``a_i`` with
        ``sum a_i = 1`` and ``y <= x_i + (U - l_i)(1 - a_i)`` (``U`` the window's largest upper
        bound). Inputs whose upper bound is below the window's largest lower bound can never be
        the max and get no binary; a window with one candidate is an equality."""
        x = ins[0].reshape(-1)
        lo, hi = (np.asarray(b, dtype=float).reshape(-1) for b in in_bounds[0])
        pos = self._window_index(torch.device("cpu")).numpy()  # (k, L) flat H*W index, -1 on padding
        c, h, w = self.in_shape
        y = out.reshape(c, -1)
        for ch in range(c):
            for o in range(pos.shape[1]):
                members = pos[:, o][pos[:, o] >= 0] + ch * h * w  # flat input positions
                yo = y[ch, o]
                best_l = lo[members].max()
                cand = members[hi[members] >= best_l]
                model.add_rows([(np.full(members.size, yo), 1.0), (x[members], -1.0)], 0.0, np.inf)
                if cand.size == 1:
                    model.add_rows([(np.array([yo]), 1.0), (x[cand], -1.0)], 0.0, 0.0)
                    continue
                big = hi[cand].max() - lo[cand]
                a = model.add_vars(np.zeros(cand.size), np.ones(cand.size), integer=True)
                model.add_rows([(a[k : k + 1], 1.0) for k in range(cand.size)], 1.0, 1.0)
                model.add_rows([(np.full(cand.size, yo), 1.0), (x[cand], -1.0), (a, big)], -np.inf, big)
