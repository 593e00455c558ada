"""Turn an ``nn.Module`` into a DAG of bound ops with torch.fx.

The model is traced symbolically (standard ``torch.nn`` layers are leaves), then run once on an
example input to learn every node's per-sample shape. Values that do not depend on the input
(parameters, buffers, arithmetic on them) are folded into the ops as constants. Every call that
depends on the input is converted by the op registered for it
(:mod:`evax.bounds.ops.registry`), which reads and checks every argument of the call; anything
else raises :class:`~evax.errors.UnsupportedLayerError` naming the module path.

Three more checks guard against a graph that does not compute what the model computes:

* random ops (``torch.rand*``, ``bernoulli``, dropout in training form...) are rejected wherever
  they appear, constants included (a folded sample of noise is not the model);
* an in-place op is accepted only when nothing else reads the tensor it overwrites;
* the finished graph is evaluated on a fresh batch of a *different* size and must reproduce the
  model's outputs (this catches ops that mix the batch and any conversion the checks missed).
"""

from __future__ import annotations

import operator
from dataclasses import dataclass, field

import torch
import torch.fx
from torch import nn

from evax.bounds.ops import load_all
from evax.bounds.ops.base import Op
from evax.bounds.ops.constants import parameters_live
from evax.bounds.ops.registry import Call, bind_call, lookup, supported_layers, supported_summary
from evax.errors import InvalidInputError, UnsupportedLayerError

load_all()


def __getattr__(name: str):  # SUPPORTED is generated from the registry
    if name == "SUPPORTED":
        return supported_layers()
    raise AttributeError(name)


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

    def evaluate(self, x: torch.Tensor) -> torch.Tensor:
        """The graph's output for concrete inputs ``(B, *S)`` (the ops' ``evaluate``)."""
        values: list[torch.Tensor | None] = [None] * len(self.nodes)
        values[0] = x
        for i, node in enumerate(self.nodes[1 : self.output + 1], start=1):
            values[i] = node.op.evaluate(*[values[j] for j in node.inputs])
        return values[self.output]

    def to(self, device=None, dtype=None) -> Graph:
        self.__dict__.pop("_input_linears", None)  # derived tensors, rebuilt on demand
        for node in self.nodes:
            if node.op is not None:
                node.op.to(device, dtype)
        return self


class _Recorder(torch.fx.Interpreter):
    """Runs the traced graph once and keeps every node's value."""

    def __init__(self, gm: torch.fx.GraphModule) -> None:
        super().__init__(gm)
        self.values: dict[torch.fx.Node, object] = {}

    def run_node(self, n: torch.fx.Node):
        out = super().run_node(n)
        self.values[n] = out
        return out


# Random number generation: a model that draws noise is not a function the engine can bound, and
# a constant drawn once at tracing would be folded as if it were fixed.
_RANDOM_FUNCTIONS = {
    "rand", "randn", "randint", "rand_like", "randn_like", "randint_like", "normal", "bernoulli",
    "multinomial", "poisson", "randperm", "empty", "empty_like", "rrelu", "rrelu_",
}
_RANDOM_METHODS = {
    "bernoulli", "bernoulli_", "normal_", "uniform_", "random_", "exponential_", "geometric_",
    "cauchy_", "log_normal_", "multinomial",
}
_INPLACE_OPERATORS = {operator.iadd, operator.isub, operator.imul, operator.itruediv}


def _label(n: torch.fx.Node, module: nn.Module | None) -> str:
    if module is not None:
        return type(module).__name__
    if n.op == "call_method":
        return f"method .{n.target}()"
    return f"function {getattr(n.target, '__name__', n.target)}"


def _check_random(gm: torch.fx.GraphModule, modules: dict[str, nn.Module]) -> None:
    for n in gm.graph.nodes:
        name = None
        if n.op == "call_function":
            name = getattr(n.target, "__name__", "")
            random = name in _RANDOM_FUNCTIONS
        elif n.op == "call_method":
            name = str(n.target)
            random = name in _RANDOM_METHODS
        elif n.op == "call_module":
            mod = modules[n.target]
            random = isinstance(mod, nn.modules.dropout._DropoutNd) and mod.training
        else:
            continue
        if random:
            path = str(n.target) if n.op == "call_module" else n.name
            raise UnsupportedLayerError(
                path, _label(n, modules.get(n.target) if n.op == "call_module" else None),
                "random ops make the model stochastic: bounds would hold for one draw of the noise only",
            )


def _is_inplace(n: torch.fx.Node, module: nn.Module | None, bound: dict) -> bool:
    if module is not None:
        return bool(getattr(module, "inplace", False))
    if bound.get("inplace") is True:
        return True
    if n.op == "call_method":
        t = str(n.target)
        return t.endswith("_") and not t.startswith("__")
    name = getattr(n.target, "__name__", "")
    return n.target in _INPLACE_OPERATORS or (name.endswith("_") and not name.startswith("__"))


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
            f"torch.fx cannot trace it ({exc}); supported: {supported_summary()}",
        ) from exc
    modules = dict(gm.named_modules())
    _check_random(gm, modules)
    rec = _Recorder(gm)
    try:  # constants folded from parameters keep their history when the bound must be differentiable
        with torch.set_grad_enabled(parameters_live()):
            rec.run(example)
    except Exception as exc:  # noqa: BLE001 - a shape mismatch surfaces as any torch error
        raise InvalidInputError(
            f"the model does not accept inputs of per-sample shape {tuple(example.shape[1:])}: {exc}"
        ) from exc

    nodes: list[Node] = []
    index: dict[torch.fx.Node, int] = {}  # fx node -> our node index (input-dependent only)
    alias_of: dict[torch.fx.Node, torch.fx.Node] = {}  # view-like nodes -> the node they view
    output = None

    def dependent(arg) -> int | None:
        return index.get(arg) if isinstance(arg, torch.fx.Node) else None

    def shape_of(arg) -> tuple[int, ...]:
        return tuple(rec.values[arg].shape[1:])

    def value_of(arg):
        return torch.fx.node.map_aggregate(arg, lambda a: rec.values[a] if isinstance(a, torch.fx.Node) else a)

    for n in gm.graph.nodes:
        if n.op == "placeholder":
            if nodes:
                raise UnsupportedLayerError(n.name, "placeholder", "models with several inputs")
            index[n] = 0
            nodes.append(Node("input", None, [], tuple(rec.values[n].shape[1:])))
            continue
        if n.op == "output":
            arg = n.args[0]
            if not isinstance(arg, torch.fx.Node) or arg not in index:
                raise UnsupportedLayerError("output", "output", "the model must return one tensor")
            output = index[arg]
            continue
        if n.op == "get_attr":
            continue
        if not any(a in index for a in n.all_input_nodes):
            continue  # a constant: evaluated by the recorder, folded into its users
        value = rec.values[n]
        if not isinstance(value, torch.Tensor):
            continue  # shape metadata such as x.size(0): depends on the shape, not the values
        module = modules[n.target] if n.op == "call_module" else None
        path = str(n.target) if module is not None else n.name
        label = _label(n, module)
        if value.shape[:1] != example.shape[:1]:
            raise UnsupportedLayerError(path, label, "an op that changes the batch dimension")
        entry = lookup(n.op, module if module is not None else n.target)
        if entry is None:
            raise UnsupportedLayerError(path, label, f"supported: {supported_summary()}")
        bound = bind_call(entry, module, n.args, n.kwargs, path, label)
        call = Call(path, label, entry.handle, module, bound, dependent, shape_of, value_of,
                    tuple(value.shape[1:]))
        op = entry.op.convert(call)
        call.finish()
        if op is None or op.alias:
            alias_of[n] = _first_dependent(n, index)
        if _is_inplace(n, module, bound):
            _check_inplace(n, call, alias_of, path, label)
        if op is None:  # the identity: an alias of its input
            if len(call.inputs) != 1 or shape_of(n) != nodes[call.inputs[0]].shape:
                raise UnsupportedLayerError(path, label, "an identity op whose output differs from its input")
            index[n] = call.inputs[0]
            continue
        if len(call.inputs) != op.n_inputs:
            raise UnsupportedLayerError(path, label, f"expected {op.n_inputs} input-dependent argument(s)")
        inputs = list(call.inputs)
        if len(inputs) == 1 and inputs[0] != 0:
            simpler = op.compose(nodes[inputs[0]].op)
            if simpler is not None:
                inputs = list(nodes[inputs[0]].inputs)
                if simpler == "identity":
                    index[n] = inputs[0]
                    continue
                op = simpler
        op.path = path
        index[n] = len(nodes)
        nodes.append(Node(path, op, inputs, tuple(value.shape[1:])))

    if output is None:
        raise UnsupportedLayerError("output", "output", "the model output does not depend on the input")
    graph = _prune(nodes, output)
    nodes, output = graph.nodes, graph.output
    if len(graph.nodes[output].shape) != 1:
        raise UnsupportedLayerError(
            "output",
            "output",
            f"the model must return (N, K) logits, got per-sample shape {graph.nodes[output].shape}",
        )
    return graph


def _prune(nodes: list[Node], output: int) -> Graph:
    """The graph of the nodes the output depends on (dead branches, e.g. permutations that
    composed away, are dropped), reindexed, with their users."""
    keep = {output}
    for i in range(output, 0, -1):
        if i in keep:
            keep.update(nodes[i].inputs)
    keep.add(0)
    order = sorted(keep)
    new_index = {old: new for new, old in enumerate(order)}
    kept = []
    for old in order:
        node = nodes[old]
        kept.append(Node(node.name, node.op, [new_index[j] for j in node.inputs], node.shape))
    for i, node in enumerate(kept):
        for j in node.inputs:
            kept[j].users.append(i)
    return Graph(kept, new_index[output])


def _first_dependent(n: torch.fx.Node, index: dict) -> torch.fx.Node:
    return next(a for a in n.all_input_nodes if a in index)


def _check_inplace(n: torch.fx.Node, call: Call, alias_of: dict, path: str, label: str) -> None:
    """An in-place op overwrites its input (and every tensor that input is a view of): accept it
    only when nothing else reads them, or the graph would use the values from before the write."""
    target = n.args[0] if n.args else None
    if not isinstance(target, torch.fx.Node) or call.dependent(target) is None:
        raise UnsupportedLayerError(path, label, "an in-place op that overwrites a constant of the model")
    alias_of[n] = target  # its output is the overwritten tensor
    while True:
        if len(target.users) != 1:
            raise UnsupportedLayerError(
                path, label,
                f"an in-place op on {target.name!r}, which is also read elsewhere (use the "
                "out-of-place form)",
            )
        if target not in alias_of:
            return
        target = alias_of[target]


def check_against_model(model: nn.Module, graph: Graph, device, dtype) -> None:
    """Evaluate ``graph`` and ``model`` on a fresh batch of 3 and raise when they disagree.

    The graph was traced on a batch of 2; a model whose output for a batch of another size
    differs from the graph's (ops that mix samples, hard-coded batch sizes, anything a
    converter got wrong) cannot be bounded soundly.
    """
    gen = torch.Generator().manual_seed(0)
    x = torch.rand((3, *graph.input_shape), generator=gen, dtype=torch.float64) * 2 - 0.5
    x = x.to(device=device, dtype=dtype)
    try:
        with torch.no_grad():
            expected = model(x)
    except Exception as exc:  # noqa: BLE001 - any failure at another batch size
        raise UnsupportedLayerError(
            "<model>", type(model).__name__, f"the model fails on a batch of 3 ({exc}): its ops depend on the batch size"
        ) from exc
    with torch.no_grad():
        got = graph.evaluate(x)
    if not isinstance(expected, torch.Tensor) or expected.shape != got.shape:
        raise UnsupportedLayerError(
            "<model>", type(model).__name__,
            "the traced graph does not reproduce the model's output shape on a batch of 3",
        )
    scale = 1 + float(expected.abs().max()) if expected.numel() else 1.0
    err = float((expected - got).abs().max()) if expected.numel() else 0.0
    if not err <= 1e-3 * scale:  # also catches NaN
        raise UnsupportedLayerError(
            "<model>", type(model).__name__,
            f"the traced graph does not reproduce the model's outputs (max difference {err:.3g} on a "
            "batch of 3): some op depends on the batch or on state the tracer cannot see",
        )
