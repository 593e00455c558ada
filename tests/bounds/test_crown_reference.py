"""evax's CROWN against an independent textbook implementation (benchmarks/crown_reference.py):
dense multipliers, lower and upper bounds back-substituted separately, input coefficients
materialised. Same relaxation and, like evax, intermediate bounds intersected with interval
arithmetic (neurons it proves stable in a box keep its bounds there), so the bounds must agree;
the plain textbook version is never tighter here."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

import evax

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _dense_crown():
    # crown_reference imports its sibling ``bounds``: a name tests/bounds also answers to.
    saved = sys.modules.get("bounds")
    sys.modules["bounds"] = _load("bounds")
    try:
        return _load("crown_reference").dense_crown
    finally:
        if saved is None:
            del sys.modules["bounds"]
        else:
            sys.modules["bounds"] = saved


@pytest.mark.parametrize("domain", [None, (0.0, 1.0)])
def test_backward_equals_textbook_crown_on_many_boxes(domain):
    torch.manual_seed(11)
    widths = [20, 16, 12, 8, 4]
    layers: list[nn.Module] = [nn.Flatten()]
    for a, b in zip(widths[:-1], widths[1:], strict=True):
        layers += [nn.Linear(a, b), nn.ReLU()]
    model = nn.Sequential(*layers[:-1]).eval()
    gen = torch.Generator().manual_seed(3)
    n = 37  # several blocks of boxes in every back-substitution
    image = torch.rand(1, 1, 4, 5, generator=gen)
    fixed = torch.rand(n, 1, 4, 5, generator=gen) < 0.2
    ball = evax.Ball(image.expand(n, -1, -1, -1), 0.3, fixed=fixed, domain=domain)
    ours = evax.bound(model, ball, "backward")
    lo, hi = ball.interval()
    with torch.no_grad():
        centre, radius = ((lo + hi) / 2).reshape(n, -1), ((hi - lo) / 2).reshape(n, -1)
        ref_lo, ref_hi = _dense_crown()(model, centre, radius, with_ibp=True, keep_stable=True)
        plain_lo, plain_hi = _dense_crown()(model, centre, radius)
    width = (ref_hi - ref_lo).abs().max()
    assert width > 0.1  # a ball wide enough for unstable neurons on every layer
    torch.testing.assert_close(ours.lower, ref_lo, rtol=1e-5, atol=1e-5 * float(width))
    torch.testing.assert_close(ours.upper, ref_hi, rtol=1e-5, atol=1e-5 * float(width))
    assert (ours.lower >= plain_lo - 1e-5).all() and (ours.upper <= plain_hi + 1e-5).all()
    assert ((ours.lower > plain_lo + 1e-4) | (ours.upper < plain_hi - 1e-4)).any()  # IBP helped
