"""Find evax's attribution methods and metrics by name, or say clearly that one is missing.

The harness names what it needs (``"Saliency"``, ``"GreedyAS"``, ``"RobustnessSr"``...). A name
is looked up in the public registries first (``evax.attribution.METHODS``, ``evax.metrics``),
then in the modules that define it. A component that cannot be imported raises
:class:`ComponentUnavailable`, which the harness records as an explicit error for that cell --
never a number -- and does not cache, so a later run computes it once it exists.
"""

from __future__ import annotations

import importlib
from typing import Any

from evax.errors import EvaxError

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
    "evax.metrics.perturbations",
    "evax.metrics.sanity",
)


class ComponentUnavailable(EvaxError, ImportError):
    """An evax component the table needs is not importable (yet)."""


def _find(name: str, modules: tuple[str, ...], registry: tuple[str, str] | None) -> Any:
    problems = []
    if registry is not None:
        mod_name, attr = registry
        try:
            reg = getattr(importlib.import_module(mod_name), attr)
            if name in reg:
                return reg[name]
        except Exception as exc:  # noqa: BLE001 - any import problem is reported below
            problems.append(f"{mod_name}.{attr}: {type(exc).__name__}")
    for mod_name in modules:
        try:
            mod = importlib.import_module(mod_name)
        except ModuleNotFoundError:
            continue
        except Exception as exc:  # noqa: BLE001 - a broken module is reported, not fatal
            problems.append(f"{mod_name}: {type(exc).__name__}: {exc}")
            continue
        obj = getattr(mod, name, None)
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
