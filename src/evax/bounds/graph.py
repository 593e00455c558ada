"""Turn an ``nn.Module`` into a DAG of bound ops with torch.fx.

The model is traced symbolically (standard ``torch.nn`` layers are leaves), then run once on an
example input to learn every node's per-sample shape. Values that do not depend on the input
(parameters, buffers, arithmetic on them) are folded into the ops as constants. BatchNorm in
eval mode, Dropout/Identity and arithmetic with constants become elementwise affine ops.
Anything else raises :class:`~evax.errors.UnsupportedLayerError` naming the module path.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass, field

import torch
import torch.fx
import torch.nn.functional as F
from torch import nn

from evax.bounds.ops.activation import LeakyReLU, ReLU, Sigmoid, Tanh
from evax.bounds.ops.base import Op
from evax.bounds.ops.linear import Conv2d, ElementwiseAffine, Linear, LinearFunction, Reshape, Sum
from evax.bounds.ops.pooling import MaxPool2d
from evax.errors import InvalidInputError, UnsupportedLayerError

SUPPORTED = (
    "Linear, Conv2d, ReLU, LeakyReLU, Sigmoid, Tanh, MaxPool2d, AvgPool2d, AdaptiveAvgPool2d, "
    "Flatten/view/reshape, BatchNorm1d/2d (eval), Dropout (eval), Identity, residual add, "
    "arithmetic with constants (input normalisation)"
)


@dataclass
class Node:
    """One op of the graph; ``inputs`` index earlier nodes, ``shape`` is per-sample."""

    name: str
    op: Op | None  # None for the input node
    inputs: list[int]
    shape: tuple[int, ...]
    users: list[int] = field(default_factory=list)

    @property
    def numel(self) -> int:
        n = 1
        for s in self.shape:
            n *= s
        return n


@dataclass
class Graph:
    """Nodes in topological order; ``nodes[0]`` is the input, ``nodes[output]`` the logits."""

    nodes: list[Node]
    output: int

    @property
    def input_shape(self) -> tuple[int, ...]:
        return self.nodes[0].shape

    @property
    def output_size(self) -> int:
        return self.nodes[self.output].numel

    def needs_bounds(self, index: int) -> bool:
        """Whether some user of node ``index`` needs its bounds for a relaxation."""
        return any(self.nodes[u].op.needs_relaxation for u in self.nodes[index].users)

    def to(self, device=None, dtype=None) -> Graph:
        self.__dict__.pop("_input_linears", None)  # derived tensors, rebuilt on demand
        for node in self.nodes:
            if node.op is not None:
                node.op.to(device, dtype)
        return self


_IDENTITY_MODULES = (
    nn.Identity,
    nn.Dropout,
    nn.Dropout1d,
    nn.Dropout2d,
    nn.Dropout3d,
    nn.AlphaDropout,
)
_RELU_FUNCS = {F.relu, torch.relu, torch.nn.functional.relu}
_SIGMOID_FUNCS = {torch.sigmoid, F.sigmoid}
_TANH_FUNCS = {torch.tanh, F.tanh}
_FLATTEN_FUNCS = {torch.flatten}
_RESHAPE_METHODS = {"view", "reshape", "flatten", "contiguous", "view_as", "squeeze", "unsqueeze"}


class _Recorder(torch.fx.Interpreter):
    """Runs the traced graph once and keeps every node's value."""

    def __init__(self, gm: torch.fx.GraphModule) -> None:
        super().__init__(gm)
        self.values: dict[torch.fx.Node, object] = {}

    def run_node(self, n: torch.fx.Node):
        out = super().run_node(n)
        self.values[n] = out
        return out


def _pair(v) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else tuple(v)


def _per_sample_const(value: torch.Tensor, shape: tuple[int, ...], path: str) -> torch.Tensor:
    """A constant operand as a tensor broadcastable to the per-sample shape."""
    t = torch.as_tensor(value).detach()
    while t.ndim > len(shape):
        if t.shape[0] != 1:
            raise UnsupportedLayerError(path, "constant", "a constant with a batch dimension > 1")
        t = t[0]
    return t.to(torch.get_default_dtype()) if not t.is_floating_point() else t


def _literal(arg, values):
    """The value of a constant operand: a folded fx node or a Python number."""
    return values[arg] if isinstance(arg, torch.fx.Node) else arg


def build_graph(model: nn.Module, example: torch.Tensor) -> Graph:
    """Trace ``model`` and convert it to a :class:`Graph`.

    Args:
        model: any module torch.fx can trace, in eval mode.
        example: an input ``(B, *S)`` with ``B >= 2`` used to infer shapes (a batch of two
            detects ops that mix the batch dimension).
    """
    try:
        gm = torch.fx.symbolic_trace(model)
    except Exception as exc:  # noqa: BLE001 - report any tracing failure the same way
        raise UnsupportedLayerError(
            "<model>",
            type(model).__name__,
            f"torch.fx cannot trace it ({exc}); supported: {SUPPORTED}",
        ) from exc
    rec = _Recorder(gm)
    try:
        with torch.no_grad():
            rec.run(example)
    except Exception as exc:  # noqa: BLE001 - a shape mismatch surfaces as any torch error
        raise InvalidInputError(
            f"the model does not accept inputs of per-sample shape {tuple(example.shape[1:])}: {exc}"
        ) from exc
    modules = dict(gm.named_modules())

    nodes: list[Node] = []
    index: dict[torch.fx.Node, int] = {}  # fx node -> our node index (input-dependent only)
    output = None

    def shape_of(n: torch.fx.Node) -> tuple[int, ...]:
        return tuple(rec.values[n].shape[1:])

    def add(name: str, op: Op, ins: list[int], n: torch.fx.Node) -> None:
        value = rec.values[n]
        if not isinstance(value, torch.Tensor) or value.shape[:1] != example.shape[:1]:
            raise UnsupportedLayerError(name, type(op).__name__, "an op that changes the batch dimension")
        op.path = name
        index[n] = len(nodes)
        nodes.append(Node(name, op, ins, shape_of(n)))

    for n in gm.graph.nodes:
        if n.op == "placeholder":
            if nodes:
                raise UnsupportedLayerError(n.name, "placeholder", "models with several inputs")
            index[n] = 0
            nodes.append(Node("input", None, [], shape_of(n)))
            continue
        if n.op == "output":
            arg = n.args[0]
            if not isinstance(arg, torch.fx.Node) or arg not in index:
                raise UnsupportedLayerError("output", "output", "the model must return one tensor")
            output = index[arg]
            continue
        if n.op == "get_attr":
            continue
        dep = [a for a in n.all_input_nodes if a in index]
        if not dep:
            continue  # a constant: evaluated by the recorder, folded into its users
        if not isinstance(rec.values[n], torch.Tensor):
            continue  # shape metadata such as x.size(0): depends on the shape, not the values
        _convert(n, dep, index, nodes, modules, rec, add, shape_of)

    if output is None:
        raise UnsupportedLayerError("output", "output", "the model output does not depend on the input")
    graph = Graph(nodes, output)
    for i, node in enumerate(nodes):
        for j in node.inputs:
            nodes[j].users.append(i)
    if len(graph.nodes[output].shape) != 1:
        raise UnsupportedLayerError(
            "output",
            "output",
            f"the model must return (N, K) logits, got per-sample shape {graph.nodes[output].shape}",
        )
    return graph


def _convert(n, dep, index, nodes, modules, rec, add, shape_of) -> None:  # noqa: C901 - a dispatch table
    values = rec.values
    x = dep[0]
    if n.op == "call_module":
        mod = modules[n.target]
        path = str(n.target)
        if isinstance(mod, _IDENTITY_MODULES):
            index[n] = index[x]
            return
        if isinstance(mod, nn.Linear):
            if len(shape_of(x)) != 1:
                raise UnsupportedLayerError(
                    path, "Linear", "Linear on inputs with more than one feature dimension"
                )
            add(path, Linear(mod.weight, mod.bias), [index[x]], n)
        elif isinstance(mod, nn.Conv2d):
            if mod.padding_mode != "zeros":
                raise UnsupportedLayerError(
                    path, "Conv2d", f"padding_mode={mod.padding_mode!r} (only 'zeros')"
                )
            padding = mod.padding
            if isinstance(padding, str):
                if padding == "valid":
                    padding = (0, 0)
                else:
                    k = _pair(mod.kernel_size)
                    d = _pair(mod.dilation)
                    total = [di * (ki - 1) for di, ki in zip(d, k, strict=True)]
                    if any(t % 2 for t in total):
                        raise UnsupportedLayerError(path, "Conv2d", "padding='same' with asymmetric padding")
                    padding = tuple(t // 2 for t in total)
            op = Conv2d(
                mod.weight,
                mod.bias,
                _pair(mod.stride),
                _pair(padding),
                _pair(mod.dilation),
                mod.groups,
                shape_of(x),
            )
            add(path, op, [index[x]], n)
        elif isinstance(mod, nn.ReLU):
            add(path, ReLU(), [index[x]], n)
        elif isinstance(mod, nn.LeakyReLU):
            if not 0 <= mod.negative_slope <= 1:
                raise UnsupportedLayerError(path, "LeakyReLU", "negative_slope outside [0, 1]")
            add(path, LeakyReLU(mod.negative_slope), [index[x]], n)
        elif isinstance(mod, nn.Sigmoid):
            add(path, Sigmoid(), [index[x]], n)
        elif isinstance(mod, nn.Tanh):
            add(path, Tanh(), [index[x]], n)
        elif isinstance(mod, nn.Flatten):
            add(path, Reshape(shape_of(x), shape_of(n)), [index[x]], n)
        elif isinstance(mod, nn.MaxPool2d):
            if mod.ceil_mode or mod.return_indices:
                raise UnsupportedLayerError(path, "MaxPool2d", "ceil_mode=True or return_indices=True")
            op = MaxPool2d(
                _pair(mod.kernel_size),
                _pair(mod.stride or mod.kernel_size),
                _pair(mod.padding),
                _pair(mod.dilation),
                shape_of(x),
                shape_of(n),
            )
            add(path, op, [index[x]], n)
        elif isinstance(mod, (nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.AvgPool1d, nn.AdaptiveAvgPool1d)):
            add(path, LinearFunction(mod, shape_of(x), type(mod).__name__.lower()), [index[x]], n)
        elif isinstance(mod, (nn.BatchNorm1d, nn.BatchNorm2d)):
            if mod.running_mean is None:
                raise UnsupportedLayerError(path, type(mod).__name__, "BatchNorm without running statistics")
            scale = (mod.weight if mod.affine else 1.0) / torch.sqrt(mod.running_var + mod.eps)
            shift = (mod.bias if mod.affine else 0.0) - mod.running_mean * scale
            extra = len(shape_of(x)) - 1  # channel first, then spatial dims
            view = (-1,) + (1,) * extra
            add(
                path,
                ElementwiseAffine(scale.detach().reshape(view), shift.detach().reshape(view)),
                [index[x]],
                n,
            )
        else:
            raise UnsupportedLayerError(path, type(mod).__name__, f"supported layers: {SUPPORTED}")
        return

    name = n.name
    target = n.target
    if n.op == "call_function":
        if target in _RELU_FUNCS:
            add(name, ReLU(), [index[x]], n)
        elif target is F.leaky_relu:
            slope = n.kwargs.get("negative_slope", n.args[1] if len(n.args) > 1 else 0.01)
            add(name, LeakyReLU(slope), [index[x]], n)
        elif target in _SIGMOID_FUNCS:
            add(name, Sigmoid(), [index[x]], n)
        elif target in _TANH_FUNCS:
            add(name, Tanh(), [index[x]], n)
        elif target in _FLATTEN_FUNCS:
            add(name, Reshape(shape_of(x), shape_of(n)), [index[x]], n)
        elif target in (operator.add, torch.add, operator.sub, torch.sub):
            sign = -1.0 if target in (operator.sub, torch.sub) else 1.0
            a, b = n.args[0], n.args[1]
            a_dep = isinstance(a, torch.fx.Node) and a in index
            b_dep = isinstance(b, torch.fx.Node) and b in index
            if a_dep and b_dep:
                if shape_of(a) != shape_of(b):
                    raise UnsupportedLayerError(
                        name, "add", "adding tensors of different shapes (broadcasting)"
                    )
                add(name, Sum((1.0, sign)), [index[a], index[b]], n)
            else:
                const = _literal(b if a_dep else a, values)
                const = _per_sample_const(const, shape_of(n), name)
                if shape_of(n) != shape_of(x):
                    raise UnsupportedLayerError(
                        name, "add", "a constant that broadcasts the input to a new shape"
                    )
                if a_dep:
                    add(name, ElementwiseAffine(1.0, sign * const), [index[a]], n)
                else:
                    add(name, ElementwiseAffine(sign, const), [index[b]], n)
        elif target in (operator.mul, torch.mul, operator.truediv, torch.div):
            a, b = n.args[0], n.args[1]
            a_dep = isinstance(a, torch.fx.Node) and a in index
            b_dep = isinstance(b, torch.fx.Node) and b in index
            divide = target in (operator.truediv, torch.div)
            if (a_dep and b_dep) or (divide and b_dep):
                raise UnsupportedLayerError(
                    name,
                    str(getattr(target, "__name__", target)),
                    "products/quotients of two input-dependent tensors",
                )
            const = _literal(b if a_dep else a, values)
            const = _per_sample_const(const, shape_of(n), name)
            if shape_of(n) != shape_of(x):
                raise UnsupportedLayerError(
                    name, "mul", "a constant that broadcasts the input to a new shape"
                )
            scale = 1.0 / const if divide else const
            add(name, ElementwiseAffine(scale, None), [index[x]], n)
        elif target is operator.neg or target is torch.neg:
            add(name, ElementwiseAffine(-1.0, None), [index[x]], n)
        elif target in (F.dropout, F.dropout2d):
            index[n] = index[x]
        else:
            raise UnsupportedLayerError(
                name, f"function {getattr(target, '__name__', target)}", f"supported: {SUPPORTED}"
            )
        return
    if n.op == "call_method":
        if target in _RESHAPE_METHODS:
            if target == "contiguous":
                index[n] = index[x]
            else:
                add(name, Reshape(shape_of(x), shape_of(n)), [index[x]], n)
        elif target in {"relu", "relu_"}:
            add(name, ReLU(), [index[x]], n)
        elif target == "sigmoid":
            add(name, Sigmoid(), [index[x]], n)
        elif target == "tanh":
            add(name, Tanh(), [index[x]], n)
        else:
            raise UnsupportedLayerError(name, f"method .{target}()", f"supported: {SUPPORTED}")
        return
    raise UnsupportedLayerError(name, n.op, f"supported: {SUPPORTED}")
