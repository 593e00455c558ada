"""The bench as data: typed, frozen specifications of methods, metrics, settings and tables.

A table is a :class:`TableSpec`: a name, a title and its settings; a setting
(:class:`SettingSpec`) is a model on a dataset with its rows (:class:`MethodSpec`) and its
columns (:class:`MetricSpec`), the kind of cell that computes them
(:mod:`evax.bench.cells`) and the default number of images. The specs of the papers' tables
are in :mod:`evax.bench.registry`; :func:`evax.bench.runner.run_table` runs any spec.

Specs are immutable (frozen dataclasses, their keyword arguments read-only mappings and tuples)
and hashable: a spec can be shared, compared, and changed only by making a new one
(:func:`dataclasses.replace`, :meth:`TableSpec.with_method`). ``to_config()`` gives the JSON
form a cell receives; its hash is the cell's cache fingerprint, so two specs that give the
same configuration share the cache.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Literal

CellKind = Literal["attribution", "infidelity", "sanity", "tightness", "targeted"]


# ------------------------------------------------------------------ read-only values
class FrozenMap(Mapping):
    """A read-only, hashable mapping (the keyword arguments of a spec)."""

    __slots__ = ("_data", "_hash")

    def __init__(self, data: Mapping | None = None) -> None:
        self._data = MappingProxyType({k: freeze(v) for k, v in dict(data or {}).items()})
        self._hash: int | None = None

    def __getitem__(self, key: str) -> Any:
        return self._data[key]

    def __iter__(self):
        return iter(self._data)

    def __len__(self) -> int:
        return len(self._data)

    def __hash__(self) -> int:
        if self._hash is None:
            self._hash = hash(tuple(sorted(self._data.items(), key=lambda kv: kv[0])))
        return self._hash

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Mapping) and dict(self._data) == dict(other)

    def __repr__(self) -> str:
        return f"FrozenMap({dict(self._data)!r})"


def freeze(value: Any) -> Any:
    """``value`` with its dicts as :class:`FrozenMap` and its lists as tuples (recursively)."""
    if isinstance(value, FrozenMap):
        return value
    if isinstance(value, Mapping):
        return FrozenMap(value)
    if isinstance(value, (list, tuple)):
        return tuple(freeze(v) for v in value)
    return value


def thaw(value: Any) -> Any:
    """The JSON form of a frozen value: mappings as dicts, tuples as lists."""
    if isinstance(value, Mapping):
        return {k: thaw(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [thaw(v) for v in value]
    return value


def _frozen(obj: Any, *names: str) -> None:
    for name in names:
        v = getattr(obj, name)
        if v is not None:
            object.__setattr__(obj, name, freeze(v))


# ------------------------------------------------------------------ methods and metrics
@dataclass(frozen=True)
class MethodSpec:
    """A row of a table: how to build its explainer.

    ``kind`` is an evax attribution class (``"Saliency"``, ``"EVA"``, any name of
    ``evax.attribution.METHODS`` or of :mod:`evax.bench.components`), or one of

    * ``"captum:NAME"`` -- the Captum method NAME used directly, ``kwargs`` passed to its
      ``attribute`` (the infidelity paper's signed gradient);
    * ``"smooth"`` -- :class:`evax.attribution.Smoothed` of ``inner`` with ``kwargs`` (the
      "-SG" rows of the infidelity paper);
    * ``"times_input"`` -- ``inner(x) * (x - 0)``, the global version of a local explanation;
    * ``"bound"`` -- no explainer: a bound method (``kwargs["method"]``) for the cells that
      bound the AO of the whole ball (kinds ``"tightness"`` and ``"targeted"``).

    ``kwargs`` ``None`` and ``{}`` differ only in the cell configuration (and so in its cache
    fingerprint): kept apart so that the caches of earlier runs stay valid. ``explain``: use
    the method's ``explain`` (the EVA family: the map and the AO bound); ``groups_grid``: its
    variables are the cells of that grid. ``default=False``: run only when named with
    ``--method`` (too slow for the default run).
    """

    name: str
    kind: str
    kwargs: Mapping[str, Any] | None = None
    explain: bool = False
    groups_grid: int | None = None
    inner: MethodSpec | None = None
    default: bool = True

    def __post_init__(self) -> None:
        _frozen(self, "kwargs")
        if self.kind in ("smooth", "times_input") and self.inner is None:
            raise ValueError(f"a {self.kind!r} method needs an inner method")

    def to_config(self) -> dict:
        """The explainer spec of :class:`evax.bench.cells.Explainer` (JSON)."""
        kw = thaw(self.kwargs) if self.kwargs is not None else None
        if self.kind == "bound":
            raise ValueError("a bound method has no explainer configuration")
        if self.kind == "smooth":
            out: dict = {"smooth": self.inner.to_config(), "kwargs": kw or {}}
        elif self.kind == "times_input":
            out = {"times_input": self.inner.to_config()}
        elif self.kind.startswith("captum:"):
            out = {"captum": self.kind.split(":", 1)[1]}
            if kw is not None:
                out["call"] = kw
        else:
            out = {"cls": self.kind}
            if kw is not None:
                out["kwargs"] = kw
        if self.explain:
            out["explain"] = True
        if self.groups_grid is not None:
            out["groups_grid"] = self.groups_grid
        return out

    def with_kwargs(self, **kwargs: Any) -> MethodSpec:
        """A copy with ``kwargs`` updated."""
        return dataclasses.replace(self, kwargs={**dict(self.kwargs or {}), **kwargs})


@dataclass(frozen=True)
class MetricSpec:
    """A column of a table.

    ``kind``: the evax metric class the cell builds (``"Deletion"``...; ``kwargs`` are its
    arguments), or ``None`` where the cell computes the metric by its ``name`` (``tightness``,
    ``certified``, ``infd``, ``sens_max``, ``spearman``: see :mod:`evax.bench.cells`).
    """

    name: str
    kind: str | None = None
    kwargs: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        _frozen(self, "kwargs")

    def to_config(self) -> dict:
        return {"cls": self.kind, **thaw(self.kwargs)} if self.kind else thaw(self.kwargs)


# ------------------------------------------------------------------ settings and tables
@dataclass(frozen=True)
class SettingSpec:
    """A block of a table: a model on a dataset, its rows and columns.

    ``config``: what every cell of the setting adds to its configuration (``eps``, ``grid``,
    ``layer``...; part of the fingerprint). ``meta``: what the report prints about the setting
    (not part of the fingerprint). ``images``: ``"permutation"`` -- the first ``n`` of a
    seeded permutation of the test split (sample sets of <= 100 images: in order) -- or
    ``"first"`` -- the first ``n`` test images. ``n_option``: the name of the
    :func:`~evax.bench.runner.run_table` keyword that sets this setting's ``n`` (``tiny_n``).
    """

    key: str
    model: str
    dataset: str
    n: int
    methods: tuple[MethodSpec, ...]
    metrics: tuple[MetricSpec, ...] = ()
    cell: CellKind = "attribution"
    note: str = ""
    config: Mapping[str, Any] = field(default_factory=dict)
    meta: Mapping[str, Any] = field(default_factory=dict)
    images: Literal["permutation", "first"] = "permutation"
    n_option: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "methods", tuple(self.methods))
        object.__setattr__(self, "metrics", tuple(self.metrics))
        _frozen(self, "config", "meta")
        names = [m.name for m in self.methods]
        if len(set(names)) != len(names):
            raise ValueError(f"setting {self.key!r}: a method is listed twice: {names}")

    def method(self, name: str) -> MethodSpec:
        for m in self.methods:
            if m.name == name:
                return m
        raise KeyError(name)

    def metric_configs(self) -> dict[str, dict]:
        return {m.name: m.to_config() for m in self.metrics}


@dataclass(frozen=True)
class TableSpec:
    """A table: its settings and how its results are shown.

    ``default_settings``: the settings run when none are chosen (None: all). ``reference``: a
    method every other one is compared with on the same images (paired difference +- standard
    error, in the JSON rows and the report). ``output``: ``"table"`` (CSV/JSON, heatmaps and
    curves) or ``"targeted"`` (the Fig. 7 grid). ``notes``: printed under the table.
    """

    name: str
    title: str
    settings: tuple[SettingSpec, ...]
    notes: tuple[str, ...] = ()
    default_settings: tuple[str, ...] | None = None
    reference: str | None = None
    output: Literal["table", "targeted"] = "table"
    published_time_images: Mapping[str, int] | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "settings", tuple(self.settings))
        object.__setattr__(self, "notes", tuple(self.notes))
        if self.default_settings is not None:
            object.__setattr__(self, "default_settings", tuple(self.default_settings))
        _frozen(self, "published_time_images")
        keys = [s.key for s in self.settings]
        if len(set(keys)) != len(keys):
            raise ValueError(f"table {self.name!r}: a setting is listed twice: {keys}")

    @property
    def setting_keys(self) -> tuple[str, ...]:
        return tuple(s.key for s in self.settings)

    def setting(self, key: str) -> SettingSpec:
        for s in self.settings:
            if s.key == key:
                return s
        raise KeyError(key)

    @property
    def columns(self) -> list[str]:
        """The metric columns in order, then ``seconds``."""
        names = dict.fromkeys(m.name for s in self.settings for m in s.metrics)
        return [*names, "seconds"]

    def with_method(self, name: str, **kwargs: Any) -> TableSpec:
        """A copy where the method ``name`` of every setting has its ``kwargs`` updated
        (e.g. ``spec.with_method("EVA", eps=0.25)``)."""
        found = False
        settings = []
        for s in self.settings:
            methods = []
            for m in s.methods:
                if m.name == name:
                    m, found = m.with_kwargs(**kwargs), True
                methods.append(m)
            settings.append(dataclasses.replace(s, methods=tuple(methods)))
        if not found:
            raise KeyError(f"table {self.name!r} has no method {name!r}")
        return dataclasses.replace(self, settings=tuple(settings))
