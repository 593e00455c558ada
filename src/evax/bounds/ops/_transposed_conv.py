"""The transposed convolution ``W^T lam`` of CROWN's backward passes, in the fastest layout.

A backward pass through a convolution applies its transpose to the multipliers: ``(R, C_out,
h, w) -> (R, C_in, H, W)`` for ``R`` rows (boxes x specification rows, or (box, position) pairs x
rows on the patch path). On the CPU, oneDNN runs it about 1.8x faster with channels-last
tensors; when the op's input has only a few channels (an RGB or grey image: the first layer),
one GEMM ``(R h w, C_out) @ (C_out, C_in k_h k_w)`` followed by a col2im is 1.5-3x faster
still (oneDNN's kernels are poor at 1-3 output channels). The channels-last path returns a
strided view of the usual NCHW shape, which every elementwise rule preserves, so the next
convolution finds its input in its layout.

All paths compute the same sums in a different order: they agree to float rounding.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

SMALL_INPUT_CHANNELS = 8
"""At most this many input channels (output channels of the transpose): the GEMM path."""


class TransposedConv:
    """``W^T`` of a convolution with weight ``(C_out, C_in / groups, k_h, k_w)``; caches the
    weight in the layouts its paths need."""

    def __init__(self, weight: torch.Tensor, stride, padding, dilation, groups: int) -> None:
        self.weight = weight
        self.stride, self.padding, self.dilation, self.groups = stride, padding, dilation, groups
        self._cache: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}

    def _layout(self, key: str, make) -> torch.Tensor:
        hit = self._cache.get(key)
        if hit is None or hit[0] is not self.weight:
            hit = (self.weight, make(self.weight))
            self._cache[key] = hit
        return hit[1]

    def __call__(self, lam: torch.Tensor, output_padding=(0, 0), padding=None) -> torch.Tensor:
        """``lam`` ``(R, C_out, h, w)`` -> ``(R, C_in, H, W)``; ``padding`` overrides the op's
        (the patch path transposes without padding: its windows carry their own offsets)."""
        padding = self.padding if padding is None else padding
        w = self.weight
        if lam.device.type != "cpu" or lam.requires_grad or w.requires_grad:
            return F.conv_transpose2d(lam, w, None, self.stride, padding, output_padding, self.groups, self.dilation)
        simple = self.groups == 1 and self.stride == (1, 1) and tuple(output_padding) == (0, 0)
        if simple and w.shape[1] <= SMALL_INPUT_CHANNELS:
            return self._gemm(lam, padding)
        weight = self._layout("channels_last", lambda t: t.contiguous(memory_format=torch.channels_last))
        lam = lam.contiguous(memory_format=torch.channels_last)
        return F.conv_transpose2d(lam, weight, None, self.stride, padding, output_padding, self.groups, self.dilation)

    def _gemm(self, lam: torch.Tensor, padding) -> torch.Tensor:
        """Stride 1, one group: ``cols = lam^T W`` per pixel (one GEMM), then col2im: each
        kernel tap's columns added at its shift (``k_h k_w`` strided adds over the whole batch:
        2-3x faster than ``F.fold``, which loops over the batch), cropped by ``padding``.
        Returns a channels-last view."""
        c_out, c_in, kh, kw = self.weight.shape
        dh, dw = self.dilation
        ph, pw = padding
        r, _, h, w = lam.shape
        matrix = self._layout("gemm", lambda t: t.reshape(c_out, c_in * kh * kw))
        rows = lam.permute(0, 2, 3, 1).reshape(r * h * w, c_out)  # a view when lam is channels-last
        cols = (rows @ matrix).view(r, h, w, c_in, kh, kw)
        full = torch.zeros((r, h + dh * (kh - 1), w + dw * (kw - 1), c_in), device=lam.device, dtype=lam.dtype)
        for y in range(kh):
            for x in range(kw):
                full[:, y * dh : y * dh + h, x * dw : x * dw + w] += cols[..., y, x]
        out = full[:, ph : full.shape[1] - ph, pw : full.shape[2] - pw]
        return out.permute(0, 3, 1, 2)
