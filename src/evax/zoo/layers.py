"""Layers shared by the zoo's models.

Only :class:`Normalize` lives here: every zoo model takes pixels in ``[0, 1]`` and starts
with its own input normalisation, so perturbation balls are stated in pixel space. The bound
engine imports this class and treats it as an elementwise affine layer
``y = (x - mean) / std``; keep the buffer names ``mean`` and ``std``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from evax.errors import InvalidInputError


class Normalize(nn.Module):
    """Per-channel input normalisation ``y = (x - mean) / std``.

    Args:
        mean: one value per channel (images) or per feature (flat inputs).
        std: same length as ``mean``, all entries > 0.
        image: if True (default) the buffers have shape ``(C, 1, 1)`` and broadcast over
            inputs ``(N, C, H, W)``; if False they have shape ``(D,)`` for inputs ``(N, D)``.

    Buffers:
        mean: ``(C, 1, 1)`` or ``(D,)``, float32.
        std: same shape as ``mean``, float32, strictly positive.
    """

    mean: torch.Tensor
    std: torch.Tensor

    def __init__(
        self,
        mean: Sequence[float] | torch.Tensor,
        std: Sequence[float] | torch.Tensor,
        image: bool = True,
    ) -> None:
        super().__init__()
        m = torch.as_tensor(mean, dtype=torch.float32).flatten()
        s = torch.as_tensor(std, dtype=torch.float32).flatten()
        if m.numel() == 0 or m.shape != s.shape:
            raise InvalidInputError(
                f"Normalize needs mean and std of the same non-zero length, got {tuple(m.shape)}"
                f" and {tuple(s.shape)}"
            )
        if not bool(torch.isfinite(m).all()) or not bool((s > 0).all()):
            raise InvalidInputError("Normalize needs a finite mean and a std > 0 everywhere")
        if image:
            m, s = m.view(-1, 1, 1), s.view(-1, 1, 1)
        self.register_buffer("mean", m)
        self.register_buffer("std", s)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Normalise ``x`` of shape ``(N, C, H, W)`` (or ``(N, D)``); same shape out."""
        return (x - self.mean) / self.std

    def extra_repr(self) -> str:
        return f"mean={self.mean.flatten().tolist()}, std={self.std.flatten().tolist()}"
