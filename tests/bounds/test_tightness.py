"""Tightness ordering: CROWN beats IBP on ReLU nets; a combination never loses to a member."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from torch import nn

import evax
from bounds.nets import ALL, make


def _relu_net(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Flatten(), nn.Linear(50, 40), nn.ReLU(), nn.Linear(40, 30), nn.ReLU(), nn.Linear(30, 10)
    ).eval()


@pytest.mark.parametrize("seed", range(5))
def test_backward_tighter_than_ibp_on_average(seed):
    net = _relu_net(seed)
    ball = evax.Ball(torch.rand(8, 50), 0.05)
    ibp = evax.bound(net, ball, "ibp").width.mean()
    crown = evax.bound(net, ball, "backward").width.mean()
    assert crown <= ibp


@pytest.mark.parametrize("arch", ALL)
@pytest.mark.parametrize("norm", [math.inf, 2.0])
def test_combination_never_looser_than_members(arch, norm):
    net = make(arch, seed=11)
    gen = torch.Generator().manual_seed(4)
    x = torch.rand(4, 2, 6, 6, generator=gen)
    fixed = torch.rand(4, 2, 6, 6, generator=gen) < 0.2
    ball = evax.Ball(x, 0.1 if norm == math.inf else 0.5, p=norm, fixed=fixed)
    members = ["ibp", "forward", "backward"]
    single = {m: evax.bound(net, ball, m) for m in members}
    for r in (2, 3):
        for combo in itertools.combinations(members, r):
            b = evax.bound(net, ball, "+".join(combo))
            for m in combo:
                tol = 1e-5 * (1 + single[m].lower.abs())
                assert (b.lower >= single[m].lower - tol).all(), (combo, m)
                assert (b.upper <= single[m].upper + tol).all(), (combo, m)


def test_spec_is_tighter_than_subtracting_intervals():
    net = _relu_net(0)
    x = torch.rand(4, 50)
    ball = evax.Ball(x, 0.05)
    c = net(x).argmax(1)
    spec = torch.zeros(4, 9, 10)
    for i in range(4):
        others = [k for k in range(10) if k != c[i]]
        spec[i, torch.arange(9), others] = 1.0
        spec[i, :, c[i]] = -1.0
    direct = evax.bound(net, ball, "backward", spec=spec)
    plain = evax.bound(net, ball, "backward")
    sub_upper = torch.stack(
        [plain.upper[i, [k for k in range(10) if k != c[i]]] - plain.lower[i, c[i]] for i in range(4)]
    )
    assert (direct.upper <= sub_upper + 1e-5).all()
    assert (direct.upper < sub_upper - 1e-3).any()


def test_stable_neuron_skipping_matches_full_crown():
    """Skipping ReLU-stable neurons is an optimisation only: results equal full CROWN."""
    from evax.bounds import propagate

    net = _relu_net(2)
    ball = evax.Ball(torch.rand(6, 50), 0.03)
    fast = evax.bound(net, ball, "backward")
    original = propagate.Propagator._backward_node

    def full(self, i, ref):
        g = self.graph
        users = [g.nodes[u].op for u in g.nodes[i].users]
        saved = [type(u) for u in users]
        try:
            for u in users:  # pretend the users are not ReLUs: every row is recomputed
                u.__class__ = type("NotReLU", (type(u),), {})
            return original(self, i, ref)
        finally:
            for u, cls in zip(users, saved, strict=True):
                u.__class__ = cls

    propagate.Propagator._backward_node = full
    try:
        evax.bounds.api._CACHE.clear()
        slow = evax.bound(net, ball, "backward")
    finally:
        propagate.Propagator._backward_node = original
    torch.testing.assert_close(fast.lower, slow.lower, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(fast.upper, slow.upper, rtol=1e-5, atol=1e-5)
