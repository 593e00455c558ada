"""Seeded random streams: one scheme for every random object of evax (nothing global).

Every random draw of a method or a metric comes from a ``torch.Generator`` made here from the
user's ``seed`` and the name of a *stream*::

    generator(seed)                  # the stream of the metrics' perturbations: manual_seed(seed)
    generator(seed, "optimal")       # an optimal explanation's regression samples
    generator(seed, "metric/0")      # a fidelity metric's baseline, "metric/1" its subsets...
    generator(seed, "optimal", 3)    # block 3 of a streamed stream (see evax.core.streaming)

A named stream's seed is ``(seed * 0x9E3779B1 + crc32(name)) mod 2**63``: an explanation and
the metric that scores it, built with the same ``seed``, never share their draws (an optimal
explanation scored on its own perturbations would look better than it is), and adding a
stream changes no other stream's draws.
"""

from __future__ import annotations

import zlib

import torch

from evax.errors import InvalidInputError

__all__ = ["check_seed", "generator", "stream_seed"]


def check_seed(seed: object) -> int:
    """``seed`` if it is a Python ``int`` (not ``bool``)."""
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise InvalidInputError(f"seed must be an int, got {seed!r}")
    return seed


def stream_seed(seed: int, stream: str | None = None, block: int = 0) -> int:
    """The seed of ``block`` of ``stream`` (see the module docstring); ``seed`` itself for
    block 0 of the unnamed stream."""
    check_seed(seed)
    if block:
        stream = f"{stream or ''}#{int(block)}"
    if stream is None:
        return seed
    return (seed * 0x9E3779B1 + zlib.crc32(stream.encode())) % 2**63


def generator(
    seed: int, stream: str | None = None, device: torch.device | str = "cpu", block: int = 0
) -> torch.Generator:
    """A fresh ``torch.Generator`` on ``device`` for ``block`` of ``stream`` of ``seed``."""
    return torch.Generator(device=device).manual_seed(stream_seed(seed, stream, block))
