"""Load a ``torch.export`` program (``.pt2``) as a module the bound engine can trace.

``torch.export.load(path).module()`` is a GraphModule of ATen overloads
(``aten.linear.default``...) that refuses ``.eval()`` and carries pytree input/output code.
:func:`from_export` rebuilds a plain ``torch.fx.GraphModule`` whose nodes are the functional
torch calls the engine's op registry knows (``F.linear``, ``F.conv2d``, ``operator.add``...),
argument for argument. ATen ops without a counterpart here stay as they are: the model still
runs (gradient methods work) and the bound engine names them if asked to bound it.
"""

from __future__ import annotations

import operator
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.fx
import torch.nn.functional as F
from torch import nn

from evax.errors import DataSourceError, InvalidInputError

aten = torch.ops.aten

Rewrite = Callable[[tuple, dict], tuple[str, Any, tuple, dict]]


def _fn(target: Any, keep: int | None = None) -> Rewrite:
    """Same positional arguments (the first ``keep`` of them), same kwargs."""
    return lambda a, k: ("call_function", target, tuple(a[:keep] if keep else a), dict(k))


def _pool(target: Any) -> Rewrite:
    def rw(a: tuple, k: dict) -> tuple[str, Any, tuple, dict]:
        a = list(a)
        if len(a) > 2 and a[2] in ([], ()):  # aten's "stride = kernel" is an empty list
            a[2] = None
        return "call_function", target, tuple(a), dict(k)

    return rw


def _batch_norm(a: tuple, k: dict) -> tuple[str, Any, tuple, dict]:
    x, w, b, mean, var, training, momentum, eps = a[:8]
    return "call_function", F.batch_norm, (x, mean, var, w, b, training, momentum, eps), {}


def _dropout(a: tuple, k: dict) -> tuple[str, Any, tuple, dict]:
    return "call_function", F.dropout, (a[0], a[1]), {"training": bool(a[2])}


def _method(name: str) -> Rewrite:
    return lambda a, k: ("call_method", name, tuple(a), dict(k))


def _no_alpha(target: Any) -> Rewrite:
    def rw(a: tuple, k: dict) -> tuple[str, Any, tuple, dict]:
        if k.get("alpha", 1) != 1:
            return "call_function", target, tuple(a), dict(k)  # torch.add with alpha: refused later
        return "call_function", target, tuple(a), {}

    return rw


REWRITES: dict[Any, Rewrite] = {
    aten.linear.default: _fn(F.linear),
    aten.conv2d.default: _fn(F.conv2d),
    aten.relu.default: _fn(torch.relu),
    aten.sigmoid.default: _fn(torch.sigmoid),
    aten.tanh.default: _fn(torch.tanh),
    aten.gelu.default: _fn(F.gelu),
    aten.silu.default: _fn(F.silu),
    aten.softplus.default: _fn(F.softplus),
    aten.leaky_relu.default: _fn(F.leaky_relu),
    aten.hardtanh.default: _fn(F.hardtanh),
    aten.max_pool2d.default: _pool(F.max_pool2d),
    aten.avg_pool2d.default: _pool(F.avg_pool2d),
    aten.adaptive_avg_pool2d.default: _fn(F.adaptive_avg_pool2d),
    aten.batch_norm.default: _batch_norm,
    aten.dropout.default: _dropout,
    aten.add.Tensor: _no_alpha(operator.add),
    aten.sub.Tensor: _no_alpha(operator.sub),
    aten.mul.Tensor: _fn(operator.mul),
    aten.div.Tensor: _fn(operator.truediv),
    aten.neg.default: _fn(operator.neg),
    aten.view.default: _method("view"),
    aten.reshape.default: _fn(torch.reshape),
    aten.flatten.using_ints: _fn(torch.flatten),
    aten.permute.default: _fn(torch.permute),
    aten.transpose.int: _fn(torch.transpose),
    aten.unsqueeze.default: _fn(torch.unsqueeze),
    aten.squeeze.dim: _fn(torch.squeeze),
    aten.cat.default: _fn(torch.cat),
    aten.mean.dim: _fn(torch.mean),
    aten.sum.dim_IntList: _fn(torch.sum),
    aten.clone.default: _fn(torch.clone, keep=1),
    aten.matmul.default: _fn(torch.matmul),
    aten.pad.default: _fn(F.pad),
    aten.sym_size.int: _method("size"),
}


def plain_graph(exported: nn.Module) -> torch.fx.GraphModule:
    """A plain GraphModule computing ``exported`` (an ``ExportedProgram.module()``): ATen
    overloads rewritten to torch calls, shape guards dropped, one tensor in and one out."""
    src = exported.graph
    graph = torch.fx.Graph()
    env: dict[torch.fx.Node, Any] = {}
    for node in src.nodes:
        if node.op == "call_module" and node.target == "_guards_fn":
            continue  # export's input-shape guards: not part of the computation
        if node.op == "output":
            out = node.args[0]
            if isinstance(out, (tuple, list)) and len(out) == 1:
                out = out[0]
            graph.output(torch.fx.map_arg(out, lambda n: env[n]))
            continue
        if node.op == "call_function" and node.target in REWRITES:
            args = torch.fx.map_arg(node.args, lambda n: env[n])
            kwargs = torch.fx.map_arg(node.kwargs, lambda n: env[n])
            op, target, a, k = REWRITES[node.target](tuple(args), dict(kwargs))
            env[node] = graph.create_node(op, target, a, k, name=node.name)
        else:
            env[node] = graph.node_copy(node, lambda n: env[n])
    gm = torch.fx.GraphModule(exported, graph)
    gm.graph.lint()
    return gm.eval()


def from_export(path: str | Path) -> torch.fx.GraphModule:
    """Load a ``torch.export.save`` file as a plain, traceable GraphModule (eval mode).

    Raises:
        DataSourceError: no such file.
        InvalidInputError: the file is not a saved ``ExportedProgram``.
    """
    p = Path(path).expanduser()
    if not p.is_file():
        raise DataSourceError(f"no torch.export file at {str(p)!r}")
    try:
        program = torch.export.load(str(p))
    except Exception as exc:  # noqa: BLE001 - zipfile / pickle / version errors alike
        raise InvalidInputError(f"{p} is not a torch.export program (torch.export.save): {exc}") from exc
    return plain_graph(program.module())
