"""Linear ops: Linear, Conv2d, elementwise affine maps (BatchNorm, normalisation, scalar
arithmetic, Dropout/Identity), reshapes, sums of nodes (residual add) and average pooling."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from evax.bounds.ops.base import LinearOp


class Linear(LinearOp):
    """``y = x W^T + b`` on flat features; ``W`` is ``(out, in)``."""

    kind = "linear"

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None) -> None:
        self.weight = weight.detach()
        self.weight_abs = self.weight.abs()
        self.bias = None if bias is None else bias.detach()

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        return x @ self.weight.T

    def apply_abs(self, x: torch.Tensor) -> torch.Tensor:
        return x @ self.weight_abs.T

    def transpose(self, lam: torch.Tensor) -> list[torch.Tensor]:
        return [lam @ self.weight]

    def backward(self, lam: torch.Tensor, relaxation=None):
        # (B, K, out) @ (out, in): one GEMM, no reshapes needed.
        const = None if self.bias is None else lam @ self.bias
        return [lam @ self.weight], const

    def to(self, device=None, dtype=None) -> Linear:
        super().to(device, dtype)
        self.weight_abs = self.weight.abs()
        return self


class Conv2d(LinearOp):
    """2-D convolution (zero padding) with stride, padding, dilation and groups."""

    kind = "conv2d"

    def __init__(self, weight, bias, stride, padding, dilation, groups, in_shape) -> None:
        self.weight = weight.detach()
        self.weight_abs = self.weight.abs()
        self.bias = None if bias is None else bias.detach().view(-1, 1, 1)
        self.stride, self.padding, self.dilation, self.groups = stride, padding, dilation, groups
        self.in_shape = tuple(in_shape)

    def _conv(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, w, None, self.stride, self.padding, self.dilation, self.groups)

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        return self._conv(x, self.weight)

    def apply_abs(self, x: torch.Tensor) -> torch.Tensor:
        return self._conv(x, self.weight_abs)

    def transpose(self, lam: torch.Tensor) -> list[torch.Tensor]:
        size = (lam.shape[0], *self.in_shape)
        return [
            torch.nn.grad.conv2d_input(
                size, self.weight, lam, self.stride, self.padding, self.dilation, self.groups
            )
        ]

    def to(self, device=None, dtype=None) -> Conv2d:
        super().to(device, dtype)
        self.weight_abs = self.weight.abs()
        return self


class ElementwiseAffine(LinearOp):
    """``y = x * scale + shift`` with ``scale``/``shift`` broadcastable to the per-sample shape.

    Covers BatchNorm in eval mode, input normalisation ``(x - mean) / std``, scalar arithmetic
    with constants, Dropout (eval) and Identity.
    """

    kind = "affine"

    def __init__(self, scale: torch.Tensor | float, shift: torch.Tensor | float | None) -> None:
        self.scale = torch.as_tensor(scale).detach()
        self.scale_abs = self.scale.abs()
        self.bias = None if shift is None else torch.as_tensor(shift).detach()

    def _expand(self, t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        # scale/shift are per-sample shaped; left-pad with ones for the batch dims.
        return t.reshape((1,) * (x.ndim - t.ndim) + tuple(t.shape)) if t.ndim else t

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        return x * self._expand(self.scale, x)

    def apply_abs(self, x: torch.Tensor) -> torch.Tensor:
        return x * self._expand(self.scale_abs, x)

    def transpose(self, lam: torch.Tensor) -> list[torch.Tensor]:
        return [lam * self._expand(self.scale, lam)]

    def to(self, device=None, dtype=None) -> ElementwiseAffine:
        super().to(device, dtype)
        self.scale_abs = self.scale.abs()
        return self


class Reshape(LinearOp):
    """Change of per-sample shape (Flatten, view, reshape)."""

    kind = "reshape"

    def __init__(self, in_shape, out_shape) -> None:
        self.in_shape, self.out_shape = tuple(in_shape), tuple(out_shape)

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        return x.reshape(x.shape[0], *self.out_shape)

    def interval(self, *ivs):
        (lo, hi), = ivs
        return self.apply(lo), self.apply(hi)  # a permutation of the variables: exact, no copy

    def transpose(self, lam: torch.Tensor) -> list[torch.Tensor]:
        return [lam.reshape(lam.shape[0], *self.in_shape)]

    def backward(self, lam: torch.Tensor, relaxation=None):
        return [lam.reshape(*lam.shape[:2], *self.in_shape)], None


class Sum(LinearOp):
    """``y = sum_i c_i x_i`` of several nodes of the same shape (residual add, subtraction)."""

    kind = "add"

    def __init__(self, coeffs: tuple[float, ...]) -> None:
        self.coeffs = tuple(float(c) for c in coeffs)
        self.n_inputs = len(coeffs)

    def apply(self, *xs: torch.Tensor) -> torch.Tensor:
        out = xs[0] * self.coeffs[0]
        for c, x in zip(self.coeffs[1:], xs[1:], strict=True):
            out = out + c * x
        return out

    def apply_abs(self, *xs: torch.Tensor) -> torch.Tensor:
        out = xs[0] * abs(self.coeffs[0])
        for c, x in zip(self.coeffs[1:], xs[1:], strict=True):
            out = out + abs(c) * x
        return out

    def transpose(self, lam: torch.Tensor) -> list[torch.Tensor]:
        return [lam * c for c in self.coeffs]

    def backward(self, lam: torch.Tensor, relaxation=None):
        return [lam * c for c in self.coeffs], None


class LinearFunction(LinearOp):
    """Any linear map given by a function with a nonnegative matrix (average pooling).

    The transpose is obtained exactly with a vector-Jacobian product of ``fn``.
    """

    kind = "pool"

    def __init__(self, fn: Callable[[torch.Tensor], torch.Tensor], in_shape, name: str) -> None:
        self.fn = fn
        self.in_shape = tuple(in_shape)
        self.kind = name

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        return self.fn(x)

    def transpose(self, lam: torch.Tensor) -> list[torch.Tensor]:
        with torch.enable_grad():
            x = torch.zeros(
                (lam.shape[0], *self.in_shape),
                device=lam.device,
                dtype=lam.dtype,
                requires_grad=True,
            )
            (grad,) = torch.autograd.grad(self.fn(x), x, grad_outputs=lam)
        return [grad]
