"""Shape ops: identity (Dropout in eval mode, Identity, contiguous), reshapes (Flatten, view,
reshape), permutations of the non-batch dimensions (permute, transpose; the NHWC layout of
exported models), concatenation of input-dependent branches, and padding.

All are linear maps with 0/1 matrices: IBP through them is exact, and the batch dimension is
never touched (a call that moves it is rejected; the graph also checks every node's batch).
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import nn

from evax.bounds.ops.base import Interval, LinearOp
from evax.bounds.ops.linear import LinearFunction, _dims
from evax.bounds.ops.registry import Call, register

_DROPOUT_FUNCS = (F.dropout, F.dropout1d, F.dropout2d, F.dropout3d, F.alpha_dropout, F.feature_alpha_dropout)


@register(nn.Identity, nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout,
          nn.FeatureAlphaDropout, *_DROPOUT_FUNCS, "contiguous", "clone", "detach", torch.clone,
          torch.detach,
          signatures={**{f: "(input, p=0.5, training=True, inplace=False)" for f in _DROPOUT_FUNCS},
                      "contiguous": "(input, memory_format=None)", "clone": "(input, *, memory_format=None)",
                      torch.clone: "(input, *, memory_format=None)", "detach": "(input)",
                      torch.detach: "(input)"},
          doc="Identity, Dropout (eval mode / training=False), contiguous, clone, detach")
class Identity(LinearOp):
    """The identity: the node is an alias of its input (no op is added to the graph)."""

    alias = True

    @classmethod
    def convert(cls, call: Call) -> None:
        call.input("input")
        if call.module is not None:
            if call.module.training and isinstance(call.module, nn.modules.dropout._DropoutNd):
                raise call.unsupported("Dropout in training mode is random; analyse the model in eval mode")
            return None
        if "training" in call.bound:
            p = call.const("p")
            training = call.const("training")
            call.ignore("inplace")
            if training is not False and p != 0:
                raise call.unsupported(
                    f"dropout with training={training!r} is random (pass training=self.training "
                    "or training=False; the engine analyses models in eval mode)"
                )
            return None
        call.ignore(*(k for k in ("memory_format",) if k in call.bound))
        return None

    def apply(self, x: torch.Tensor) -> torch.Tensor:  # pragma: no cover - never in a graph
        return x

    def transpose(self, lam: torch.Tensor) -> list[torch.Tensor]:  # pragma: no cover
        return [lam]


_SHAPE_SIG = {
    nn.Flatten: None, nn.Unflatten: None,
    torch.flatten: "(input, start_dim=0, end_dim=-1)", "flatten": "(input, start_dim=0, end_dim=-1)",
    torch.reshape: "(input, shape)", "reshape": "(input, *shape)", "view": "(input, *shape)",
    "view_as": "(input, other)", "reshape_as": "(input, other)",
    torch.squeeze: "(input, dim=None)", "squeeze": "(input, dim=None)",
    torch.unsqueeze: "(input, dim)", "unsqueeze": "(input, dim)",
}


@register(*_SHAPE_SIG, signatures={k: v for k, v in _SHAPE_SIG.items() if v},
          doc="Flatten / view / reshape / squeeze / unsqueeze (shapes as constants or x.size())")
class Reshape(LinearOp):
    """Change of per-sample shape; the recorded output shape defines it (a row-major reshape
    that keeps the batch dimension is a per-sample reshape)."""

    kind = "reshape"
    alias = True

    def __init__(self, in_shape, out_shape) -> None:
        self.in_shape, self.out_shape = tuple(in_shape), tuple(out_shape)

    @classmethod
    def convert(cls, call: Call) -> Reshape:
        call.input("input")
        in_shape = call.input_shape("input")
        ndim = len(in_shape) + 1
        if call.module is not None:
            pass  # Flatten(start_dim, end_dim) / Unflatten(dim, sizes): the batch check covers them
        elif "shape" in call.bound:
            shape = call.const("shape")
            if len(shape) == 1 and isinstance(shape[0], (tuple, list, torch.Size)):
                shape = tuple(shape[0])
            if isinstance(shape, torch.Tensor):
                shape = tuple(int(s) for s in shape.tolist())
            if not all(isinstance(s, int) and not isinstance(s, bool) for s in shape):
                raise call.unsupported(f"shape={shape!r} (expected ints: a view as another dtype "
                                       "is not a reshape)")
        elif "other" in call.bound:
            call.shape_only("other")
        elif "start_dim" in call.bound:
            start, end = call.const("start_dim") % ndim, call.const("end_dim") % ndim
            if start == 0 and end != 0:
                raise call.unsupported("flatten with start_dim=0 merges the batch dimension")
        else:  # squeeze / unsqueeze
            dim = call.const("dim")
            if dim is not None:
                dims = (dim,) if isinstance(dim, int) else tuple(dim)
                rank = ndim + 1 if call.handle in (torch.unsqueeze, "unsqueeze") else ndim
                if any(d % rank == 0 for d in dims):
                    raise call.unsupported(f"dim={dim!r} touches the batch dimension")
        return cls(in_shape, call.out_shape)

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        return x.reshape(x.shape[0], *self.out_shape)

    def interval(self, *ivs) -> Interval:
        ((lo, hi),) = ivs
        return self.apply(lo), self.apply(hi)  # a permutation of the variables: exact, no copy

    def transpose(self, lam: torch.Tensor) -> list[torch.Tensor]:
        return [lam.reshape(lam.shape[0], *self.in_shape)]

    def backward(self, lam: torch.Tensor, relaxation=None):
        return [lam.reshape(*lam.shape[:2], *self.in_shape)], None

    def fold_into(self, weight, bias, in_shape):
        return weight, bias  # the flat order is unchanged

    def compose(self, inner):
        if not isinstance(inner, Reshape):
            return None
        if inner.in_shape == self.out_shape:
            return "identity"
        return Reshape(inner.in_shape, self.out_shape)


@register(torch.permute, "permute", torch.transpose, "transpose", torch.swapaxes, "swapaxes",
          torch.swapdims, "swapdims",
          signatures={torch.permute: "(input, dims)", "permute": "(input, *dims)",
                      **{k: "(input, dim0, dim1)" for k in (torch.transpose, "transpose", torch.swapaxes,
                                                            "swapaxes", torch.swapdims, "swapdims")}},
          doc="Permute / transpose of non-batch dimensions (e.g. NCHW <-> NHWC)")
class Permute(LinearOp):
    """``y = x.permute(0, *perm)``: a permutation of the variables of each sample."""

    kind = "permute"
    alias = True

    def __init__(self, perm: tuple[int, ...], in_shape) -> None:
        self.perm = tuple(perm)  # per-sample axes (0-based, batch excluded)
        self.inverse = tuple(sorted(range(len(perm)), key=lambda i: perm[i]))
        self.in_shape = tuple(in_shape)

    @classmethod
    def convert(cls, call: Call) -> Permute:
        call.input("input")
        in_shape = call.input_shape("input")
        ndim = len(in_shape) + 1
        if "dims" in call.bound:
            dims = call.const("dims")
            if len(dims) == 1 and isinstance(dims[0], (tuple, list)):
                dims = tuple(dims[0])
            if sorted(d % ndim for d in dims) != list(range(ndim)) or dims[0] % ndim != 0:
                raise call.unsupported(f"permutation {tuple(dims)!r} moves the batch dimension")
            perm = [d % ndim for d in dims]
        else:
            d0, d1 = (_dims(call, k, ndim)[0] for k in ("dim0", "dim1"))
            perm = list(range(ndim))
            perm[d0], perm[d1] = perm[d1], perm[d0]
        return cls(tuple(p - 1 for p in perm[1:]), in_shape)

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        lead = x.ndim - len(self.perm)
        return x.permute(*range(lead), *(lead + p for p in self.perm))

    def interval(self, *ivs) -> Interval:
        ((lo, hi),) = ivs
        return self.apply(lo), self.apply(hi)

    def transpose(self, lam: torch.Tensor) -> list[torch.Tensor]:
        lead = lam.ndim - len(self.inverse)
        return [lam.permute(*range(lead), *(lead + p for p in self.inverse))]

    def backward(self, lam: torch.Tensor, relaxation=None):
        return self.transpose(lam), None

    def compose(self, inner):
        if not isinstance(inner, Permute):
            return None
        perm = tuple(inner.perm[p] for p in self.perm)
        if perm == tuple(range(len(perm))):
            return "identity"
        return Permute(perm, inner.in_shape)

    def fold_into(self, weight, bias, in_shape):
        numel = weight.shape[1]
        index = torch.arange(numel, device=weight.device).view(in_shape)
        source = self.apply(index.unsqueeze(0))[0].reshape(-1)  # x index of each y entry
        folded = torch.zeros_like(weight)
        folded[:, source] = weight
        return folded, bias


@register(torch.cat, torch.concat, torch.concatenate,
          signature="(tensors, dim=0)", doc="Concatenation of input-dependent branches (non-batch dim)")
class Concat(LinearOp):
    """``y = cat([x_1, ..., x_k], dim)`` of input-dependent nodes."""

    kind = "concat"

    def __init__(self, dim: int, sizes: list[int], ndim: int) -> None:
        self.axis = dim - ndim  # the per-sample axis counted from the end (any batch dims work)
        self.sizes = list(sizes)
        self.n_inputs = len(sizes)

    @classmethod
    def convert(cls, call: Call) -> Concat:
        shapes = call.input_list("tensors")
        ndim = len(call.out_shape)
        (dim,) = _dims(call, "dim", ndim + 1)
        return cls(dim - 1, [s[dim - 1] for s in shapes], ndim)

    def apply(self, *xs: torch.Tensor) -> torch.Tensor:
        return torch.cat(xs, dim=self.axis)

    def interval(self, *ivs) -> Interval:
        return self.apply(*[lo for lo, _ in ivs]), self.apply(*[hi for _, hi in ivs])

    def transpose(self, lam: torch.Tensor) -> list[torch.Tensor]:
        return list(torch.split(lam, self.sizes, dim=self.axis))

    def backward(self, lam: torch.Tensor, relaxation=None):
        return self.transpose(lam), None


_PAD_MODES = (("Zero", "constant"), ("Constant", "constant"), ("Reflection", "reflect"),
              ("Replication", "replicate"), ("Circular", "circular"))


@register(nn.ZeroPad2d, nn.ConstantPad1d, nn.ConstantPad2d, nn.ConstantPad3d, nn.ReflectionPad1d,
          nn.ReflectionPad2d, nn.ReplicationPad1d, nn.ReplicationPad2d, nn.CircularPad1d, nn.CircularPad2d,
          F.pad, signature="(input, pad, mode='constant', value=None)",
          doc="Padding (constant value, reflect, replicate, circular)")
class Pad(LinearFunction):
    """``F.pad``: a linear map with a 0/1 matrix plus the constant border value as a bias."""

    @classmethod
    def convert(cls, call: Call) -> Pad:
        call.input("input")
        in_shape = call.input_shape("input")
        if call.module is not None:
            mod = call.module
            pad = tuple(mod.padding)
            name = type(mod).__name__
            mode = next(m for prefix, m in _PAD_MODES if name.startswith(prefix))
            value = float(getattr(mod, "value", 0.0))
        else:
            pad = tuple(call.const("pad"))
            mode = call.literal("mode", ("constant", "reflect", "replicate", "circular"))
            value = call.const("value")
            value = 0.0 if value is None else float(value)
        if not all(isinstance(p, int) and not isinstance(p, bool) for p in pad) or len(pad) % 2:
            raise call.unsupported(f"pad={pad!r} (expected pairs of ints)")
        if len(pad) // 2 > len(in_shape) + 1:
            raise call.unsupported(f"pad={pad!r} pads more dimensions than the input has")
        if len(pad) // 2 == len(in_shape) + 1:  # pairs listed for every dim, the batch's last
            if pad[-2:] != (0, 0):
                raise call.unsupported(f"pad={pad!r} pads the batch dimension")
            pad = pad[:-2]
        fn = functools.partial(F.pad, pad=pad, mode=mode) if mode != "constant" else functools.partial(
            F.pad, pad=pad, mode="constant", value=0.0)
        bias = None
        if mode == "constant" and value != 0.0:
            bias = F.pad(torch.zeros((1, *in_shape)), pad, mode="constant", value=value)[0]
        return cls(fn, in_shape, f"pad_{mode}", bias)
