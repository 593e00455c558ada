"""Hardtanh / ReLU6, Softplus, GELU and SiLU: sound and tight relaxations, converters, bounds."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import evax
from evax.bounds.ops import gelu as gelu_mod
from evax.bounds.ops import silu as silu_mod
from evax.bounds.ops.gelu import GELU
from evax.bounds.ops.hardtanh import Hardtanh
from evax.bounds.ops.silu import SiLU
from evax.bounds.ops.softplus import Softplus
from evax.errors import InvalidInputError, UnsupportedLayerError

F64 = torch.float64
DTYPES = [torch.float32, torch.float64]
GRID = 257

# op, its special points (kinks, inflections, minimum, switch), max |f''| (None: piecewise linear)
OPS = {
    "hardtanh": (Hardtanh(-1.0, 1.0), [-1.0, 1.0], None),
    "hardtanh_odd": (Hardtanh(-0.3, 0.7), [-0.3, 0.7], None),
    "relu6": (Hardtanh(0.0, 6.0), [0.0, 6.0], None),
    "softplus": (Softplus(1.0, 20.0), [0.0, 20.0], 0.25),
    "softplus_beta": (Softplus(3.0, 4.0), [0.0, 4.0 / 3.0], 0.75),
    "gelu": (GELU(), [gelu_mod.X_MIN, -math.sqrt(2), math.sqrt(2), 0.0], 2 / math.sqrt(2 * math.pi)),
    "silu": (SiLU(), [silu_mod.X_MIN, -silu_mod.INFLECTION, silu_mod.INFLECTION, 0.0], 0.5),
}


def _intervals(specials: list[float], seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Many float64 intervals: random at several scales, one-signed, tiny, degenerate, huge and
    around each special point."""
    gen = torch.Generator().manual_seed(seed)

    def randn(*shape):
        return torch.randn(*shape, generator=gen, dtype=F64)

    def rand(*shape):
        return torch.rand(*shape, generator=gen, dtype=F64)

    los, his = [], []

    def add(lo, hi):
        lo, hi = torch.minimum(lo, hi), torch.maximum(lo, hi)
        los.append(lo)
        his.append(hi)

    for scale in (0.01, 0.3, 1.0, 3.0, 10.0, 100.0, 1e4):
        e = randn(2, 60) * scale
        add(e[0], e[1])
        add(-e[0].abs(), -e[1].abs())  # all negative
        add(e[0].abs(), e[1].abs())  # all positive
    centre = randn(80) * 3
    add(centre, centre + rand(80) * 1e-7)  # tiny
    add(centre, centre)  # degenerate
    add(centre - rand(80) * 1e-3, centre + rand(80) * 1e-3)  # narrow
    for s in specials:
        for spread in (1e-6, 1e-3, 0.1, 1.0, 5.0, 50.0):
            add(s - rand(20) * spread, s + rand(20) * spread)  # straddling
            add(s + rand(20) * spread * 1e-3, s + rand(20) * spread)  # just right of it
            add(s - rand(20) * spread, s - rand(20) * spread * 1e-3)  # just left of it
        add(torch.full((1,), s), torch.full((1,), s + 1.0))  # starting exactly on it
        add(torch.full((1,), s - 1.0), torch.full((1,), s))
    huge = torch.tensor([[-1e4, 1e4], [-1e4, -1e3], [1e3, 1e4], [-50.0, 50.0], [-800.0, 800.0],
                         [-1e4, -1e4 + 1e-3], [1e4 - 1e-3, 1e4], [-40.0, -38.0], [38.0, 40.0]], dtype=F64)
    add(huge[:, 0], huge[:, 1])
    return torch.cat(los), torch.cat(his)


def _grid(lo: torch.Tensor, hi: torch.Tensor, specials: list[float], dtype) -> torch.Tensor:
    """``(n, G)`` points of each interval (in ``dtype``): a dense grid, the end points and the
    special points clamped into the interval."""
    t = torch.linspace(0, 1, GRID, dtype=F64)
    pts = lo.double().unsqueeze(1) + t * (hi.double() - lo.double()).unsqueeze(1)
    sp = torch.tensor(specials, dtype=F64).expand(lo.shape[0], -1)
    pts = torch.cat([pts, sp], dim=1).to(dtype)
    return torch.minimum(torch.maximum(pts, lo.unsqueeze(1)), hi.unsqueeze(1))


def _relaxed(name: str, dtype):
    op, specials, curv = OPS[name]
    lo64, hi64 = _intervals(specials, seed=len(name))
    lo, hi = lo64.to(dtype), hi64.to(dtype)
    relax = op.relax(lo, hi)
    for t in relax:
        assert t.dtype == dtype and t.shape == lo.shape
        assert torch.isfinite(t).all()
    return op, specials, curv, lo, hi, relax


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", list(OPS))
def test_relaxation_and_interval_contain_f(name, dtype):
    op, specials, _, lo, hi, (a_l, b_l, a_u, b_u) = _relaxed(name, dtype)
    x = _grid(lo, hi, specials, dtype)
    fx = op.evaluate(x).double()  # what the network computes, in its dtype
    xd = x.double()
    low = a_l.double().unsqueeze(1) * xd + b_l.double().unsqueeze(1)
    up = a_u.double().unsqueeze(1) * xd + b_u.double().unsqueeze(1)
    # The lines are evaluated exactly (float64); any excess is float rounding of the check.
    tol = 1e-3 * torch.finfo(dtype).eps * (1 + fx.abs() + (a_u.double().unsqueeze(1) * xd).abs())
    assert (low <= fx + tol).all(), f"{name}: max excess {(low - fx).max().item():.3g} below"
    assert (fx <= up + tol).all(), f"{name}: max excess {(fx - up).max().item():.3g} above"
    i_lo, i_hi = op.interval((lo, hi))
    assert i_lo.dtype == dtype and i_hi.dtype == dtype
    # IBP of a monotone f is [f(l), f(u)]: torch's f itself may round non-monotonically by an
    # ulp (float32 bounds are sound up to float rounding; certify=True covers the last bit)
    r_tol = 2 * torch.finfo(dtype).eps * (1 + fx.abs())
    assert (i_lo.double().unsqueeze(1) <= fx + r_tol).all() and (fx <= i_hi.double().unsqueeze(1) + r_tol).all()


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", list(OPS))
def test_relaxation_gap_is_no_wider_than_the_constant_bounds(name, dtype):
    op, _, curv, lo, hi, (a_l, b_l, a_u, b_u) = _relaxed(name, dtype)
    lo_d, hi_d = lo.double(), hi.double()

    def gap_at(x):
        return (a_u.double() - a_l.double()) * x + (b_u.double() - b_l.double())

    gap = torch.maximum(gap_at(lo_d), gap_at(hi_d))  # linear in x: largest at an end point
    i_lo, i_hi = op.interval((lo, hi))
    trivial = i_hi.double() - i_lo.double()
    eps = torch.finfo(dtype).eps
    scale = 1 + op.evaluate(lo).double().abs() + op.evaluate(hi).double().abs() + lo_d.abs() + hi_d.abs()
    # rounding allowance: each line is widened by up to 16 ulps of the values involved
    assert (gap <= trivial + 40 * eps * scale).all(), name
    if curv is not None:
        # smooth: the gap shrinks like the width squared (chord / midpoint-tangent slope),
        # except across softplus's switch to the identity (a jump of log1p(exp(-threshold)))
        width = hi_d - lo_d
        small = width < 1e-2
        if isinstance(op, Softplus):
            small &= op.beta * hi_d < op.threshold - 1e-3
        bound = curv * width**2 / 4 + 40 * eps * scale
        assert (gap[small] <= bound[small]).all(), name


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", ["hardtanh", "hardtanh_odd", "relu6"])
def test_hardtanh_exact_inside_a_piece_and_crown_slopes_at_one_kink(name, dtype):
    op, _, _, lo, hi, (a_l, b_l, a_u, b_u) = _relaxed(name, dtype)
    a = float(torch.tensor(op.min_val, dtype=dtype))
    b = float(torch.tensor(op.max_val, dtype=dtype))
    piece = (hi <= a) | (lo >= b) | ((lo >= a) & (hi <= b))
    assert piece.sum() > 50 and (~piece).sum() > 50
    assert torch.equal(a_l[piece], a_u[piece]) and torch.equal(b_l[piece], b_u[piece])
    assert set(a_l[piece].unique().tolist()) <= {0.0, 1.0}
    x = _grid(lo, hi, [], dtype)[piece]
    assert torch.equal(a_l[piece].unsqueeze(1) * x + b_l[piece].unsqueeze(1), op.evaluate(x))
    # one kink at min_val: lower line through (a, a) with slope 0 or 1, upper line the chord
    low_kink = (lo < a) & (hi > a) & (hi <= b)
    want = torch.where(hi - a >= a - lo, 1.0, 0.0).to(dtype)
    assert torch.equal(a_l[low_kink], want[low_kink])
    assert torch.equal(b_l[low_kink], torch.where(want[low_kink] == 1, torch.zeros((), dtype=dtype), torch.tensor(a, dtype=dtype)))
    tol = 10 * torch.finfo(dtype).eps * (1 + lo.abs() + hi.abs())
    chord_at_lo = a_u * lo + b_u
    assert ((chord_at_lo - a)[low_kink].abs() <= tol[low_kink]).all()
    # one kink at max_val: upper line through (b, b), lower line the chord
    high_kink = (lo >= a) & (lo < b) & (hi > b)
    want = torch.where(b - lo >= hi - b, 1.0, 0.0).to(dtype)
    assert torch.equal(a_u[high_kink], want[high_kink])
    assert torch.equal(b_u[high_kink], torch.where(want[high_kink] == 1, torch.zeros((), dtype=dtype), torch.tensor(b, dtype=dtype)))
    assert low_kink.sum() > 10 and high_kink.sum() > 10


def _touches(line_a, line_b, lo, hi, f, mask, dtype):
    eps = torch.finfo(dtype).eps
    for x in (lo, hi):
        xd = x.double()
        fx = f(x).double()
        err = (line_a.double() * xd + line_b.double() - fx).abs()
        tol = 40 * eps * (1 + fx.abs() + (line_a.double() * xd).abs() + lo.double().abs() + hi.double().abs())
        assert (err[mask] <= tol[mask]).all()


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", ["softplus", "softplus_beta"])
def test_softplus_chord_touches_both_ends(name, dtype):
    op, _, _, lo, hi, (a_l, b_l, a_u, b_u) = _relaxed(name, dtype)
    mask = (hi - lo > 1e-6) & (op.beta * hi.double() < op.threshold - 1)
    assert mask.sum() > 200
    _touches(a_u, b_u, lo, hi, op.evaluate, mask, dtype)
    # past the switch (beta x > threshold) f(x) = x and the relaxation is exact
    linear = lo * op.beta > op.threshold
    assert linear.sum() > 10
    assert (a_l[linear] == 1).all() and (b_l[linear] == 0).all() and (a_u[linear] == 1).all()
    assert (b_u[linear] == 0).all()


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", ["gelu", "silu"])
def test_smooth_chords_touch_on_convex_and_concave_parts(name, dtype):
    op, _, _, lo, hi, (a_l, b_l, a_u, b_u) = _relaxed(name, dtype)
    c = op.inflection
    wide = hi - lo > 1e-3
    convex = wide & (lo > -c) & (hi < c)
    concave = wide & ((hi < -c) | (lo > c)) & (hi.abs() < 30) & (lo.abs() < 30)
    assert convex.sum() > 50 and concave.sum() > 50
    _touches(a_u, b_u, lo, hi, op.evaluate, convex, dtype)  # chord above
    _touches(a_l, b_l, lo, hi, op.evaluate, concave, dtype)  # chord below


def test_constants_to_double_precision():
    def gelu_d(x):
        return 0.5 * math.erfc(-x / math.sqrt(2)) + x * math.exp(-x * x / 2) / math.sqrt(2 * math.pi)

    x = gelu_mod.X_MIN
    assert gelu_d(math.nextafter(x, -math.inf)) <= 0 <= gelu_d(math.nextafter(x, math.inf))
    assert abs(x + 0.7517915246935645) < 1e-15
    s = silu_mod
    assert abs(1 + s.X_MIN * (1 - 1 / (1 + math.exp(-s.X_MIN)))) < 1e-15
    assert abs(2 - s.INFLECTION * math.tanh(s.INFLECTION / 2)) < 1e-15
    assert abs(s.X_MIN + 1.27846) < 1e-5 and abs(s.INFLECTION - 2.39936) < 1e-5


# -- converters ------------------------------------------------------------------------------------
class Wrap(nn.Module):
    """``fc2(act(fc1(x)))`` with ``act`` a module or a function."""

    def __init__(self, act, seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.fc1 = nn.Linear(6, 8)
        self.fc2 = nn.Linear(8, 3)
        self.act = act if isinstance(act, nn.Module) else None
        self.fn = None if isinstance(act, nn.Module) else act

    def forward(self, x):
        h = self.fc1(x) * 3.0
        h = self.act(h) if self.act is not None else self.fn(h)
        return self.fc2(h)


def _hardtanh_inplace(h):
    return F.hardtanh_(h + 0.0, -0.5, 0.8)


FORMS = {
    "hardtanh": [nn.Hardtanh(-0.5, 0.8), lambda h: F.hardtanh(h, -0.5, 0.8),
                 lambda h: F.hardtanh(h, min_val=-0.5, max_val=0.8), _hardtanh_inplace],
    "relu6": [nn.ReLU6(), lambda h: F.relu6(h), lambda h: F.hardtanh(h, 0.0, 6.0),
              nn.Hardtanh(0.0, 6.0), lambda h: F.relu6(h, inplace=True)],
    "softplus": [nn.Softplus(2.0, 3.0), lambda h: F.softplus(h, 2.0, 3.0),
                 lambda h: F.softplus(h, beta=2.0, threshold=3.0)],
    "softplus_default": [nn.Softplus(), F.softplus],
    "gelu": [nn.GELU(), F.gelu, lambda h: F.gelu(h, approximate="none")],
    "silu": [nn.SiLU(), F.silu, nn.SiLU(inplace=True), lambda h: F.silu(h, inplace=True)],
}


@pytest.mark.parametrize("name", list(FORMS))
def test_modules_and_functions_give_the_same_bounds(name):
    x = torch.rand(3, 6, generator=torch.Generator().manual_seed(0))
    ball = evax.Ball(x, 0.3)
    ref = None
    for act in FORMS[name]:
        net = Wrap(act).eval()
        b = evax.bound(net, ball, "ibp+forward+backward")
        if ref is None:
            ref = b
        else:
            torch.testing.assert_close(b.lower, ref.lower, rtol=1e-6, atol=1e-6)
            torch.testing.assert_close(b.upper, ref.upper, rtol=1e-6, atol=1e-6)


def _moved_hardtanh():
    m = nn.Hardtanh(-1.0, 1.0)
    m.min_val = 2.0
    return m


def _inf_hardtanh():
    m = nn.Hardtanh(-1.0, 1.0)
    m.max_val = math.inf
    return m


BAD = [
    (nn.GELU(approximate="tanh"), "approximate"),
    (lambda h: F.gelu(h, approximate="tanh"), "approximate"),
    (nn.Softplus(beta=0.0), "beta"),
    (nn.Softplus(beta=-1.0), "beta"),
    (lambda h: F.softplus(h, beta=-2.0), "beta"),
    (lambda h: F.softplus(h, 0.0), "beta"),
    (nn.Softplus(threshold=100.0), "threshold"),
    (lambda h: F.hardtanh(h, 1.0, 1.0), "min_val"),
    (lambda h: F.hardtanh(h, 2.0, 1.0), "min_val"),
    (lambda h: F.hardtanh(h, -math.inf, 1.0), "min_val"),
    (lambda h: F.hardtanh(h, -1.0, math.nan), "max_val"),
    (_moved_hardtanh(), "min_val"),
    (_inf_hardtanh(), "max_val"),
]


@pytest.mark.parametrize(("act", "arg"), BAD)
def test_bad_arguments_are_refused(act, arg):
    net = Wrap(act).eval()
    # refused by the converter, or by torch itself while the model is traced (min_val > max_val)
    with pytest.raises((UnsupportedLayerError, InvalidInputError), match=arg):
        evax.bound(net, evax.Ball(torch.zeros(2, 6), 0.1), "ibp")


# -- the engine on small networks ------------------------------------------------------------------
ACTS = {
    "hardtanh": lambda: nn.Hardtanh(-0.3, 0.4),
    "relu6": lambda: nn.Sequential(nn.Hardtanh(-5.0, 5.0), nn.ReLU6()),  # after a x10 scale below
    "softplus": lambda: nn.Softplus(2.0, 1.5),  # a low threshold: the switch is reached
    "gelu": nn.GELU,
    "silu": nn.SiLU,
}
SCALE = {"relu6": 10.0}


class Scale(nn.Module):
    def __init__(self, s: float) -> None:
        super().__init__()
        self.s = s

    def forward(self, x):
        return x * self.s


def _mlp(act: str, seed: int) -> nn.Module:
    torch.manual_seed(seed)
    s = SCALE.get(act, 1.0)
    return nn.Sequential(
        nn.Flatten(), nn.Linear(2 * 6 * 6, 16), Scale(s), ACTS[act](), nn.Linear(16, 12), Scale(s),
        ACTS[act](), nn.Linear(12, 4),
    ).eval()


def _conv(act: str, seed: int) -> nn.Module:
    torch.manual_seed(seed)
    s = SCALE.get(act, 1.0)
    return nn.Sequential(
        nn.Conv2d(2, 4, 3, padding=1), Scale(s), ACTS[act](), nn.Conv2d(4, 4, 3, stride=2), Scale(s),
        ACTS[act](), nn.Flatten(), nn.Linear(4 * 2 * 2, 5),
    ).eval()


METHODS = ["ibp", "forward", "backward", "ibp+forward+backward"]


@pytest.mark.parametrize("arch", ["mlp", "conv"])
@pytest.mark.parametrize("act", list(ACTS))
def test_sampled_outputs_inside_bounds(act, arch):
    seed = list(ACTS).index(act)
    net = (_mlp if arch == "mlp" else _conv)(act, seed)
    gen = torch.Generator().manual_seed(10 + seed)
    x = torch.rand(2, 2, 6, 6, generator=gen)
    ball = evax.Ball(x, torch.tensor([0.05, 0.3]))
    pts = ball.sample(2000, generator=gen)
    with torch.no_grad():
        out = net(pts.reshape(-1, 2, 6, 6)).reshape(2000, 2, -1)
    widths = {}
    for method in METHODS:
        b = evax.bound(net, ball, method)
        assert torch.isfinite(b.lower).all() and torch.isfinite(b.upper).all()
        tol = 1e-5 * (1 + out.abs())
        assert (out >= b.lower - tol).all(), method
        assert (out <= b.upper + tol).all(), method
        widths[method] = (b.upper - b.lower).mean().item()
    # the combination is never looser than a member
    assert widths["ibp+forward+backward"] <= min(widths[m] for m in METHODS[:3]) + 1e-5


def _two_input_net(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    net = nn.Sequential(
        nn.Linear(2, 6), nn.Hardtanh(-0.4, 0.5), nn.Linear(6, 5), nn.ReLU6(), nn.Linear(5, 2)
    ).eval()
    with torch.no_grad():  # pre-activations of the ReLU6 reach both of its kinks
        net[2].weight.mul_(12.0)
        net[2].bias.copy_(torch.tensor([3.0, -1.0, 6.0, 0.5, 2.0]))
    return net


@pytest.mark.parametrize("seed", [0, 1])
def test_exact_matches_brute_force_on_two_inputs(seed):
    net = _two_input_net(seed)
    x = torch.tensor([[0.1, -0.2]])
    eps = 0.8
    b = evax.bound(net, evax.Ball(x, eps), "exact")
    g = torch.linspace(-eps, eps, 801, dtype=F64)
    pts = torch.stack(torch.meshgrid(g, g, indexing="ij"), -1).reshape(-1, 2) + x.double()
    with torch.no_grad():
        out = net.double()(pts)
        pre = net[:3](pts)
    net.float()
    assert (pre > 6).any() and ((pre > 0) & (pre < 6)).any()  # both ReLU6 kinks are crossed
    h = 2 * eps / 800
    lip = 1.0
    for layer in net:
        if isinstance(layer, nn.Linear):
            lip *= torch.linalg.matrix_norm(layer.weight.double(), ord=2).item()
    slack = lip * h * math.sqrt(2) / 2 + 1e-6
    assert (b.lower <= out.min(0).values + 1e-6).all() and (b.lower >= out.min(0).values - slack).all()
    assert (b.upper >= out.max(0).values - 1e-6).all() and (b.upper <= out.max(0).values + slack).all()
    best = evax.bound(net, evax.Ball(x, eps), "ibp+forward+backward")
    assert (b.lower >= best.lower - 1e-5).all() and (b.upper <= best.upper + 1e-5).all()


def test_exact_refuses_smooth_activations():
    for act in (nn.GELU(), nn.SiLU(), nn.Softplus()):
        net = nn.Sequential(nn.Linear(2, 3), act, nn.Linear(3, 2)).eval()
        with pytest.raises(UnsupportedLayerError, match="exact"):
            evax.bound(net, evax.Ball(torch.zeros(1, 2), 0.1), "exact")


def test_relu_relaxation_equals_the_leaky_rule_at_slope_zero():
    """ReLU's specialised relaxation: the same lines as LeakyReLU's rule with slope 0, bitwise,
    except at l = u = 0 (where it must still be exact: every line through the origin is)."""
    from evax.bounds.ops.activation import leaky_relax, relu_relax

    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(2, 20000, generator=g, dtype=torch.float64)
    a[:100], b[50:150] = 0.0, 0.0
    a[200:300], b[200:300] = -b[200:300].abs(), b[200:300].abs()  # ties u = -l
    lower, upper = torch.minimum(a, b), torch.maximum(a, b)
    fast, ref = relu_relax(lower, upper), leaky_relax(lower, upper, 0.0)
    degenerate = (lower == 0) & (upper == 0)
    assert bool(degenerate.any()) and bool((~degenerate).any())
    for x, y in zip(fast, ref, strict=True):
        assert torch.equal(x[~degenerate], y[~degenerate])
    a_l, b_l, a_u, b_u = (t[degenerate] for t in fast)
    assert bool((b_l == 0).all() and (b_u == 0).all())  # lines through the origin: exact at x = 0
