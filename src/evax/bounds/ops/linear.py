"""Affine ops: Linear / MatMul, Conv2d, elementwise affine maps (BatchNorm, arithmetic with
constants), sums of nodes (residual add, subtraction), and linear functions with a nonnegative
matrix (average pooling, means, sums)."""

from __future__ import annotations

import functools
import math
import operator
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from evax.bounds.local_backward import node_map, window_dot
from evax.bounds.local_forms import linear_local, scale_patches
from evax.bounds.ops._transposed_conv import TransposedConv
from evax.bounds.ops.base import LinearOp
from evax.bounds.ops.constants import constant
from evax.bounds.ops.registry import Call, register


def _pair(v) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else tuple(int(t) for t in v)


def weight_tensor(call: Call, name: str, ndim: int | None = None) -> torch.Tensor | None:
    """A constant tensor argument (a weight or bias), checked finite and floating-point."""
    value = call.const(name)
    if value is None:
        return None
    if not isinstance(value, torch.Tensor) or (ndim is not None and value.ndim != ndim):
        raise call.unsupported(f"argument {name!r} must be a constant tensor with {ndim} dimensions")
    if not value.is_floating_point() or not bool(torch.isfinite(value).all()):
        raise call.unsupported(f"argument {name!r} must be a finite floating-point tensor")
    return constant(value)


@register(nn.Linear, F.linear, torch.matmul, operator.matmul, torch.mm, "matmul", "mm",
          signatures={F.linear: "(input, weight, bias=None)", torch.matmul: "(input, other)",
                      operator.matmul: "(input, other)", torch.mm: "(input, other)",
                      "matmul": "(input, other)", "mm": "(input, other)"},
          doc="Linear / MatMul with a constant matrix (x W^T + b on flat features)")
class Linear(LinearOp):
    """``y = x W^T + b`` on flat features; ``W`` is ``(out, in)``."""

    kind = "linear"

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None) -> None:
        self.weight = constant(weight)
        self.weight_abs = self.weight.abs()
        self.bias = None if bias is None else constant(bias)

    @classmethod
    def convert(cls, call: Call) -> Linear:
        if call.module is not None:
            call.input("input")
            weight, bias = call.module.weight, call.module.bias
        elif "weight" in call.bound:  # F.linear
            call.input("input")
            weight, bias = weight_tensor(call, "weight", 2), weight_tensor(call, "bias", 1)
        else:  # x @ W with a constant W of shape (in, out)
            if not call.is_input("input"):
                raise call.unsupported("a constant matrix times an input-dependent one (only x @ W)")
            call.input("input")
            weight, bias = weight_tensor(call, "other", 2).T, None
        if len(call.input_shape("input")) != 1:
            raise call.unsupported("a matrix product on inputs with more than one feature dimension")
        return cls(weight, bias)

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

    def as_matrix(self):
        return self.weight, self.bias

    def to(self, device=None, dtype=None) -> Linear:
        super().to(device, dtype)
        self.weight_abs = self.weight.abs()
        return self


@register(nn.Conv2d, F.conv2d,
          signature="(input, weight, bias=None, stride=1, padding=0, dilation=1, groups=1)",
          doc="Conv2d (zero padding; stride, padding incl. 'same'/'valid', dilation, groups)")
class Conv2d(LinearOp):
    """2-D convolution (zero padding) with stride, padding, dilation and groups."""

    kind = "conv2d"

    def __init__(self, weight, bias, stride, padding, dilation, groups, in_shape) -> None:
        self.weight = constant(weight)
        self.weight_abs = self.weight.abs()
        self.bias = None if bias is None else constant(bias).view(-1, 1, 1)
        self.stride, self.padding, self.dilation, self.groups = stride, padding, dilation, groups
        self.in_shape = tuple(in_shape)
        self.local_backward_ok = self.stride == (1, 1)

    @classmethod
    def convert(cls, call: Call) -> Conv2d:
        call.input("input")
        if call.module is not None:
            mod = call.module
            if mod.padding_mode != "zeros":
                raise call.unsupported(f"padding_mode={mod.padding_mode!r} (only 'zeros')")
            weight, bias = mod.weight, mod.bias
            stride, padding, dilation, groups = mod.stride, mod.padding, mod.dilation, mod.groups
        else:
            weight, bias = weight_tensor(call, "weight", 4), weight_tensor(call, "bias", 1)
            stride, padding = call.const("stride"), call.const("padding")
            dilation, groups = call.const("dilation"), call.const("groups")
        if len(call.input_shape("input")) != 3:
            raise call.unsupported("Conv2d on inputs that are not (C, H, W) per sample")
        k, d = tuple(weight.shape[-2:]), _pair(dilation)
        if isinstance(padding, str):
            if padding == "valid":
                padding = (0, 0)
            elif padding == "same":
                total = [di * (ki - 1) for di, ki in zip(d, k, strict=True)]
                if any(t % 2 for t in total):
                    raise call.unsupported("padding='same' with asymmetric padding")
                padding = tuple(t // 2 for t in total)
            else:
                raise call.unsupported(f"padding={padding!r}")
        return cls(weight, bias, _pair(stride), _pair(padding), d, int(groups), call.input_shape("input"))

    def _conv(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, w, None, self.stride, self.padding, self.dilation, self.groups)

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        return self._conv(x, self.weight)

    def apply_abs(self, x: torch.Tensor) -> torch.Tensor:
        return self._conv(x, self.weight_abs)

    def transpose(self, lam: torch.Tensor) -> list[torch.Tensor]:
        """``W^T lam`` (see :class:`TransposedConv`: the layout of the fastest kernel)."""
        return [self._transposed()(lam, self._output_padding(lam.shape[-2:]))]

    def _transposed(self) -> TransposedConv:
        t = getattr(self, "_transposed_conv", None)
        if t is None or t.weight is not self.weight:
            t = TransposedConv(self.weight, self.stride, self.padding, self.dilation, self.groups)
            self._transposed_conv = t
        return t

    def _output_padding(self, out_hw) -> tuple[int, int]:
        """What the transposed convolution adds at the bottom/right to restore the input size
        (rows or columns a strided convolution never read)."""
        kh, kw = self.weight.shape[-2:]
        return tuple(
            size - ((o - 1) * s - 2 * p + d * (k - 1) + 1)
            for size, o, s, p, d, k in zip(
                self.in_shape[1:], out_hw, self.stride, self.padding, self.dilation, (kh, kw), strict=True
            )
        )

    # -- patches: a stride-1 convolution widens each window by its dilated kernel ------------------
    def local_growth(self) -> tuple[int, int]:
        (kh, kw), (dh, dw) = self.weight.shape[-2:], self.dilation
        return dh * (kh - 1), dw * (kw - 1)

    def local_support(self, mask: torch.Tensor) -> torch.Tensor:
        ones = torch.ones((1, 1, *self.weight.shape[-2:]), device=mask.device, dtype=torch.float32)
        hit = F.conv2d(mask.to(torch.float32), ones, None, self.stride, self.padding, self.dilation)
        return hit > 0

    def local_forward(self, form, relaxation, out_shape):
        if self.stride != (1, 1):
            return None
        grow = self.local_growth()
        window = (form.window[0] + grow[0], form.window[1] + grow[1])
        if window[0] >= out_shape[1] or window[1] >= out_shape[2]:
            return None  # the window would cover the layer: the dense form is no larger
        offset = (form.offset[0] + self.padding[0] - grow[0], form.offset[1] + self.padding[1] - grow[1])

        def conv(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
            lead = x.shape[:4]
            y = F.conv2d(x.reshape(-1, *x.shape[4:]), weight, None, 1, grow, self.dilation, self.groups)
            return y.view(*lead, *y.shape[1:])

        return linear_local(
            self, form, lambda x: conv(x, self.weight), lambda x: conv(x, self.weight_abs), offset, window,
            out_shape,
        )

    def local_backward(self, lam, const, offset, windows, relaxation, shape, in_shape):
        if self.bias is not None:
            const = const + lam.sum(dim=(-2, -1)) @ self.bias.view(-1)
        lead = lam.shape[:3]
        lam = self._transposed()(lam.reshape(-1, *lam.shape[3:]), padding=(0, 0))
        lam = lam.view(*lead, *lam.shape[1:])
        offset = (offset[0] - self.padding[0], offset[1] - self.padding[1])
        valid = windows.valid(offset, lam.shape[-2:], in_shape[1:])
        if not bool(valid.all()):
            lam = lam.mul_(valid) if lam.shape[1] == valid.shape[1] else lam * valid
        return lam, const, offset

    def to(self, device=None, dtype=None) -> Conv2d:
        super().to(device, dtype)
        self.weight_abs = self.weight.abs()
        return self


class ElementwiseAffine(LinearOp):
    """``y = x * scale + shift`` with ``scale``/``shift`` broadcastable to the per-sample shape.

    Built by BatchNorm in eval mode, arithmetic with constants (input normalisation
    ``(x - mean) / std``, scalar scaling) and additions of constants.
    """

    kind = "affine"
    local_backward_ok = True

    def __init__(self, scale: torch.Tensor | float, shift: torch.Tensor | float | None) -> None:
        self.scale = constant(torch.as_tensor(scale))
        self.scale_abs = self.scale.abs()
        self.bias = None if shift is None else constant(torch.as_tensor(shift))

    def _expand(self, t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        # scale/shift are per-sample shaped; left-pad with ones for the batch dims.
        return t.reshape((1,) * (x.ndim - t.ndim) + tuple(t.shape)) if t.ndim else t

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        return x * self._expand(self.scale, x)

    def apply_abs(self, x: torch.Tensor) -> torch.Tensor:
        return x * self._expand(self.scale_abs, x)

    def transpose(self, lam: torch.Tensor) -> list[torch.Tensor]:
        return [lam * self._expand(self.scale, lam)]

    def fold_into(self, weight, bias, in_shape):
        scale = self.scale.expand(in_shape).reshape(-1)
        if self.bias is not None:
            shift = weight @ self.bias.expand(in_shape).reshape(-1)
            bias = shift if bias is None else bias + shift
        return weight * scale, bias

    def local_forward(self, form, relaxation, out_shape):
        scale, scale_abs = scale_patches(self.scale, form), scale_patches(self.scale_abs, form)
        return linear_local(
            self, form, lambda x: x * scale, lambda x: x * scale_abs, form.offset, form.window, out_shape
        )

    def local_backward(self, lam, const, offset, windows, relaxation, shape, in_shape):
        window = (lam.shape[-2], lam.shape[-1])
        if self.bias is not None:
            bias = windows.derived(self.bias, lambda: node_map(self.bias, shape))
            const = const + window_dot(lam, windows.gather(bias, offset, window))
        scale = windows.derived(self.scale, lambda: node_map(self.scale, shape))
        lam = lam * windows.gather(scale, offset, window)
        return lam, const, offset

    def to(self, device=None, dtype=None) -> ElementwiseAffine:
        super().to(device, dtype)
        self.scale_abs = self.scale.abs()
        return self


def per_sample_const(call: Call, value, name: str) -> torch.Tensor:
    """A constant operand as a finite float tensor broadcastable to the per-sample output shape,
    which it must not change (no broadcasting of the input to a new shape)."""
    shape = call.out_shape
    if isinstance(value, bool) or not isinstance(value, (int, float, torch.Tensor)):
        raise call.unsupported(f"argument {name}={value!r} (expected a number or a tensor)")
    t = constant(torch.as_tensor(value))
    while t.ndim > len(shape):
        if t.shape[0] != 1:
            raise call.unsupported(f"a constant {name!r} with a batch dimension > 1")
        t = t[0]
    if not t.is_floating_point():
        t = t.to(torch.get_default_dtype())
    if not bool(torch.isfinite(t).all()):
        raise call.unsupported(f"arithmetic with a NaN/inf constant {name!r}")
    if torch.broadcast_shapes(t.shape, shape) != tuple(shape):
        raise call.unsupported(f"a constant {name!r} that broadcasts the input to a new shape")
    return t


def _number(call: Call, name: str) -> float:
    return float(call.literal(name, test=lambda v: isinstance(v, (int, float)) and not isinstance(v, bool)
                              and math.isfinite(v), expect="a finite number"))


@register(nn.BatchNorm1d, nn.BatchNorm2d, F.batch_norm,
          signature="(input, running_mean, running_var, weight=None, bias=None, training=False, "
                    "momentum=0.1, eps=1e-05)",
          doc="BatchNorm1d/2d (eval mode: running statistics, folded to x * scale + shift)")
class BatchNorm(ElementwiseAffine):
    """Batch normalisation with running statistics: an elementwise affine map per channel."""

    @classmethod
    def convert(cls, call: Call) -> BatchNorm:
        call.input("input")
        if call.module is not None:
            mod = call.module
            if mod.training or mod.running_mean is None:
                raise call.unsupported("BatchNorm that uses batch statistics (training mode or "
                                       "track_running_stats=False)")
            mean, var, eps = mod.running_mean, mod.running_var, mod.eps
            weight = mod.weight if mod.affine else None
            bias = mod.bias if mod.affine else None
        else:
            call.literal("training", (False,), expect="training=False (batch statistics mix the batch)")
            call.ignore("momentum")  # only updates running statistics in training mode
            mean, var = weight_tensor(call, "running_mean", 1), weight_tensor(call, "running_var", 1)
            weight, bias = weight_tensor(call, "weight", 1), weight_tensor(call, "bias", 1)
            eps = _number(call, "eps")
            if mean is None or var is None:
                raise call.unsupported("F.batch_norm without running statistics")
        scale = (weight if weight is not None else 1.0) / torch.sqrt(var + eps)
        shift = (bias if bias is not None else 0.0) - mean * scale
        view = (-1,) + (1,) * (len(call.input_shape("input")) - 1)  # channel first, then space
        return cls(constant(scale).reshape(view), constant(shift).reshape(view))


_SCALE_SIGNATURES = {
    operator.mul: "(input, other)", torch.mul: "(input, other)", torch.multiply: "(input, other)",
    "mul": "(input, other)", "mul_": "(input, other)", operator.imul: "(input, other)",
    operator.truediv: "(input, other, *, rounding_mode=None)",
    torch.div: "(input, other, *, rounding_mode=None)",
    torch.divide: "(input, other, *, rounding_mode=None)",
    torch.true_divide: "(input, other)", "div": "(input, other, *, rounding_mode=None)",
    "div_": "(input, other, *, rounding_mode=None)", "true_divide": "(input, other)",
    operator.itruediv: "(input, other)",
    operator.neg: "(input)", torch.neg: "(input)", torch.negative: "(input)", "neg": "(input)",
    "negative": "(input)",
}
_DIVIDE = {operator.truediv, torch.div, torch.divide, torch.true_divide, "div", "div_", "true_divide",
           operator.itruediv}


@register(*_SCALE_SIGNATURES, signatures=_SCALE_SIGNATURES,
          doc="Multiplication / division by a constant, negation")
class Scale(ElementwiseAffine):
    """``x * c``, ``x / c``, ``c * x`` and ``-x`` with a constant ``c`` (a number or a tensor)."""

    @classmethod
    def convert(cls, call: Call) -> Scale:
        if "other" not in call.bound:  # negation
            call.input("input")
            return cls(-1.0, None)
        divide = call.handle in _DIVIDE
        if "rounding_mode" in call.bound:
            call.literal("rounding_mode", (None,), expect="rounding_mode=None (true division)")
        a_dep, b_dep = call.is_input("input"), call.is_input("other")
        if a_dep and b_dep:
            raise call.unsupported("products/quotients of two input-dependent tensors")
        if divide and b_dep:
            raise call.unsupported("division by an input-dependent tensor")
        dep, const = ("input", "other") if a_dep else ("other", "input")
        call.input(dep)
        c = per_sample_const(call, call.const(const), const)
        if call.input_shape(dep) != call.out_shape:
            raise call.unsupported("a constant that broadcasts the input to a new shape")
        if divide:
            if bool((c == 0).any()):
                raise call.unsupported("division by a constant that is zero somewhere")
            c = 1.0 / c
        return cls(c, None)


_ADD = {operator.add: "(input, other, *, alpha=1)", torch.add: "(input, other, *, alpha=1)",
        "add": "(input, other, *, alpha=1)", "add_": "(input, other, *, alpha=1)",
        operator.iadd: "(input, other)"}
_SUB = {operator.sub: "(input, other, *, alpha=1)", torch.sub: "(input, other, *, alpha=1)",
        torch.subtract: "(input, other, *, alpha=1)", "sub": "(input, other, *, alpha=1)",
        "sub_": "(input, other, *, alpha=1)", operator.isub: "(input, other)"}


@register(*_ADD, *_SUB, signatures={**_ADD, **_SUB},
          doc="Addition / subtraction (of two nodes: residual add; of a constant: bias, normalisation)")
class Sum(LinearOp):
    """``y = sum_i c_i x_i`` of several nodes of the same shape (residual add, subtraction)."""

    kind = "add"

    def __init__(self, coeffs: tuple[float, ...]) -> None:
        self.coeffs = tuple(float(c) for c in coeffs)
        self.n_inputs = len(coeffs)

    @classmethod
    def convert(cls, call: Call) -> LinearOp:
        sign = -1.0 if call.handle in _SUB else 1.0
        alpha = _number(call, "alpha") if "alpha" in call.bound else 1.0
        a_dep, b_dep = call.is_input("input"), call.is_input("other")
        if a_dep and b_dep:
            if call.input_shape("input") != call.input_shape("other"):
                raise call.unsupported("adding tensors of different shapes (broadcasting)")
            call.input("input")
            call.input("other")
            return cls((1.0, sign * alpha))
        if a_dep:  # x + alpha * c
            call.input("input")
            const = per_sample_const(call, call.const("other"), "other")
            if call.input_shape("input") != call.out_shape:
                raise call.unsupported("a constant that broadcasts the input to a new shape")
            return ElementwiseAffine(1.0, sign * alpha * const)
        call.input("other")  # c + alpha * x
        const = per_sample_const(call, call.const("input"), "input")
        if call.input_shape("other") != call.out_shape:
            raise call.unsupported("a constant that broadcasts the input to a new shape")
        return ElementwiseAffine(sign * alpha, const)

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
    """Any linear map given by a function with a *nonnegative* matrix (average pooling, means,
    sums, padding); ``|L| = L``. The transpose is obtained exactly with a vector-Jacobian
    product of ``fn``."""

    kind = "pool"

    def __init__(self, fn: Callable[[torch.Tensor], torch.Tensor], in_shape, name: str,
                 bias: torch.Tensor | None = None) -> None:
        self.fn = fn
        self.in_shape = tuple(in_shape)
        self.kind = name
        self.bias = bias

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


def _dims(call: Call, name: str, ndim: int, allow_none: bool = False) -> tuple[int, ...] | None:
    """A dimension argument (int or sequence), normalised to per-tensor axes; the batch axis
    (0) is refused."""
    value = call.const(name)
    if value is None and allow_none:
        return None
    items = (value,) if isinstance(value, int) else tuple(value) if isinstance(value, (tuple, list)) else None
    if items is None or not items or not all(isinstance(d, int) and not isinstance(d, bool) for d in items):
        raise call.unsupported(f"argument {name}={value!r} (expected dimensions as ints)")
    dims = tuple(d % ndim for d in items)
    if 0 in dims:
        raise call.unsupported(f"argument {name}={value!r} touches the batch dimension")
    return dims


@register(nn.AvgPool1d, nn.AvgPool2d, nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, F.avg_pool2d,
          F.adaptive_avg_pool2d, torch.mean, "mean", torch.sum, "sum",
          signatures={F.avg_pool2d: "(input, kernel_size, stride=None, padding=0, ceil_mode=False, "
                                    "count_include_pad=True, divisor_override=None)",
                      F.adaptive_avg_pool2d: "(input, output_size)",
                      torch.mean: "(input, dim=None, keepdim=False, *, dtype=None)",
                      "mean": "(input, dim=None, keepdim=False, *, dtype=None)",
                      torch.sum: "(input, dim=None, keepdim=False, *, dtype=None)",
                      "sum": "(input, dim=None, keepdim=False, *, dtype=None)"},
          doc="Average pooling, adaptive average pooling, mean / sum over non-batch dimensions")
class AveragePool(LinearFunction):
    """Average pooling and reductions: linear maps with nonnegative matrices."""

    @classmethod
    def convert(cls, call: Call) -> AveragePool:
        call.input("input")
        in_shape = call.input_shape("input")
        if call.module is not None:
            return cls(call.module, in_shape, type(call.module).__name__.lower())
        if call.handle is F.avg_pool2d:
            names = ("kernel_size", "stride", "padding", "ceil_mode", "count_include_pad", "divisor_override")
            kw = {k: call.const(k) for k in names}
            return cls(functools.partial(F.avg_pool2d, **kw), in_shape, "avg_pool2d")
        if call.handle is F.adaptive_avg_pool2d:
            fn = functools.partial(F.adaptive_avg_pool2d, output_size=call.const("output_size"))
            return cls(fn, in_shape, "adaptive_avg_pool2d")
        dims = _dims(call, "dim", len(in_shape) + 1)
        keepdim = call.literal("keepdim", (True, False))
        call.literal("dtype", (None,), expect="dtype=None")
        reduce = torch.mean if call.handle in (torch.mean, "mean") else torch.sum
        return cls(functools.partial(reduce, dim=dims, keepdim=keepdim), in_shape, reduce.__name__)
