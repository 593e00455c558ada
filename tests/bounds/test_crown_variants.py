"""CROWN-IBP and alpha-CROWN: closed references, ordering against CROWN, options and errors."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import evax
from bounds.nets import make
from evax.errors import InvalidInputError


def _mlp(seed: int, widths=(12, 16, 16, 5), slope: float = 0.0) -> nn.Sequential:
    torch.manual_seed(seed)
    layers: list[nn.Module] = [nn.Flatten()]
    for a, b in zip(widths[:-1], widths[1:], strict=True):
        layers += [nn.Linear(a, b), nn.LeakyReLU(slope) if slope else nn.ReLU()]
    return nn.Sequential(*layers[:-1]).eval()


def _margins(net: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Rows f_c' - f_c for every c' != c, c the predicted class: (N, K - 1, K)."""
    with torch.no_grad():
        logits = net(x)
    n, k = logits.shape
    c = logits.argmax(1)
    spec = torch.zeros(n, k - 1, k)
    for i in range(n):
        others = [j for j in range(k) if j != c[i]]
        spec[i, torch.arange(k - 1), others] = 1.0
        spec[i, :, c[i]] = -1.0
    return spec


def textbook_crown_ibp(net: nn.Sequential, lo: torch.Tensor, hi: torch.Tensor, spec: torch.Tensor):
    """CROWN-IBP written from the paper (Zhang et al. 2020), float64: interval bounds for every
    pre-activation, then one backward pass of ``spec`` with CROWN's adaptive ReLU relaxation,
    concretised on the box ``[lo, hi]``. Returns the lower and upper bounds ``(N, K)``."""
    linears = [m for m in net if isinstance(m, nn.Linear)]
    w = [m.weight.detach().double() for m in linears]
    b = [m.bias.detach().double() for m in linears]
    l, u = lo.double().flatten(1), hi.double().flatten(1)
    pre = []
    for i in range(len(w) - 1):
        mid, rad = (l + u) / 2, (u - l) / 2
        zl, zu = mid @ w[i].T + b[i] - rad @ w[i].abs().T, mid @ w[i].T + b[i] + rad @ w[i].abs().T
        pre.append((zl, zu))
        l, u = zl.clamp_min(0), zu.clamp_min(0)

    def lower_of(c: torch.Tensor) -> torch.Tensor:  # c: (N, K, n_out)
        lam = c @ w[-1]
        const = c @ b[-1]
        for i in range(len(w) - 2, -1, -1):
            zl, zu = pre[i]
            unstable = (zl < 0) & (zu > 0)
            chord = torch.where(unstable, zu / (zu - zl).clamp_min(1e-30), (zl >= 0).double())
            upper_b = torch.where(unstable, -zl * chord, torch.zeros_like(zl))
            low_slope = torch.where(unstable, (zu >= -zl).double(), (zl >= 0).double())
            pos, neg = lam.clamp_min(0), lam.clamp_max(0)
            const = const + (neg * upper_b.unsqueeze(1)).sum(-1)
            lam = pos * low_slope.unsqueeze(1) + neg * chord.unsqueeze(1)
            const = const + (lam @ b[i].unsqueeze(-1))[..., 0]
            lam = lam @ w[i]
        mid, rad = ((lo + hi) / 2).double().flatten(1), ((hi - lo) / 2).double().flatten(1)
        return (lam @ mid.unsqueeze(-1))[..., 0] - (lam.abs() @ rad.unsqueeze(-1))[..., 0] + const

    c = spec.double()
    return lower_of(c), -lower_of(-c)


@pytest.mark.parametrize("seed", range(4))
def test_crown_ibp_equals_the_textbook_crown_ibp(seed):
    net = _mlp(seed)
    gen = torch.Generator().manual_seed(seed)
    x = torch.rand(5, 12, generator=gen)
    ball = evax.Ball(x, 0.15)
    spec = _margins(net, x)
    got = evax.bound(net, ball, "crown-ibp", spec=spec)
    ref_lo, ref_hi = textbook_crown_ibp(net, *ball.interval(), spec)
    torch.testing.assert_close(got.lower.double(), ref_lo, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(got.upper.double(), ref_hi, rtol=1e-4, atol=1e-4)


def test_crown_ibp_sits_between_ibp_and_crown_on_average():
    net = _mlp(5)
    x = torch.rand(16, 12, generator=torch.Generator().manual_seed(1))
    ball = evax.Ball(x, 0.1)
    spec = _margins(net, x)
    width = {m: evax.bound(net, ball, m, spec=spec).width.mean().item() for m in ("ibp", "crown-ibp", "backward")}
    assert width["backward"] <= width["crown-ibp"] + 1e-6
    assert width["crown-ibp"] < width["ibp"]


@pytest.mark.parametrize("arch", ["mlp_relu", "leaky_extremes", "conv_maxpool", "residual", "two_linear_branches"])
@pytest.mark.parametrize("norm", [math.inf, 2.0])
def test_alpha_crown_is_never_looser_than_crown(arch, norm):
    net = make(arch, seed=3)
    gen = torch.Generator().manual_seed(7)
    x = torch.rand(6, 2, 6, 6, generator=gen)
    ball = evax.Ball(x, 0.1 if norm == math.inf else 0.6, p=norm, fixed=torch.rand(6, 2, 6, 6, generator=gen) < 0.2)
    spec = _margins(net, x)
    crown = evax.bound(net, ball, "backward", spec=spec)
    alpha = evax.bound(net, ball, "alpha-crown", spec=spec)
    assert (alpha.lower >= crown.lower - 1e-6).all() and (alpha.upper <= crown.upper + 1e-6).all()


def test_alpha_crown_tightens_crown_on_a_relu_net():
    net = _mlp(11, widths=(12, 32, 32, 32, 6))
    x = torch.rand(12, 12, generator=torch.Generator().manual_seed(2))
    ball = evax.Ball(x, 0.25)
    spec = _margins(net, x)
    crown = evax.bound(net, ball, "backward", spec=spec)
    alpha = evax.bound(net, ball, "alpha-crown", spec=spec, alpha_iterations=30)
    gain = (crown.upper - alpha.upper).mean().item()
    assert gain > 1e-3, gain  # the optimisation does something
    zero = evax.bound(net, ball, "alpha-crown", spec=spec, alpha_iterations=0)
    torch.testing.assert_close(zero.upper, crown.upper)  # no step: CROWN's slopes


def test_alpha_intermediate_tightens_the_output():
    """Slopes optimised for every intermediate node's bounds too: tighter relaxations under the
    final pass, so a tighter output than alpha-CROWN on CROWN intermediate bounds (measured on
    this net), and with ``+backward`` never looser than CROWN (guaranteed)."""
    net = _mlp(11, widths=(12, 32, 32, 32, 6))
    x = torch.rand(12, 12, generator=torch.Generator().manual_seed(2))
    ball = evax.Ball(x, 0.25)
    spec = _margins(net, x)
    crown = evax.bound(net, ball, "backward", spec=spec)
    plain = evax.bound(net, ball, "alpha-crown", spec=spec)
    deep = evax.bound(net, ball, "alpha-crown+backward", spec=spec, alpha_intermediate=True)
    assert (deep.upper <= crown.upper + 1e-6).all() and (deep.lower >= crown.lower - 1e-6).all()
    assert (plain.upper - deep.upper).mean().item() > 1e-3


def test_alpha_intermediate_changes_nothing_without_intermediate_crown():
    """One hidden layer: its pre-activations are an affine map of the box (exact), no
    intermediate backward pass exists, so the option gives alpha-CROWN's bound exactly."""
    net = _mlp(4, widths=(12, 24, 5))
    x = torch.rand(5, 12, generator=torch.Generator().manual_seed(1))
    ball = evax.Ball(x, 0.3)
    spec = _margins(net, x)
    plain = evax.bound(net, ball, "alpha-crown", spec=spec)
    deep = evax.bound(net, ball, "alpha-crown", spec=spec, alpha_intermediate=True)
    torch.testing.assert_close(deep.upper, plain.upper, rtol=0, atol=0)
    torch.testing.assert_close(deep.lower, plain.lower, rtol=0, atol=0)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [({"alpha_iterations": -1}, "alpha_iterations"), ({"alpha_iterations": True}, "alpha_iterations"),
     ({"alpha_lr": 0.0}, "alpha_lr"), ({"alpha_lr": float("nan")}, "alpha_lr"),
     ({"alpha_intermediate": 1}, "alpha_intermediate")],
)
def test_bad_alpha_options(kwargs, match):
    net = _mlp(0)
    with pytest.raises(InvalidInputError, match=match):
        evax.bound(net, evax.Ball(torch.rand(2, 12), 0.1), "alpha-crown", **kwargs)


@pytest.mark.parametrize("alias", ["crown_ibp", "CROWN-IBP", "alpha", "alpha_crown", "ibp+alpha-crown"])
def test_method_aliases(alias):
    net = _mlp(0)
    b = evax.bound(net, evax.Ball(torch.rand(2, 12), 0.1), alias)
    assert b.lower.shape == (2, 5)


SIDE_CASES = [
    (arch, method)
    for arch in ("mlp_relu", "conv_maxpool")
    for method in ("ibp", "backward", "crown-ibp", "alpha-crown", "ibp+forward+backward")
] + [("mlp_relu", "exact")]  # MILP: the small net only


@pytest.mark.parametrize(("arch", "method"), SIDE_CASES)
def test_one_side_is_the_same_side_of_both(arch, method):
    """``side="upper"`` / ``"lower"`` give exactly that side of ``side="both"``; the other side
    is infinite, so nobody reads it as a bound."""
    model = make(arch, seed=3)
    x = torch.rand((1 if method == "exact" else 2, 2, 6, 6), generator=torch.Generator().manual_seed(1))
    ball = evax.Ball(x, 0.05, domain=(0, 1))
    spec = _margins(model, x)
    both = evax.bound(model, ball, method, spec)
    upper = evax.bound(model, ball, method, spec, side="upper")
    lower = evax.bound(model, ball, method, spec, side="lower")
    torch.testing.assert_close(upper.upper, both.upper, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(lower.lower, both.lower, rtol=1e-5, atol=1e-5)
    assert (upper.lower == -math.inf).all() and (lower.upper == math.inf).all()
    certified = evax.bound(model, ball, method, spec, side="upper", certify=True)
    assert (certified.upper >= both.upper - 1e-5).all() and (certified.lower == -math.inf).all()


def test_side_must_be_known():
    model = make("mlp_relu", seed=3)
    ball = evax.Ball(torch.rand(1, 2, 6, 6), 0.05)
    with pytest.raises(InvalidInputError, match="side"):
        evax.bound(model, ball, "backward", side="top")


def test_crown_ibp_chunks_are_sized_by_its_output_rows(monkeypatch):
    """CROWN-IBP runs one backward pass from the output rows: the automatic chunk size must
    not budget CROWN's intermediate rows (it bounded a small CNN one image at a time)."""
    from evax.bounds import api

    net = nn.Sequential(nn.Conv2d(1, 16, 3), nn.ReLU(), nn.Conv2d(16, 32, 3, stride=2), nn.ReLU(), nn.Flatten(),
                        nn.Linear(32 * 12 * 12, 50), nn.ReLU(), nn.Linear(50, 10)).eval()
    x = torch.rand(64, 1, 28, 28)
    seen: list[int] = []
    run = api._run_combination

    def recording(graph, inset, *args, **kwargs):
        seen.append(inset.batch_size)
        return run(graph, inset, *args, **kwargs)

    monkeypatch.setattr(api, "_run_combination", recording)
    b = evax.bound(net, evax.Ball(x, 0.01), "crown-ibp")
    assert max(seen) >= 32
    monkeypatch.setattr(api, "_run_combination", run)
    one = evax.bound(net, evax.Ball(x, 0.01), "crown-ibp", batch_size=1)
    torch.testing.assert_close(b.lower, one.lower, rtol=1e-5, atol=1e-5)
