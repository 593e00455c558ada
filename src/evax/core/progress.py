"""One progress-bar helper for every long loop of evax (tqdm, shown on terminals)."""

from __future__ import annotations

import sys
from collections.abc import Iterable
from typing import Any


def progress_bar(iterable: Iterable[Any], progress: bool | None, **kwargs: Any) -> Iterable[Any]:
    """``tqdm(iterable, **kwargs)`` when ``progress`` is True, or None and stderr is a TTY; else
    ``iterable`` as is. Bars are transient (``leave=False``) unless told otherwise."""
    show = sys.stderr.isatty() if progress is None else bool(progress)
    if not show:
        return iterable
    from tqdm.auto import tqdm

    kwargs.setdefault("leave", False)
    return tqdm(iterable, **kwargs)
