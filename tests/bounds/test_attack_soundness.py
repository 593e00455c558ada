"""Soundness by attack: a projected-gradient search for the extremes of every output row (and of
every margin f_c' - f_c) never gets past any method's bounds.

Sampling rarely lands near a network's extremes; :mod:`bounds.attack` searches for them (several
restarts, steepest-ascent steps for the norm, exact projection onto the ball with its fixed
variables, domain and half-ball constraints). One search per ball serves every method. Seeds
come from ``zlib.crc32`` of the case, so they are the same in every process.
"""

from __future__ import annotations

import copy
import math
import zlib

import pytest
import torch
from torch import nn

import evax
from bounds.attack import attack, search
from bounds.nets import ALL, METHODS, make

pytestmark = pytest.mark.usefixtures("one_thread")

TOL = 1e-4  # relative, float32 rounding of bounds and of the attacked network


def _seed(*key) -> int:
    return zlib.crc32(repr(key).encode()) % 2**31


def _ball(norm: float, variant: str, seed: int) -> evax.Ball:
    gen = torch.Generator().manual_seed(seed)
    center = torch.rand((3, 2, 6, 6), generator=gen)
    eps = {math.inf: 0.08, 2.0: 0.4, 1.0: 1.0}[norm] * (0.5 + torch.rand(3, generator=gen))
    fixed = None
    if "fixed" in variant or "half" in variant:
        fixed = torch.rand((3, 2, 6, 6), generator=gen) < 0.3
        fixed[1, :, :3] = True
    domain = (0.0, 1.0) if "domain" in variant else None
    sign = {"half+": 1, "half-": -1}.get(variant, 0)
    return evax.Ball(center, eps, p=norm, fixed=fixed, domain=domain, sign=sign)


def _margins(model: nn.Module, ball: evax.Ball) -> torch.Tensor:
    with torch.no_grad():
        logits = model(ball.center)
    n, k = logits.shape
    c = logits.argmax(1)
    spec = torch.zeros(n, k - 1, k)
    for i in range(n):
        others = [j for j in range(k) if j != c[i]]
        spec[i, torch.arange(k - 1), others] = 1.0
        spec[i, :, c[i]] = -1.0
    return spec


def check_case(arch: str, norm: float, variant: str, methods=METHODS, steps: int = 25) -> None:
    model = make(arch, seed=ALL.index(arch))
    ball = _ball(norm, variant, _seed(arch, norm, variant))
    gen = torch.Generator().manual_seed(_seed("attack", arch, norm, variant))
    for spec in (None, _margins(model, ball)):
        found = search(model, ball, spec, restarts=4, steps=steps, generator=gen)
        for method in methods:
            result = found.against(evax.bound(model, ball, method, spec=spec))
            assert result.violation.max() <= TOL, f"{arch} {method} p={norm} {variant}: {result.worst()}"


FAST_CASES = [(math.inf, "fixed+domain"), (2.0, "fixed"), (1.0, "half+")]
SLOW_CASES = [
    (norm, variant)
    for norm in (math.inf, 2.0, 1.0)
    for variant in ("plain", "fixed", "domain", "fixed+domain", "half+", "half-")
    if not (norm != math.inf and "domain" in variant) and (norm, variant) not in FAST_CASES
]


@pytest.mark.parametrize("arch", ALL)
@pytest.mark.parametrize(("norm", "variant"), FAST_CASES)
def test_attack_never_beats_the_bounds(arch, norm, variant):
    check_case(arch, norm, variant)


@pytest.mark.slow
@pytest.mark.parametrize("arch", ALL)
@pytest.mark.parametrize(("norm", "variant"), SLOW_CASES)
def test_attack_never_beats_the_bounds_everywhere(arch, norm, variant):
    check_case(arch, norm, variant, steps=40)


@pytest.mark.parametrize("arch", ["mlp_relu", "residual", "smooth_acts", "clamp_acts", "conv_maxpool"])
def test_certified_bounds_hold_in_float64(arch):
    """certify=True bounds (float64 with a rounding margin) hold against a float64 attack."""
    model = make(arch, seed=1)
    ball = _ball(math.inf, "fixed+domain", _seed("certify", arch))
    bounds = evax.bound(model, ball, "ibp+forward+backward", certify=True)
    model64 = copy.deepcopy(model).double()
    ball64 = ball.to(dtype=torch.float64)
    result = attack(model64, ball64, bounds, restarts=4, steps=30, generator=torch.Generator().manual_seed(0))
    assert result.violation.max() <= 0, result.worst()


# -- the attack itself must be able to fail --------------------------------------------------------
def _linear_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(72, 9), nn.Linear(9, 4)).eval()


@pytest.mark.parametrize(("norm", "variant"), [(math.inf, "fixed+domain"), (2.0, "fixed"), (1.0, "plain"),
                                               (2.0, "half-")])
def test_attack_reaches_exact_bounds_of_a_linear_net(norm, variant):
    """Linear nets: backward bounds are the exact extremes, and the attack gets there."""
    model = _linear_net()
    ball = _ball(norm, variant, 3)
    exact = evax.bound(model, ball, "backward")
    found = search(model, ball, restarts=4, steps=60, generator=torch.Generator().manual_seed(1))
    gap_low = (found.lowest - exact.lower) / (1 + exact.lower.abs())
    gap_high = (exact.upper - found.highest) / (1 + exact.upper.abs())
    assert gap_low.max() <= 1e-3 and gap_high.max() <= 1e-3
    assert gap_low.min() >= -TOL and gap_high.min() >= -TOL  # and never past them


def test_attack_reports_a_wrong_bound():
    model = make("mlp_relu", seed=0)
    ball = _ball(math.inf, "plain", 4)
    b = evax.bound(model, ball, "ibp+forward+backward")
    found = search(model, ball, restarts=4, steps=30, generator=torch.Generator().manual_seed(2))
    true_max = found.highest
    wrong = evax.Bounds(b.lower, true_max - 0.05 * (1 + true_max.abs()))
    assert found.against(wrong).violation.max() > 0.01
