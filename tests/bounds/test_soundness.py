"""Soundness fuzzing: sampled outputs (corners included) always lie inside the bounds."""

from __future__ import annotations

import math
import zlib

import pytest
import torch

import evax
from bounds.nets import ALL, METHOD_OPTIONS, METHODS, make

N_POINTS = 10_000


def _random_ball(norm: float, variant: str, seed: int) -> evax.Ball:
    gen = torch.Generator().manual_seed(seed)
    center = torch.rand((3, 2, 6, 6), generator=gen)
    eps = {math.inf: 0.08, 2.0: 0.4, 1.0: 1.0}[norm]
    eps_t = eps * (0.5 + torch.rand(3, generator=gen))
    fixed = None
    if variant in {"fixed", "fixed+domain"}:
        fixed = torch.rand((3, 2, 6, 6), generator=gen) < 0.3
        fixed[1, :, :3] = True  # a whole block of pixels, as in EVA's B_u
    domain = (0.0, 1.0) if variant in {"domain", "fixed+domain"} else None
    sign = {"half+": 1, "half-": -1}.get(variant, 0)
    if sign:
        fixed = torch.rand((3, 2, 6, 6), generator=gen) < 0.3
    return evax.Ball(center, eps_t, p=norm, fixed=fixed, domain=domain, sign=sign)


def assert_sound(model, ball, methods, n=N_POINTS, seed=0):
    gen = torch.Generator().manual_seed(seed)
    pts = ball.sample(n // ball.batch_size + 1, generator=gen)
    with torch.no_grad():
        out = model(pts.reshape(-1, *ball.shape)).reshape(pts.shape[0], ball.batch_size, -1)
    for method in methods:
        method, kwargs = method if isinstance(method, tuple) else (method, {})
        b = evax.bound(model, ball, method, **kwargs)
        tol = 1e-4 * (1 + out.abs())
        assert (b.lower <= b.upper).all(), method
        below = (out < b.lower - tol).sum().item()
        above = (out > b.upper + tol).sum().item()
        assert below == 0 and above == 0, f"{method}: {below} below / {above} above the bounds"


CASES = [
    (norm, variant)
    for norm in (math.inf, 2.0, 1.0)
    for variant in ("plain", "fixed", "domain", "fixed+domain", "half+", "half-")
    if not (norm != math.inf and "domain" in variant)
]


@pytest.mark.parametrize("arch", ALL)
@pytest.mark.parametrize(("norm", "variant"), CASES)
def test_sampled_outputs_inside_bounds(arch, norm, variant):
    model = make(arch, seed=ALL.index(arch))
    ball = _random_ball(norm, variant, seed=zlib.crc32(repr((arch, norm, variant)).encode()) % 1000)
    assert_sound(model, ball, METHODS + METHOD_OPTIONS)


@pytest.mark.parametrize("arch", ALL)
def test_spec_margins_inside_bounds(arch):
    model = make(arch, seed=7)
    ball = _random_ball(math.inf, "fixed+domain", seed=3)
    n_out = model(ball.center).shape[1]
    c = model(ball.center).argmax(1)
    spec = torch.zeros(3, n_out - 1, n_out)
    for i in range(3):
        others = [k for k in range(n_out) if k != c[i]]
        spec[i, torch.arange(n_out - 1), others] = 1.0
        spec[i, :, c[i]] = -1.0
    pts = ball.sample(4000, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        out = model(pts.reshape(-1, *ball.shape)).reshape(4000, 3, n_out)
    margins = torch.einsum("bkn,sbn->sbk", spec, out)
    for method, kwargs in [(m, {}) for m in METHODS] + METHOD_OPTIONS:
        b = evax.bound(model, ball, method, spec=spec, **kwargs)
        tol = 1e-4 * (1 + margins.abs())
        assert ((margins >= b.lower - tol) & (margins <= b.upper + tol)).all(), method


def test_certify_mode_is_sound_and_float64():
    model = make("mlp_mixed", seed=1)
    ball = _random_ball(math.inf, "fixed", seed=5)
    b = evax.bound(model, ball, "ibp+forward+backward", certify=True)
    assert b.lower.dtype == torch.float64
    pts = ball.sample(2000, generator=torch.Generator().manual_seed(0)).double()
    with torch.no_grad():
        out = model.double()(pts.reshape(-1, *ball.shape)).reshape(2000, 3, -1)
    model.float()
    assert ((out >= b.lower) & (out <= b.upper)).all()
