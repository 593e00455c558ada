"""The op registry: which bound op handles which traced call, and how its arguments are read.

Every op class registers itself for the ``torch.nn`` module types, functions and tensor methods
it handles (auto_LiRPA's operator design)::

    @register(nn.ReLU, F.relu, torch.relu, "relu", "relu_", signature="(input, inplace=False)")
    class ReLU(ElementwiseOp):
        @classmethod
        def convert(cls, call: Call) -> Op: ...

* Module types match *exactly* (``type(module) is nn.ReLU``): a subclass may change
  ``forward``; torch.fx traces through user subclasses anyway, since only ``torch.nn`` modules
  are leaves.
* Functions and methods are bound against a declared Python ``signature`` (per handle if they
  differ); modules against their ``forward``. An argument the signature does not name is an
  :class:`~evax.errors.UnsupportedLayerError`, and so is an argument the converter did not read
  (:meth:`Call.finish`): nothing a call says can be silently dropped.
* The list of supported layers in error messages and in the README is generated from the
  registry (:func:`supported_layers`).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.fx
from torch import nn

from evax.errors import UnsupportedLayerError


@dataclass(frozen=True)
class Entry:
    """One registration: the op class, the handle and the signature calls are bound with."""

    op: type
    handle: Any
    signature: inspect.Signature | None
    label: str


_MODULES: dict[type, Entry] = {}
_FUNCTIONS: dict[Any, Entry] = {}
_METHODS: dict[str, Entry] = {}
_OPS: list[type] = []


def _parse_signature(text: str) -> inspect.Signature:
    """``"(input, other, *, alpha=1)"`` -> an :class:`inspect.Signature`."""
    scope: dict[str, Any] = {}
    exec(f"def _sig{text}: pass", {}, scope)  # noqa: S102 - signatures are literals of this package
    return inspect.signature(scope["_sig"])


def _label(handle: Any) -> str:
    if isinstance(handle, str):
        return f"Tensor.{handle}()"
    if isinstance(handle, type):
        return f"nn.{handle.__name__}"
    import operator

    import torch.nn.functional as F

    name = getattr(handle, "__name__", repr(handle))
    if getattr(F, name, None) is handle:
        return f"F.{name}"
    if getattr(operator, name, None) is handle:
        return f"operator.{name}"
    return f"torch.{name}"


def register(
    *handles: Any,
    signature: str | None = None,
    signatures: dict[Any, str] | None = None,
    doc: str | None = None,
) -> Callable[[type], type]:
    """Class decorator registering an op for ``handles``.

    Args:
        handles: ``nn.Module`` subclasses (matched exactly), functions (``F.relu``,
            ``torch.add``, ``operator.add``) and tensor method names (``"relu"``).
        signature: the signature function and method calls are bound with, e.g.
            ``"(input, inplace=False)"`` (for methods, ``input`` is the tensor itself).
        signatures: per-handle signatures overriding ``signature``.
        doc: how the op appears in the list of supported layers (default: the class name).
    """
    per_handle = signatures or {}

    def decorate(cls: type) -> type:
        cls.registry_doc = doc or cls.__name__
        cls.handles = tuple(handles)
        for handle in handles:
            text = per_handle.get(handle, signature)
            if isinstance(handle, type) and issubclass(handle, nn.Module):
                table, key, sig = _MODULES, handle, None
            else:
                if text is None:
                    raise TypeError(f"{cls.__name__}: handle {handle!r} needs a signature")
                table = _METHODS if isinstance(handle, str) else _FUNCTIONS
                key, sig = handle, _parse_signature(text)
            if key in table and table[key].op is not cls:
                raise TypeError(f"{_label(handle)} is registered twice ({table[key].op.__name__}, {cls.__name__})")
            table[key] = Entry(cls, handle, sig, _label(handle))
        if cls not in _OPS:
            _OPS.append(cls)
        return cls

    return decorate


def lookup(kind: str, target: Any) -> Entry | None:
    """The registration for an fx node's ``kind`` (``call_module`` with the module instance,
    ``call_function`` or ``call_method``) and target, or ``None``."""
    if kind == "call_module":
        return _MODULES.get(type(target))
    if kind == "call_function":
        try:
            return _FUNCTIONS.get(target)
        except TypeError:  # an unhashable target
            return None
    if kind == "call_method":
        return _METHODS.get(target)
    return None


def registered_ops() -> list[type]:
    """Every registered op class, in registration order."""
    return list(_OPS)


def supported_layers() -> str:
    """One line per op: what it is and the modules, functions and methods it handles."""
    lines = []
    for cls in _OPS:
        labels = list(dict.fromkeys(_label(h) for h in cls.handles))
        lines.append(f"{cls.registry_doc}: {', '.join(labels)}")
    return "\n".join(lines)


def supported_markdown() -> str:
    """The supported ops as a markdown list (the README's block between the
    ``supported-layers`` markers is this text; ``python -m evax.bounds.ops --write README.md``
    regenerates it)."""
    lines = []
    for cls in _OPS:
        labels = ", ".join(f"`{label}`" for label in dict.fromkeys(_label(h) for h in cls.handles))
        lines.append(f"  * {cls.registry_doc}: {labels}")
    return "\n".join(lines)


def supported_summary() -> str:
    """The supported ops on one line (for error messages)."""
    return "; ".join(cls.registry_doc for cls in _OPS)


# ---------------------------------------------------------------------------------------------
@dataclass
class Call:
    """One traced call as a converter sees it.

    Attributes:
        path: the module path (``call_module``) or fx node name, used in every error.
        kind: what was called, for errors (``"ReLU"``, ``"function add"``, ``"method .view()"``).
        module: the ``nn.Module`` instance for module calls, else ``None``.
        in_shape: per-sample shape of each input-dependent argument, by argument name.
        out_shape: the per-sample shape of the call's recorded output.
    """

    path: str
    kind: str
    handle: Any
    module: nn.Module | None
    bound: dict[str, Any]
    dependent: Callable[[Any], int | None]
    shape_of: Callable[[Any], tuple[int, ...]]
    value_of: Callable[[Any], Any]
    out_shape: tuple[int, ...]
    inputs: list[int] = field(default_factory=list)
    _read: set[str] = field(default_factory=set)

    # -- errors ---------------------------------------------------------------------------------
    def unsupported(self, hint: str) -> UnsupportedLayerError:
        return UnsupportedLayerError(self.path, self.kind, hint)

    # -- arguments ------------------------------------------------------------------------------
    def _get(self, name: str) -> Any:
        if name not in self.bound:
            raise KeyError(f"{self.kind} has no argument {name!r}")  # a converter bug
        self._read.add(name)
        return self.bound[name]

    def is_input(self, name: str) -> bool:
        """Whether argument ``name`` depends on the network input."""
        return self.dependent(self.bound.get(name)) is not None

    def input(self, name: str) -> int:
        """Mark argument ``name`` as an input of the op (it must depend on the network input);
        returns its graph node index."""
        arg = self._get(name)
        idx = self.dependent(arg)
        if idx is None:
            raise self.unsupported(f"argument {name!r} was expected to depend on the input")
        self.inputs.append(idx)
        return idx

    def input_list(self, name: str) -> list[tuple[int, ...]]:
        """Mark every entry of the sequence argument ``name`` as an input (each must depend on
        the network input); returns their per-sample shapes."""
        items = self._get(name)
        if not isinstance(items, (list, tuple)) or not items:
            raise self.unsupported(f"argument {name!r} must be a non-empty list of tensors")
        shapes = []
        for k, item in enumerate(items):
            idx = self.dependent(item)
            if idx is None:
                raise self.unsupported(f"entry {k} of {name!r} must depend on the input (constants "
                                       "would need a batch dimension)")
            self.inputs.append(idx)
            shapes.append(self.shape_of(item))
        return shapes

    def input_shape(self, name: str) -> tuple[int, ...]:
        """Per-sample shape of the input-dependent argument ``name``."""
        return self.shape_of(self.bound[name])

    def const(self, name: str) -> Any:
        """The value of a constant argument (a folded tensor, a number, a tuple...).

        Raises :class:`UnsupportedLayerError` when it depends on the network input.
        """
        arg = self._get(name)
        if _mentions_input(arg, self.dependent):
            raise self.unsupported(f"argument {name!r} must not depend on the input")
        return self.value_of(arg)

    def shape_only(self, name: str) -> None:
        """Argument ``name`` is used only for its shape (``x.view_as(other)``)."""
        self._get(name)

    def literal(self, name: str, allowed: tuple | None = None, test: Callable[[Any], bool] | None = None,
                expect: str = "") -> Any:
        """A constant argument whose value must be one of ``allowed`` (or pass ``test``)."""
        value = self.const(name)
        ok = True
        if allowed is not None:
            ok = any(value is a or (type(value) is type(a) and value == a) for a in allowed)
        if test is not None:
            try:
                ok = ok and bool(test(value))
            except Exception:  # noqa: BLE001 - a value the test cannot read is not accepted
                ok = False
        if not ok:
            want = expect or f"one of {allowed!r}"
            raise self.unsupported(f"argument {name}={value!r} is not supported (expected {want})")
        return value

    def ignore(self, *names: str) -> None:
        """Arguments that do not change the function's values (``inplace``, memory formats)."""
        for name in names:
            self._get(name)

    def finish(self) -> None:
        """Raise if the converter left an argument unread (it would have been dropped)."""
        unread = [k for k in self.bound if k not in self._read]
        if unread:
            shown = ", ".join(f"{k}={self.bound[k]!r}" for k in unread)
            raise self.unsupported(f"the engine does not understand the argument(s) {shown}")


def _mentions_input(arg: Any, dependent: Callable[[Any], int | None]) -> bool:
    found = False

    def visit(a):
        nonlocal found
        if dependent(a) is not None:
            found = True
        return a

    torch.fx.node.map_aggregate(arg, visit)
    return found


def bind_call(entry: Entry | None, module: nn.Module | None, args: tuple, kwargs: dict, path: str,
              kind: str) -> dict[str, Any]:
    """Bind an fx node's ``args``/``kwargs`` to the registered signature (or, for modules,
    ``forward``'s); an unknown or surplus argument is an :class:`UnsupportedLayerError`."""
    if module is not None:
        sig = inspect.signature(type(module).forward)
        params = list(sig.parameters.values())[1:]  # drop self
        sig = sig.replace(parameters=params)
    else:
        sig = entry.signature
    try:
        bound = sig.bind(*args, **kwargs)
    except TypeError as exc:
        raise UnsupportedLayerError(path, kind, f"unexpected arguments ({exc})") from exc
    bound.apply_defaults()
    out: dict[str, Any] = {}
    for name, value in bound.arguments.items():
        param = sig.parameters[name]
        if param.kind is inspect.Parameter.VAR_KEYWORD and value:
            raise UnsupportedLayerError(path, kind, f"unexpected keyword arguments {sorted(value)}")
        if param.kind is inspect.Parameter.VAR_KEYWORD:
            continue
        out[name] = value
    return out
