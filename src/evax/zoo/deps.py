"""Optional dependencies of the zoo and the error raised when one is missing."""

from __future__ import annotations

import importlib
from types import ModuleType

from evax.errors import MissingDependencyError

__all__ = ["MissingDependencyError", "require"]


def require(module: str, purpose: str, install: str | None = None) -> ModuleType:
    """Import ``module`` or raise :class:`MissingDependencyError` naming ``purpose``."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        cmd = install or f"pip install {module} (or pip install 'evax[zoo]')"
        raise MissingDependencyError(f"{purpose} needs {module}: {cmd}") from exc
