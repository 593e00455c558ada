"""A box's bounds do not depend on the boxes it is batched with.

The engine shares work across a batch (rows of neurons unstable in some box, conv-stem roots,
chunks); none of it may change a box's result beyond float rounding. Regression: CROWN bounds
of a neuron stable in one box but unstable in another fed the IBP chain of the first, so an
EVA explanation's AO(x, B) differed from ``evax.bound`` on the image alone (by up to 0.7 on
the certified zoo MLP).
"""

from __future__ import annotations

import pytest
import torch
from tests.bounds.nets import ALL, make

import evax

METHODS = ["ibp", "forward", "backward", "ibp+backward", "crown-ibp", "ibp+forward+backward"]


def _boxes(gen: torch.Generator) -> evax.Ball:
    """Boxes of very different radii (stable in some, unstable in others), two sharing a centre."""
    centre = torch.rand((5, 2, 6, 6), generator=gen)
    centre[1] = centre[0]
    eps = torch.tensor([0.002, 0.05, 0.3, 0.01, 0.15])
    return evax.Ball(centre, eps, domain=(0.0, 1.0))


@pytest.mark.parametrize("arch", ALL)
@pytest.mark.parametrize("method", METHODS)
def test_bounds_of_a_box_equal_its_bounds_alone(arch, method):
    model = make(arch, seed=ALL.index(arch))
    ball = _boxes(torch.Generator().manual_seed(ALL.index(arch)))
    together = evax.bound(model, ball, method)
    for i in range(ball.batch_size):
        alone = evax.bound(model, ball.select(slice(i, i + 1)), method)
        torch.testing.assert_close(together.lower[i : i + 1], alone.lower, rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(together.upper[i : i + 1], alone.upper, rtol=1e-4, atol=1e-4)


def test_eva_ao_equals_the_bound_of_the_image_alone():
    from evax.attribution.eva import margin_spec
    from evax.zoo import default_samples, load_model

    model = load_model("mnist-mlp-cert0.1", progress=False).eval()
    x = default_samples()[0][:6]
    with torch.no_grad():
        y = model(x).argmax(1)
    ao = evax.EVA(model, eps=0.1, groups=evax.groups.grid(4)).explain(x).ao
    for i in range(x.shape[0]):
        alone = evax.bound(model, evax.Ball(x[i : i + 1], 0.1), "ibp+backward", margin_spec(y[i : i + 1], 10), side="upper")
        torch.testing.assert_close(ao[i : i + 1], alone.upper.amax(1), rtol=1e-5, atol=1e-5)
