"""Model-mode helper shared by the attribution methods and the metrics (no evax imports, so any
module can use it without import cycles)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from torch import nn


@contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Put ``model`` in eval mode for the block and restore every submodule's previous mode
    afterwards (a model whose parts were in different modes gets them back as they were)."""
    modes = [(m, m.training) for m in model.modules()]
    if not any(training for _, training in modes):
        yield model  # already in eval mode: nothing to switch or restore
        return
    model.eval()
    try:
        yield model
    finally:
        for m, training in modes:
            m.training = training
