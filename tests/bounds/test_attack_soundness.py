"""Soundness by attack: a projected-gradient search for the extremes of every output row (and of
every margin f_c' - f_c) never gets past any method's bounds.

Sampling rarely lands near a network's extremes; :mod:`bounds.attack` searches for them (restarts
screened from a pool of sampled points, steepest-ascent steps for the norm, exact projection onto
the ball with its fixed variables, domain and half-ball constraints). One search per ball serves
every method. The self-tests at the end show the attack is exact where the extremes are known
and flags wrong bounds, so a passing grid means something. Seeds come from ``zlib.crc32`` of the
case, so they are the same in every process.
"""

from __future__ import annotations

import copy
import math
import zlib

import pytest
import torch
from torch import nn

import evax
from bounds.attack import _project_l1, attack, project, search
from bounds.nets import ALL, METHOD_OPTIONS, METHODS, make

pytestmark = pytest.mark.usefixtures("one_thread")

TOL = 1e-4  # relative: float32 rounding of the bounds and of the attacked network
FAST = {"restarts": 8, "steps": 40, "candidates": 256}  # the default grid (and the self-tests)
THOROUGH = {"restarts": 16, "steps": 60, "candidates": 1024}  # the slow grid

VARIANTS = {
    math.inf: ["plain", "fixed", "domain", "fixed+domain", "half+", "half-"],
    2.0: ["plain", "fixed", "half+", "half-"],
    1.0: ["plain", "fixed", "half+", "half-"],
}
CASES = [(norm, variant) for norm, variants in VARIANTS.items() for variant in variants]


def _seed(*key) -> int:
    """A seed from the case itself, the same in every process (unlike ``hash``)."""
    return zlib.crc32(repr(key).encode()) % 2**31


def _gen(*key) -> torch.Generator:
    return torch.Generator().manual_seed(_seed(*key))


def _ball(norm: float, variant: str, seed: int, dtype: torch.dtype = torch.float32) -> evax.Ball:
    """Three boxes of shape (2, 6, 6); fixed variables (a whole block in box 1) for "fixed" and
    the half balls, the domain (0, 1) for "domain", per-box radii."""
    gen = torch.Generator().manual_seed(seed)
    center = torch.rand((3, 2, 6, 6), generator=gen, dtype=dtype)
    eps = {math.inf: 0.08, 2.0: 0.4, 1.0: 1.0}[norm] * (0.5 + torch.rand(3, generator=gen, dtype=dtype))
    fixed = None
    if "fixed" in variant or "half" in variant:
        fixed = torch.rand((3, 2, 6, 6), generator=gen) < 0.3
        fixed[1, :, :3] = True
    domain = (0.0, 1.0) if "domain" in variant else None
    sign = {"half+": 1, "half-": -1}.get(variant, 0)
    return evax.Ball(center, eps, p=norm, fixed=fixed, domain=domain, sign=sign)


def _margins(model: nn.Module, ball: evax.Ball) -> torch.Tensor:
    """``(N, n_out - 1, n_out)``: rows ``f_c' - f_c`` for the predicted class ``c`` of each box."""
    with torch.no_grad():
        logits = model(ball.center)
    n, k = logits.shape
    c = logits.argmax(1)
    spec = torch.zeros(n, k - 1, k, dtype=logits.dtype)
    for i in range(n):
        others = [j for j in range(k) if j != c[i]]
        spec[i, torch.arange(k - 1), others] = 1.0
        spec[i, :, c[i]] = -1.0
    return spec


def _rotated(arch: str) -> list[tuple[float, str]]:
    """One variant per norm for ``arch``, rotating with its index so that the default grid
    covers every variant on several architectures."""
    i = ALL.index(arch)
    return [(norm, variants[(i + j) % len(variants)]) for j, (norm, variants) in enumerate(VARIANTS.items())]


FAST_GRID = [(arch, norm, variant) for arch in ALL for norm, variant in _rotated(arch)]
SLOW_GRID = [(a, norm, v) for a in ALL for norm, v in CASES if (norm, v) not in _rotated(a)]


def check_case(arch: str, norm: float, variant: str, options: dict) -> None:
    """Attack every row and every margin of ``arch`` on one ball; no method's bounds are beaten."""
    model = make(arch, seed=ALL.index(arch))
    ball = _ball(norm, variant, _seed(arch, norm, variant))
    for spec in (None, _margins(model, ball)):
        found = search(model, ball, spec, generator=_gen("attack", arch, norm, variant, spec is None), **options)
        for method, kwargs in [(m, {}) for m in METHODS] + METHOD_OPTIONS:
            result = found.against(evax.bound(model, ball, method, spec=spec, **kwargs))
            what = "margins" if spec is not None else "outputs"
            assert result.violation.max() <= TOL, f"{arch} {method} {kwargs} p={norm} {variant} {what}: {result.worst()}"


@pytest.mark.parametrize(("arch", "norm", "variant"), FAST_GRID)
def test_attack_never_beats_the_bounds(arch, norm, variant):
    check_case(arch, norm, variant, FAST)


@pytest.mark.slow
@pytest.mark.parametrize(("arch", "norm", "variant"), SLOW_GRID + FAST_GRID)
def test_attack_never_beats_the_bounds_everywhere(arch, norm, variant):
    check_case(arch, norm, variant, THOROUGH)


def _eva_ball(seed: int) -> evax.Ball:
    """EVA's boxes for two images of shape (2, 6, 6): per image the whole ball (domain (0, 1)),
    then one box per cell of a 3x3 grid with that cell fixed; the conv stem's CROWN bounds of
    each cell box are shared with its image's whole ball outside the cell's reach."""
    gen = _gen("eva", seed)
    images = torch.rand((2, 2, 6, 6), generator=gen)
    cells = (torch.arange(6).view(-1, 1) // 2) * 3 + torch.arange(6).view(1, -1) // 2
    fixed = torch.zeros((10, 1, 6, 6), dtype=torch.bool)
    fixed[1:, 0] = cells == torch.arange(9).view(-1, 1, 1)
    return evax.Ball(images.repeat_interleave(10, dim=0), 0.15, fixed=fixed.repeat(2, 2, 1, 1), domain=(0.0, 1.0))


@pytest.mark.parametrize("arch", [a for a in ALL if a.startswith("conv") or a in {"residual", "smooth_acts"}])
def test_attack_never_beats_the_bounds_of_eva_boxes(arch):
    """The boxes EVA bounds together (most of them equal to their image's whole ball outside one
    cell), with every method: an attack on each margin never gets past them."""
    model = make(arch, seed=ALL.index(arch))
    ball = _eva_ball(ALL.index(arch))
    spec = _margins(model, ball)
    found = search(model, ball, spec, generator=_gen("eva attack", arch), **FAST)
    for method, kwargs in [(m, {}) for m in METHODS] + METHOD_OPTIONS:
        result = found.against(evax.bound(model, ball, method, spec=spec, **kwargs))
        assert result.violation.max() <= TOL, f"{arch} {method} {kwargs} EVA boxes: {result.worst()}"


def check_certified(arch: str, norm: float, variant: str, methods: list[str]) -> None:
    """``certify=True`` bounds (float64 plus a rounding margin) hold *exactly* against an attack
    run in float64, on the outputs and on the margins."""
    model = make(arch, seed=ALL.index(arch))
    ball = _ball(norm, variant, _seed("certify", arch, norm, variant))
    model64, ball64 = copy.deepcopy(model).double(), ball.to(dtype=torch.float64)
    for spec in (None, _margins(model, ball)):
        found = search(model64, ball64, spec, generator=_gen("certify", arch, norm, variant), **FAST)
        for method in methods:
            bounds = evax.bound(model, ball, method, spec=spec, certify=True)
            assert bounds.lower.dtype == torch.float64
            result = found.against(bounds)
            assert result.violation.max() <= 0, f"{arch} {method} p={norm} {variant}: {result.worst()}"


@pytest.mark.parametrize("arch", ALL)
def test_certified_bounds_hold_in_float64(arch):
    norm, variant = CASES[ALL.index(arch) % len(CASES)]
    check_certified(arch, norm, variant, ["ibp+forward+backward"])


@pytest.mark.slow
@pytest.mark.parametrize("arch", ALL)
@pytest.mark.parametrize("norm", list(VARIANTS))
def test_certified_bounds_hold_in_float64_everywhere(arch, norm):
    variants = VARIANTS[norm]
    check_certified(arch, norm, variants[_seed(arch) % len(variants)], METHODS)


# -- the attack itself: exact projections, exact on affine nets, flags wrong bounds ---------------
def _inside(ball: evax.Ball, x: torch.Tensor, rtol: float) -> bool:
    """Whether the points ``x`` (``(..., N, *S)``) satisfy every constraint of ``ball``."""
    n = ball.batch_size
    flat = x.reshape(-1, n, math.prod(ball.shape))
    delta = flat - ball.center.reshape(1, n, -1)
    free = ball.free.reshape(1, n, -1) > 0
    ok = bool((delta[~free.expand_as(delta)] == 0).all())
    if ball.sign:
        ok &= bool((ball.sign * delta >= 0).all())
    if ball.p == math.inf:
        lo, hi = ball.interval()
        return ok and bool(((flat >= lo.reshape(1, n, -1)) & (flat <= hi.reshape(1, n, -1))).all())
    norms = delta.norm(p=ball.p, dim=-1)
    return ok and bool((norms <= ball.eps * (1 + rtol)).all())


@pytest.mark.parametrize(("norm", "variant"), CASES)
def test_projection_is_exact(norm, variant):
    """``p = project(v)`` is feasible, idempotent and satisfies the optimality condition of the
    Euclidean projection onto a convex set, ``max_{y in set} (v - p).(y - p) <= 0``, whose left
    side is computed in closed form by ``Ball.concretize`` (Hölder's inequality)."""
    ball = _ball(norm, variant, _seed("projection", norm, variant), dtype=torch.float64)
    gen = _gen("points", norm, variant)
    noise = torch.randn((64, *ball.center.shape), generator=gen, dtype=torch.float64)
    scale = torch.logspace(-3, 1, 64, dtype=torch.float64).view(-1, 1, 1, 1, 1)  # inside and far out
    radius = ball.eps.view(1, -1, 1, 1, 1) / (1 if norm == math.inf else math.sqrt(noise[0, 0].numel()))
    v = ball.center + scale * radius * noise
    p = project(ball, v)
    assert _inside(ball, p, rtol=1e-12)
    assert torch.allclose(project(ball, p), p, rtol=0, atol=1e-12)
    g = (v - p).flatten(2).transpose(0, 1)  # (N, 64, d): one linear function per point
    sup = -ball.concretize(-g, torch.zeros(g.shape[:2], dtype=g.dtype))  # max_y g.y
    at_p = (g * p.flatten(2).transpose(0, 1)).sum(-1)
    assert (sup - at_p <= 1e-10 * (1 + g.abs().sum(-1))).all()


def test_l1_projection_against_a_direct_solution():
    """Duchi's projection equals ``sign(v) max(|v| - theta, 0)`` with ``theta`` found by bisection."""
    v = torch.randn(50, 7, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    v = v * torch.logspace(-1, 1, 50, dtype=torch.float64).unsqueeze(1)  # inside and outside
    radius = torch.rand(50, 1, generator=torch.Generator().manual_seed(1), dtype=torch.float64) * 4 + 0.1
    lo, hi = torch.zeros_like(radius), v.abs().amax(-1, keepdim=True)
    for _ in range(200):
        mid = (lo + hi) / 2
        too_big = (v.abs() - mid).clamp_min(0).sum(-1, keepdim=True) > radius
        lo, hi = torch.where(too_big, mid, lo), torch.where(too_big, hi, mid)
    inside = v.abs().sum(-1, keepdim=True) <= radius
    expected = torch.where(inside, v, v.sign() * (v.abs() - hi).clamp_min(0))
    assert torch.allclose(_project_l1(v, radius), expected, rtol=0, atol=1e-12)
    assert inside.any() and not inside.all()


def _affine_net(kind: str) -> nn.Module:
    torch.manual_seed(_seed("affine", kind))
    if kind == "mlp":
        return nn.Sequential(nn.Flatten(), nn.Linear(72, 9), nn.Linear(9, 4)).eval()
    net = nn.Sequential(nn.Conv2d(2, 3, 3), nn.BatchNorm2d(3), nn.AvgPool2d(2), nn.Flatten(), nn.Linear(12, 5))
    bn = net[1]
    bn.running_mean.normal_()
    bn.running_var.uniform_(0.5, 1.5)
    bn.weight.data.normal_()
    return net.eval()


def _exact_affine(model: nn.Module, ball: evax.Ball, spec: torch.Tensor | None) -> evax.Bounds:
    """Exact extremes of ``C f`` for an affine ``f(x) = J x + b``: ``J`` from autograd, then the
    closed-form minimum of a linear function over the ball (``Ball.concretize``)."""
    x = ball.center.clone().requires_grad_(True)
    out = model(x)
    jac = torch.stack([torch.autograd.grad(out[:, j].sum(), x, retain_graph=True)[0] for j in range(out.shape[1])])
    jac = jac.flatten(2).transpose(0, 1)  # (N, n_out, d)
    bias = out.detach() - (jac @ ball.center.flatten(1).unsqueeze(-1))[..., 0]
    c = torch.eye(out.shape[1], dtype=out.dtype).expand(ball.batch_size, -1, -1) if spec is None else spec
    coeffs, offset = c @ jac, (c @ bias.unsqueeze(-1))[..., 0]
    return evax.Bounds(ball.concretize(coeffs, offset), -ball.concretize(-coeffs, -offset))


@pytest.mark.parametrize("kind", ["mlp", "conv"])
@pytest.mark.parametrize(("norm", "variant"), CASES)
def test_attack_reaches_the_exact_extremes_of_affine_nets(kind, norm, variant):
    """On affine nets the extremes are known in closed form: the attack (with the options of the
    default grid) gets within 1e-3 of them, and never past them; a bound 0.1 inside is flagged."""
    model = copy.deepcopy(_affine_net(kind)).double()
    ball = _ball(norm, variant, _seed("affine", kind, norm, variant), dtype=torch.float64)
    for spec in (None, _margins(model, ball)):
        exact = _exact_affine(model, ball, spec)
        result = attack(model, ball, exact, spec, generator=_gen("affine", kind, norm, variant), **FAST)
        assert result.violation.min() >= -1e-3, f"attack too weak: {result.violation.min().item():.2e}"
        assert result.violation.max() <= 1e-9, result.worst()
        wrong = evax.Bounds(exact.lower + 0.1, exact.upper - 0.1)
        flagged = result.extremes.against(wrong)
        assert (flagged.below > 0.09 / (1 + wrong.lower.abs())).all()
        assert (flagged.above > 0.09 / (1 + wrong.upper.abs())).all()


@pytest.mark.parametrize(("arch", "variant"), [("pool_first", "fixed+domain"), ("exported_ops", "fixed+domain")])
def test_attack_against_exact_milp_bounds(arch, variant):
    """Nonlinear nets, ground truth by MILP (``method="exact"``): a max-pool net's extremes are
    reached to 1e-3; on a ReLU net (local optima) every row gets within 5 %, most much closer;
    the exact bounds are never beaten and the exact bounds tightened by 0.1 are always flagged."""
    model = make(arch, seed=ALL.index(arch))
    ball = _ball(math.inf, variant, _seed("milp", arch, variant))
    exact = evax.bound(model, ball, "exact")
    result = attack(model, ball, exact, generator=_gen("milp", arch), **FAST)
    assert result.violation.max() <= TOL, result.worst()
    gap = -torch.cat([result.below, result.above])
    assert gap.max() <= (1e-3 if arch == "pool_first" else 0.05), gap.max().item()
    assert gap.mean() <= 5e-3, gap.mean().item()
    flagged = result.extremes.against(evax.Bounds(exact.lower + 0.1, exact.upper - 0.1))
    assert (flagged.below > 0).all() and (flagged.above > 0).all()


@pytest.mark.parametrize("arch", ALL)
def test_attack_beats_sampling(arch):
    """The attack's extremes are at least those of 20 000 sampled points (corners included)."""
    model = make(arch, seed=ALL.index(arch))
    norm, variant = CASES[(3 * ALL.index(arch)) % len(CASES)]
    ball = _ball(norm, variant, _seed("sampling", arch))
    found = search(model, ball, generator=_gen("sampling", arch), **FAST)
    pts = ball.sample(20_000, generator=_gen("samples", arch))
    with torch.no_grad():
        out = model(pts.reshape(-1, *ball.shape)).reshape(pts.shape[0], ball.batch_size, -1)
    assert torch.isfinite(out).all()
    highest, lowest = out.amax(0), out.amin(0)
    tol = 1e-6 * (1 + torch.maximum(highest.abs(), lowest.abs()))
    assert (found.highest >= highest - tol).all(), (found.highest - highest).min()
    assert (found.lowest <= lowest + tol).all(), (lowest - found.lowest).min()


@pytest.mark.parametrize(("norm", "variant"), [(math.inf, "fixed+domain"), (2.0, "half+"), (1.0, "half-")])
def test_attack_points_are_feasible_and_reproducible(norm, variant):
    """The returned points lie in the ball and give the returned values; the same generator seed
    gives the same result."""
    model = make("mlp_mixed", seed=1)
    ball = _ball(norm, variant, _seed("points", norm, variant))
    spec = _margins(model, ball)
    found = search(model, ball, spec, generator=_gen("points", norm, variant), **FAST)
    again = search(model, ball, spec, generator=_gen("points", norm, variant), **FAST)
    assert torch.equal(found.lowest, again.lowest) and torch.equal(found.argmax, again.argmax)
    n, k = found.lowest.shape
    for points, values in ((found.argmin, found.lowest), (found.argmax, found.highest)):
        pts = points.transpose(0, 1)  # (K, N, *S)
        assert _inside(ball, pts, rtol=1e-6)
        with torch.no_grad():
            out = model(pts.reshape(-1, *ball.shape)).reshape(k, n, -1)
        rows = torch.einsum("nko,kno->nk", spec, out)
        assert torch.allclose(rows, values, rtol=1e-5, atol=1e-6)
