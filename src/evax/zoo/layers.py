"""Layers shared by the zoo's models.

:class:`Normalize`: every zoo model takes pixels in ``[0, 1]`` and starts with its own input
normalisation, so perturbation balls are stated in pixel space. The bound engine imports this
class and treats it as an elementwise affine layer ``y = (x - mean) / std``; keep the buffer
names ``mean`` and ``std``.

:class:`ChannelsLast`: adapts a channels-last (NHWC) model, e.g. a Keras export loaded with
:func:`evax.zoo.from_onnx`, to the channel-first (NCHW) inputs evax works with.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.fx
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


class ChannelsLast(nn.Module):
    """Run a channels-last model on channel-first inputs: ``forward(x) = model(x.permute(0, 2, 3, 1))``.

    evax (bounds, balls, groups of pixels, every attribution method) takes images
    ``(N, C, H, W)``. A model exported from Keras / TensorFlow expects ``(N, H, W, C)``; fed an
    NCHW tensor it may still run (an MLP's ``Reshape(-1, H*W*C)`` accepts any layout) and
    silently read the pixels in the wrong order. Wrapped, it takes NCHW like every other
    model, and the permutation is part of the traced graph, so the bound engine sees it.

    Args:
        model: the channels-last module, inputs ``(N, H, W, C)``.
        nhwc_shape: its per-sample input shape ``(H, W, C)`` if known (the ONNX declaration).
        source: where the model comes from, for the repr (e.g. ``"onnx 'mlp.onnx'"``).

    Attributes:
        model: the wrapped channels-last module.
        input_layout: ``"NHWC"``, the layout of the *wrapped* model's input.
        input_shape: per-sample shape this wrapper takes, ``(C, H, W)``, or None if unknown.
        onnx_input_shape: the wrapped model's per-sample shape ``(H, W, C)``, or None.

    Eager calls check the input: a tensor that is not 4-d, or whose per-sample shape is not
    ``input_shape``, raises :class:`~evax.errors.InvalidInputError` (an NHWC tensor passed by
    mistake is named as such). Under torch.fx symbolic tracing (what the bound engine does) no
    check can run, since shapes are symbolic: the traced graph is the bare permutation
    ``call_method permute(x, 0, 2, 3, 1)`` followed by the wrapped model's graph.
    """

    def __init__(
        self,
        model: nn.Module,
        nhwc_shape: Sequence[int] | None = None,
        source: str | None = None,
    ) -> None:
        super().__init__()
        self.model = model
        self.input_layout = "NHWC"
        if nhwc_shape is not None:
            nhwc_shape = tuple(int(d) for d in nhwc_shape)
            if len(nhwc_shape) != 3 or min(nhwc_shape) < 1:
                raise InvalidInputError(
                    f"ChannelsLast needs a per-sample shape (H, W, C) of positive sizes, got {nhwc_shape}"
                )
        self.onnx_input_shape: tuple[int, ...] | None = nhwc_shape
        self.input_shape: tuple[int, ...] | None = (
            None if nhwc_shape is None else (nhwc_shape[2], nhwc_shape[0], nhwc_shape[1])
        )
        self.source = source

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x``: ``(N, C, H, W)``; returns the wrapped model's output on ``x`` as NHWC."""
        if not isinstance(x, torch.fx.Proxy):
            self._check(x)
        return self.model(x.permute(0, 2, 3, 1))

    def _check(self, x: torch.Tensor) -> None:
        if x.ndim != 4:
            raise InvalidInputError(
                f"{type(self).__name__} takes images (N, C, H, W), got shape {tuple(x.shape)}"
            )
        want = self.input_shape
        got = tuple(x.shape[1:])
        if want is None or got == want:
            return
        hint = ""
        if got == self.onnx_input_shape:
            hint = (
                "; this looks like an NHWC tensor: the wrapper takes NCHW and permutes itself, "
                "pass x.permute(0, 3, 1, 2)"
            )
        raise InvalidInputError(
            f"{type(self).__name__} takes NCHW inputs of per-sample shape {want}, got {got}{hint}"
        )

    def extra_repr(self) -> str:
        src = f"{self.source}, " if self.source else ""
        if self.input_shape is None:
            return f"{src}input NHWC -> takes NCHW"
        return f"{src}input NHWC {self.onnx_input_shape} -> takes NCHW {self.input_shape}"

    def __repr__(self) -> str:
        """One line: ``ChannelsLast(onnx 'f.onnx', input NHWC (28, 28, 1) -> takes NCHW (1, 28, 28))``.

        ``print(model.model)`` shows the wrapped graph.
        """
        return f"{type(self).__name__}({self.extra_repr()})"
