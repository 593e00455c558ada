"""The bound engine's ops: one class per op family, each registered for the modules, functions
and tensor methods it handles (:mod:`evax.bounds.ops.registry`).

Every module of this package is imported by :func:`load_all` (the graph builder calls it), so a
new op is one new file here (plus its tests): its ``@register`` decorator makes it known to the
tracer, the error messages and the README's list of supported layers.
"""

from __future__ import annotations

import importlib
import pkgutil

_LOADED = False


def load_all() -> None:
    """Import every op module of this package (registering its ops); idempotent."""
    global _LOADED
    if _LOADED:
        return
    for info in pkgutil.iter_modules(__path__):
        if not info.name.startswith("_") and info.name not in {"base", "registry"}:
            importlib.import_module(f"{__name__}.{info.name}")
    _LOADED = True
