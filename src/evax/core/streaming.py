"""Streaming Monte-Carlo loops over (blocks of inputs) x (chunks of perturbation draws).

Infidelity, max-sensitivity, the infidelity-optimal explanations and smoothing all evaluate a
model (or an explainer) on ``n`` perturbed copies of each of ``N`` inputs and keep only
per-input running statistics. They share this module's loop::

    per_block, per_chunk = blocks(n_inputs, n, batch_size)   # per_block * per_chunk <= batch_size
    draws = Draws(noise, seed, stream)
    for step in steps(n_inputs, n, per_block, per_chunk):
        pert, perturbed = draws.sample(x[step.inputs], step.offset, step.count, n)

**Draws do not depend on the chunking.** Draws are made in *draw blocks* of ``DRAW_BLOCK``
consecutive items (the last one shorter): block ``q`` of the stream is
``noise.sample(x, m_q, generator(seed, stream, block=q), shared=True)`` (see
:mod:`evax.core.random`), and a chunk takes the items it needs from the blocks it overlaps. So
item ``j``'s draw depends on ``(seed, stream, n, j)`` but neither on ``batch_size`` nor on the
other inputs (the draws are shared by all the inputs: common random numbers), and results are
equal across batch sizes up to float summation order. With ``n <= DRAW_BLOCK`` the draws are
exactly ``noise.sample(x, n, generator(seed, stream), shared=True)``. Memory: at most
``max(batch_size, DRAW_BLOCK)`` perturbed inputs at a time.

Exhaustive distributions (finite support) need no generator: a chunk is items
``offset .. offset + count - 1`` of the enumeration.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from evax.core.random import generator
from evax.errors import InvalidInputError

if TYPE_CHECKING:
    from evax.core.noise import NoiseDistribution

__all__ = ["DRAW_BLOCK", "Draws", "Step", "blocks", "n_draws", "steps"]

DRAW_BLOCK = 1024


def n_draws(n_samples: int | None, noise: NoiseDistribution, inputs: torch.Tensor, default: int) -> int:
    """Draws per input: all the items of an exhaustive distribution, else ``n_samples`` or
    ``default``. Raises :class:`InvalidInputError` for an ``n_samples`` an exhaustive
    distribution cannot honour."""
    if noise.exhaustive:
        total = noise.size(inputs)
        assert total is not None
        if n_samples is not None and n_samples != total:
            raise InvalidInputError(
                f"{noise!r} enumerates all its {total} items for these inputs: leave "
                f"n_samples=None (got {n_samples}), or use a random distribution to draw n_samples"
            )
        return total
    return default if n_samples is None else n_samples


def blocks(n_inputs: int, n: int, batch_size: int) -> tuple[int, int]:
    """``(inputs per block, draws per chunk)`` with ``block * chunk <= batch_size`` (at least 1
    each): all the draws of several inputs when they fit, else chunks of one input's draws."""
    if n >= batch_size:
        return 1, batch_size
    return max(1, min(n_inputs, batch_size // n)), n


@dataclass(frozen=True)
class Step:
    """One model call of a streamed loop: inputs ``start:stop``, draws ``offset:offset+count``."""

    start: int
    stop: int
    offset: int
    count: int

    @property
    def inputs(self) -> slice:
        return slice(self.start, self.stop)

    @property
    def first(self) -> bool:
        """The first chunk of its block of inputs (statistics start here)."""
        return self.offset == 0

    def last(self, n: int) -> bool:
        """The last chunk of its block of inputs (statistics are complete after it)."""
        return self.offset + self.count >= n


def steps(n_inputs: int, n: int, per_block: int, per_chunk: int) -> list[Step]:
    """Every (block of inputs, chunk of draws) pair, blocks outermost."""
    return [
        Step(i, min(i + per_block, n_inputs), j, min(per_chunk, n - j))
        for i in range(0, n_inputs, per_block)
        for j in range(0, n, per_chunk)
    ]


class Draws:
    """Chunk-independent draws of ``noise`` (see the module docstring).

    Args:
        noise: the distribution.
        seed: the user's seed; ``stream``: the name of the stream (``None``: the metrics').
        draw_block: items per draw block (``DRAW_BLOCK``).
    """

    def __init__(
        self, noise: NoiseDistribution, seed: int, stream: str | None = None, draw_block: int = DRAW_BLOCK
    ) -> None:
        self.noise, self.seed, self.stream, self.draw_block = noise, seed, stream, draw_block
        self._cache: tuple[tuple, tuple[torch.Tensor, torch.Tensor]] | None = None

    def _block(self, inputs: torch.Tensor, q: int, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        key = (inputs.data_ptr(), tuple(inputs.shape), inputs.device, q, n)
        if self._cache is None or self._cache[0] != key:
            size = min(self.draw_block, n - q * self.draw_block)
            gen = generator(self.seed, self.stream, inputs.device, block=q)
            self._cache = (key, self.noise.sample(inputs, size, gen, shared=True))
        return self._cache[1]

    def sample(self, inputs: torch.Tensor, offset: int, count: int, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``(I, x~)`` of items ``offset .. offset + count - 1`` (of ``n``) for ``inputs``
        ``(b, *S)``: shapes ``(b, count, *S_I)`` and ``(b, count, *S)``."""
        if self.noise.exhaustive:
            return self.noise.sample(inputs, count, None, offset=offset, shared=True)
        d = self.draw_block
        parts_i, parts_x = [], []
        for q in range(offset // d, (offset + count - 1) // d + 1):
            pert, perturbed = self._block(inputs, q, n)
            lo, hi = max(offset, q * d) - q * d, min(offset + count, (q + 1) * d) - q * d
            if lo == 0 and hi == pert.shape[1]:
                parts_i.append(pert)
                parts_x.append(perturbed)
            else:
                parts_i.append(pert[:, lo:hi])
                parts_x.append(perturbed[:, lo:hi])
        if len(parts_i) == 1:
            return parts_i[0], parts_x[0]
        return torch.cat(parts_i, dim=1), torch.cat(parts_x, dim=1)
