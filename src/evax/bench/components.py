"""Find evax's attribution methods and metrics by name, or say clearly that one is missing.

The harness names what it needs (``"Saliency"``, ``"GreedyAS"``, ``"RobustnessSr"``...). A name
is looked up in the public registries first (``evax.attribution.METHODS``, ``evax.metrics``),
then in the modules that define it. A component that does not exist (or whose module needs a
missing optional dependency) raises :class:`ComponentUnavailable`, which the harness records
as an explicit error for that cell -- never a number -- and does not cache, so a later run
computes it once it exists. A module that exists but fails to import (a syntax error, a bad
import inside evax) is a bug, not a missing component: its error propagates (as :class:`ComponentBroken`) and stops the run.
"""

from __future__ import annotations

import importlib
from typing import Any

from evax.errors import EvaxError, MissingDependencyError

ATTRIBUTION_MODULES = (
    "evax.attribution",
    "evax.attribution.captum_methods",
    "evax.attribution.gradcampp",
    "evax.attribution.rise",
    "evax.attribution.greedy",
    "evax.attribution.eva",
    "evax.attribution.empirical",
    "evax.attribution.optimal",
    "evax.attribution.smoothing",
)
METRIC_MODULES = (
    "evax.metrics",
    "evax.metrics.fidelity",
    "evax.metrics.robustness",
    "evax.metrics.tightness",
    "evax.metrics.infidelity",
    "evax.core.noise",
    "evax.metrics.sanity",
)


class ComponentUnavailable(EvaxError, ImportError):
    """An evax component the table needs is not importable (yet), or needs an optional
    dependency that is not installed."""


class ComponentBroken(EvaxError, RuntimeError):
    """An evax module the table needs exists but fails to import: a bug to fix, never recorded
    as a cell's error (:func:`evax.bench.cells.compute_cell` lets it through)."""


def _missing_module(exc: ModuleNotFoundError, mod_name: str) -> bool:
    """``exc`` says that ``mod_name`` itself (or a parent package of it) does not exist -- not
    that a module it imports is missing."""
    missing = exc.name or ""
    return bool(missing) and (mod_name == missing or mod_name.startswith(missing + "."))


def _import(mod_name: str, problems: list[str]) -> Any:
    """The module, or ``None`` when it does not exist or lacks an optional dependency (noted in
    ``problems``). Any other error -- a broken module -- raises :class:`ComponentBroken`: the
    bench crashes instead of recording "unavailable" cells."""
    try:
        return importlib.import_module(mod_name)
    except ModuleNotFoundError as exc:
        if not _missing_module(exc, mod_name):
            problems.append(f"{mod_name}: needs the missing module {exc.name!r}")
        return None
    except MissingDependencyError as exc:
        problems.append(f"{mod_name}: {exc}")
        return None
    except Exception as exc:  # noqa: BLE001 - re-raised, marked as a broken component
        raise ComponentBroken(f"{mod_name} fails to import: {type(exc).__name__}: {exc}") from exc


def _find(name: str, modules: tuple[str, ...], registry: tuple[str, str] | None) -> Any:
    problems: list[str] = []
    if registry is not None:
        mod_name, attr = registry
        mod = _import(mod_name, problems)
        reg = getattr(mod, attr, None) if mod is not None else None
        if reg is not None and name in reg:
            return reg[name]
    for mod_name in modules:
        mod = _import(mod_name, problems)
        obj = getattr(mod, name, None) if mod is not None else None
        if obj is not None:
            return obj
    detail = f" ({'; '.join(problems)})" if problems else ""
    raise ComponentUnavailable(f"{name} is not importable from evax yet{detail}")


def method_class(name: str) -> type:
    """The attribution class ``name`` (``evax.attribution.METHODS[name]`` when registered)."""
    return _find(name, ATTRIBUTION_MODULES, ("evax.attribution", "METHODS"))


def metric_class(name: str) -> type:
    """The metric / perturbation class ``name`` from :mod:`evax.metrics`."""
    return _find(name, METRIC_MODULES, None)
