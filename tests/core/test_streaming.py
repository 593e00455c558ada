"""evax.core: chunk-independent streamed draws, random streams, the one baseline helper."""

from __future__ import annotations

import pytest
import torch

from evax.core.baselines import make_baseline
from evax.core.noise import GaussianNoise, NoisyBaseline, SquareRemoval, SubsetRemoval
from evax.core.random import generator, stream_seed
from evax.core.streaming import Draws, blocks, steps
from evax.errors import InvalidInputError


def _x(n=3, shape=(1, 5, 5), seed=0):
    return torch.rand(n, *shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


@pytest.mark.parametrize("noise", [GaussianNoise(0.3), NoisyBaseline(0.2, clip=(0, 1)), SubsetRemoval("shapley")])
def test_draws_do_not_depend_on_the_chunks(noise):
    x, n = _x(), 50
    whole = Draws(noise, seed=3, draw_block=16).sample(x, 0, n, n)
    for per_chunk in (1, 7, 16, 33):
        draws = Draws(noise, seed=3, draw_block=16)
        parts = [draws.sample(x, j, min(per_chunk, n - j), n) for j in range(0, n, per_chunk)]
        for got, want in zip((torch.cat([p[0] for p in parts], 1), torch.cat([p[1] for p in parts], 1)), whole, strict=True):
            assert torch.equal(got, want)
    # an input's draws do not depend on the other inputs of its block
    alone = Draws(noise, seed=3, draw_block=16).sample(x[1:2], 5, 30, n)
    assert torch.equal(alone[1], whole[1][1:2, 5:35])


def test_one_draw_block_is_one_sample_call():
    x, noise = _x(), GaussianNoise(0.3)
    got = Draws(noise, seed=5, stream="optimal").sample(x, 0, 40, 40)
    want = noise.sample(x, 40, generator(5, "optimal"), shared=True)
    assert all(torch.equal(a, b) for a, b in zip(got, want, strict=True))


def test_exhaustive_draws_enumerate():
    x, noise = _x(), SquareRemoval(sizes=(1, 2), exhaustive=True)
    got = Draws(noise, seed=0).sample(x, 10, 7, noise.size(x))
    want = noise.sample(x, 7, offset=10, shared=True)
    assert all(torch.equal(a, b) for a, b in zip(got, want, strict=True))


def test_blocks_and_steps_cover_every_item_once():
    for n_in, n, bs in [(5, 3, 8), (5, 30, 8), (1, 100, 1024), (7, 2, 3)]:
        per_block, per_chunk = blocks(n_in, n, bs)
        assert per_block * per_chunk <= bs
        seen = torch.zeros(n_in, n, dtype=torch.long)
        for s in steps(n_in, n, per_block, per_chunk):
            seen[s.inputs, s.offset : s.offset + s.count] += 1
        assert (seen == 1).all()


def test_random_streams():
    assert stream_seed(7) == 7  # the metrics' stream: manual_seed(seed)
    seeds = {stream_seed(7, s, b) for s in (None, "optimal", "smoothing", "metric/0") for b in (0, 1, 2)}
    assert len(seeds) == 12
    a = torch.rand(4, generator=generator(7, "optimal"))
    assert torch.equal(a, torch.rand(4, generator=generator(7, "optimal")))
    with pytest.raises(InvalidInputError, match="seed"):
        generator(True)


def test_one_set_of_baselines():
    x = _x()
    assert torch.equal(make_baseline("zero", x), torch.zeros_like(x))
    assert torch.equal(make_baseline(0.5, x), torch.full_like(x, 0.5))
    assert torch.equal(make_baseline(torch.ones(1, 5, 5), x), torch.ones_like(x))
    assert torch.equal(make_baseline(lambda z: z * 0 + 2, x), torch.full_like(x, 2.0))
    u = make_baseline("uniform", x, torch.Generator().manual_seed(0))
    assert u.shape == x.shape and (u >= 0).all() and (u < 1).all()
    with pytest.raises(InvalidInputError, match="needs a torch.Generator"):
        make_baseline("uniform", x)
    with pytest.raises(InvalidInputError, match="unknown baseline"):
        make_baseline("gaussian", x)
    # the noise distributions take the same values, except the random one
    assert torch.equal(NoisyBaseline(0.1, baseline="zero").baseline_of(x), torch.zeros_like(x))
    with pytest.raises(InvalidInputError, match="'uniform' baseline is not available"):
        SquareRemoval(baseline="uniform")
