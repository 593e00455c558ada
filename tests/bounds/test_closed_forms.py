"""Bounds that have a closed form: linear nets, a single ReLU, fixed everything, exact MILP."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import evax


def _linear_net(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(12, 7), nn.Linear(7, 5), nn.Linear(5, 3)).eval()


def _affine_map(net):
    """(M, c) with net(x) = M x + c on flattened x."""
    eye = torch.eye(12).view(12, 1, 3, 4)
    with torch.no_grad():
        c = net(torch.zeros(1, 1, 3, 4))[0]
        m = (net(eye) - c).T
    return m.double(), c.double()


@pytest.mark.parametrize("method", ["forward", "backward", "forward+backward", "ibp+backward"])
@pytest.mark.parametrize("norm", [math.inf, 2.0, 1.0])
def test_linear_net_bounds_are_exact(method, norm):
    net = _linear_net()
    gen = torch.Generator().manual_seed(1)
    x = torch.rand((4, 1, 3, 4), generator=gen)
    fixed = torch.rand((4, 1, 3, 4), generator=gen) < 0.3
    ball = evax.Ball(x, 0.3, p=norm, fixed=fixed)
    b = evax.bound(net, ball, method)
    m, c = _affine_map(net)
    xf = x.reshape(4, -1).double()
    free = (~fixed).reshape(4, -1).double()
    centre = xf @ m.T + c
    if norm == math.inf:
        spread = (free * 0.3) @ m.abs().T
    else:
        q = {2.0: 2.0, 1.0: math.inf}[norm]
        spread = 0.3 * torch.linalg.vector_norm(m.unsqueeze(0) * free.unsqueeze(1), ord=q, dim=2)
    torch.testing.assert_close(b.lower.double(), centre - spread, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(b.upper.double(), centre + spread, rtol=1e-5, atol=1e-5)


def test_linear_net_ibp_is_looser_than_exact():
    net = _linear_net()
    ball = evax.Ball(torch.rand(2, 1, 3, 4), 0.3)
    exact = evax.bound(net, ball, "backward")
    ibp = evax.bound(net, ball, "ibp")
    assert (ibp.width >= exact.width - 1e-5).all()
    assert (ibp.width > exact.width + 1e-3).any()


def test_single_relu_neuron():
    torch.manual_seed(3)
    lin = nn.Linear(3, 1)
    net = nn.Sequential(lin, nn.ReLU()).eval()
    x = torch.tensor([[0.2, -0.1, 0.4], [3.0, 2.0, 1.0], [-2.0, -2.0, -2.0]])
    eps = 0.5
    ball = evax.Ball(x, eps)
    with torch.no_grad():
        z = lin(x)[:, 0]
        r = eps * lin.weight.abs().sum()
    lo, hi = z - r, z + r
    # IBP and the combination are exact for one neuron: [relu(l), relu(u)].
    for method in ["ibp", "ibp+backward", "ibp+forward+backward"]:
        b = evax.bound(net, ball, method)
        torch.testing.assert_close(b.lower[:, 0], lo.clamp_min(0), atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(b.upper[:, 0], hi.clamp_min(0), atol=1e-5, rtol=1e-5)
    # CROWN alone: the chord gives the exact maximum; the lower line is 0 or the identity.
    b = evax.bound(net, ball, "backward")
    torch.testing.assert_close(b.upper[:, 0], hi.clamp_min(0), atol=1e-5, rtol=1e-5)
    unstable = (lo < 0) & (hi > 0)
    expected_lower = torch.where(unstable, torch.where(hi >= -lo, lo, torch.zeros_like(lo)), lo.clamp_min(0))
    torch.testing.assert_close(b.lower[:, 0], expected_lower, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("method", ["ibp", "forward", "backward", "ibp+forward+backward"])
def test_everything_fixed_gives_the_point_value(method):
    from bounds.nets import make

    net = make("conv_maxpool", seed=2)
    x = torch.rand(3, 2, 6, 6)
    ball = evax.Ball(x, 0.2, fixed=torch.ones_like(x, dtype=torch.bool))
    b = evax.bound(net, ball, method)
    with torch.no_grad():
        y = net(x)
    torch.testing.assert_close(b.lower, y, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(b.upper, y, atol=1e-5, rtol=1e-5)


def _two_input_net(seed):
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Linear(2, 6), nn.ReLU(), nn.Linear(6, 5), nn.LeakyReLU(0.1), nn.Linear(5, 2)
    ).eval()


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_exact_matches_brute_force_on_two_inputs(seed):
    net = _two_input_net(seed)
    x = torch.tensor([[0.1, -0.2]])
    eps = 0.8
    b = evax.bound(net, evax.Ball(x, eps), "exact")
    # brute force: a dense grid plus the grid's refinement near the optimum
    g = torch.linspace(-eps, eps, 801, dtype=torch.float64)
    pts = torch.stack(torch.meshgrid(g, g, indexing="ij"), -1).reshape(-1, 2) + x.double()
    with torch.no_grad():
        out = net.double()(pts)
    net.float()
    h = 2 * eps / 800
    lip = 1.0
    for layer in net:
        if isinstance(layer, nn.Linear):
            lip *= torch.linalg.matrix_norm(layer.weight.double(), ord=2).item()
    slack = lip * h * math.sqrt(2) / 2 + 1e-6
    assert (b.lower <= out.min(0).values + 1e-6).all() and (b.lower >= out.min(0).values - slack).all()
    assert (b.upper >= out.max(0).values - 1e-6).all() and (b.upper <= out.max(0).values + slack).all()


def test_exact_is_tighter_than_relaxations():
    net = _two_input_net(4)
    ball = evax.Ball(torch.tensor([[0.3, 0.1], [-0.5, 0.2]]), 0.7)
    exact = evax.bound(net, ball, "exact")
    best = evax.bound(net, ball, "ibp+forward+backward")
    assert (exact.lower >= best.lower - 1e-5).all() and (exact.upper <= best.upper + 1e-5).all()


def test_exact_rejects_smooth_layers_and_other_norms():
    net = nn.Sequential(nn.Linear(2, 3), nn.Sigmoid(), nn.Linear(3, 2))
    with pytest.raises(evax.errors.UnsupportedLayerError, match="exact"):
        evax.bound(net, evax.Ball(torch.zeros(1, 2), 0.1), "exact")
    with pytest.raises(evax.errors.InvalidInputError, match="p=inf"):
        evax.bound(_two_input_net(0), evax.Ball(torch.zeros(1, 2), 0.1, p=2), "exact")


@pytest.mark.parametrize("norm", [math.inf, 2.0])
def test_first_layer_bounds_are_the_exact_range(norm):
    """The bounds of the first affine layer equal its exact range over the set: interval
    arithmetic for boxes (the engine skips CROWN there), the dual norm for l2 balls."""
    from evax.bounds.api import get_graph
    from evax.bounds.ops.linear import Linear
    from evax.bounds.propagate import Propagator

    torch.manual_seed(5)
    net = nn.Sequential(nn.Flatten(), nn.Linear(12, 7), nn.ReLU(), nn.Linear(7, 3)).eval()
    gen = torch.Generator().manual_seed(2)
    x = torch.rand((3, 1, 3, 4), generator=gen)
    fixed = torch.rand((3, 1, 3, 4), generator=gen) < 0.3
    domain = (0.0, 1.0) if norm == math.inf else None
    ball = evax.Ball(x, 0.4, p=norm, fixed=fixed, domain=domain)
    graph = get_graph(net, ball.shape, torch.device("cpu"), torch.float32)
    prop = Propagator(graph, ball, frozenset({"backward"}))
    prop.run(None)
    first = next(i for i, node in enumerate(graph.nodes) if isinstance(node.op, Linear))
    lo, hi = prop.best[first]
    w, b = net[1].weight.detach().double(), net[1].bias.detach().double()
    if norm == math.inf:
        box_lo, box_hi = (t.reshape(3, -1).double() for t in ball.interval())
        centre = (box_lo + box_hi) / 2 @ w.T + b
        spread = (box_hi - box_lo) / 2 @ w.abs().T
    else:
        centre = x.reshape(3, -1).double() @ w.T + b
        free = (~fixed).reshape(3, 1, -1).double()
        spread = 0.4 * torch.linalg.vector_norm(w.unsqueeze(0) * free, dim=2)
    torch.testing.assert_close(lo.double(), centre - spread, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(hi.double(), centre + spread, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("method", ["ibp", "backward", "ibp+forward+backward"])
def test_broadcast_centre_gives_the_same_bounds(method):
    """EVA's boxes share one image (a stride-0 ``expand``); the engine computes its products
    once, which must not change any bound."""
    torch.manual_seed(7)
    net = nn.Sequential(nn.Flatten(), nn.Linear(12, 9), nn.ReLU(), nn.Linear(9, 4)).eval()
    image = torch.rand(1, 1, 3, 4)
    fixed = torch.rand(5, 1, 3, 4) < 0.3
    shared = evax.bound(net, evax.Ball(image.expand(5, -1, -1, -1), 0.2, fixed=fixed), method)
    copied = evax.bound(net, evax.Ball(image.expand(5, -1, -1, -1).clone(), 0.2, fixed=fixed), method)
    torch.testing.assert_close(shared.lower, copied.lower, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(shared.upper, copied.upper, rtol=1e-6, atol=1e-6)


class _PoolNet(nn.Module):
    """2 inputs -> 8 hidden -> a 2x2 max pool over a (2, 2, 2) map -> 2 outputs."""

    def __init__(self, seed: int) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.fc, self.head = nn.Linear(2, 8), nn.Linear(2, 2)

    def forward(self, x):
        h = torch.relu(self.fc(x)).view(x.shape[0], 2, 2, 2)
        return self.head(torch.flatten(F.max_pool2d(h, 2), 1))


@pytest.mark.parametrize("seed", [0, 1])
def test_exact_with_max_pooling_matches_brute_force(seed):
    net = _PoolNet(seed).eval()
    x = torch.tensor([[0.2, -0.3]])
    eps = 0.9
    b = evax.bound(net, evax.Ball(x, eps), "exact")
    g = torch.linspace(-eps, eps, 601, dtype=torch.float64)
    pts = torch.stack(torch.meshgrid(g, g, indexing="ij"), -1).reshape(-1, 2) + x.double()
    with torch.no_grad():
        out = net.double()(pts)
    net.float()
    lip = torch.linalg.matrix_norm(net.fc.weight.double(), 2) * torch.linalg.matrix_norm(net.head.weight.double(), 2)
    slack = 2 * lip.item() * (2 * eps / 600) + 1e-6
    assert (b.lower <= out.min(0).values + 1e-6).all() and (b.lower >= out.min(0).values - slack).all()
    assert (b.upper >= out.max(0).values - 1e-6).all() and (b.upper <= out.max(0).values + slack).all()
    relaxed = evax.bound(net, evax.Ball(x, eps), "ibp+forward+backward")
    assert (b.lower >= relaxed.lower - 1e-5).all() and (b.upper <= relaxed.upper + 1e-5).all()
