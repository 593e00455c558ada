"""Max pooling and its relaxation.

For a window with input bounds ``[l_i, u_i]`` let ``j = argmax_i l_i``. If ``l_j >= u_i`` for
every other ``i`` the window's max *is* ``x_j`` (exact). Otherwise the relaxation is
``x_j <= max_i x_i <= max_i u_i`` (lower: the input with the largest lower bound, upper: the
constant largest upper bound), as in DeepPoly (Singh et al. 2019). Windows are handled with
``unfold``/gather so the op supports any kernel, stride, padding and dilation.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from evax.bounds.ops.base import Form, Op


class MaxPool2d(Op):
    """``max_pool2d`` over ``(C, H, W)`` per-sample inputs (ceil_mode not supported)."""

    kind = "maxpool2d"
    needs_relaxation = True
    monotone = True

    def __init__(self, kernel_size, stride, padding, dilation, in_shape, out_shape) -> None:
        self.kernel_size, self.stride = kernel_size, stride
        self.padding, self.dilation = padding, dilation
        self.in_shape, self.out_shape = tuple(in_shape), tuple(out_shape)

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
