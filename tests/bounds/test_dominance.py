"""Forward is dominated by backward on the same relaxations (``propagate.forward_dominated``).

Inside one coupled run every op's forward and backward rules share the relaxations, so the
backward candidate of every node and of the output is never looser than the forward one. The
engine relies on it to skip forward passes where backward runs too; these tests compute both
(``prune_dominated=False``) on random networks of every supported op, every norm, fixed
variables and a domain, in float64, and check the claim node by node and at the output.
"""

from __future__ import annotations

import math

import pytest
import torch

import evax
from bounds.nets import ALL, make
from evax.bounds.api import get_graph
from evax.bounds.propagate import Propagator

TOL = 1e-9


class RecordingPropagator(Propagator):
    """Keeps every node's candidates so the test can compare them."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.seen: dict[int, dict] = {}

    def _candidates(self, i: int):
        cands = super()._candidates(i)
        self.seen[i] = cands
        return cands


def _ball(p: float, seed: int) -> evax.Ball:
    gen = torch.Generator().manual_seed(seed)
    x = torch.rand(3, 2, 6, 6, generator=gen, dtype=torch.float64)
    eps = {math.inf: 0.15, 2: 0.8, 1: 2.0}[p]
    fixed = torch.rand(3, 1, 6, 6, generator=gen) < 0.3
    return evax.Ball(x, eps, p=p, fixed=fixed, domain=(0.0, 1.0) if p == math.inf else None)


@pytest.mark.parametrize("name", ALL)
@pytest.mark.parametrize("p", [math.inf, 2, 1])
def test_backward_candidate_never_looser_than_forward(name, p):
    model = make(name, seed=1).double()
    inset = _ball(p, seed=2)
    graph = get_graph(model, inset.shape, torch.device("cpu"), torch.float64)
    methods = frozenset({"ibp", "forward", "backward"})
    with torch.no_grad():
        full = RecordingPropagator(graph, inset, methods, prune_dominated=False, skip_stable=False)
        lo_full, hi_full = full.run(None)
        pruned = Propagator(graph, inset, methods, skip_stable=False)
        lo, hi = pruned.run(None)
    assert "forward" not in pruned.methods and "forward" in full.methods
    compared = 0
    for cands in full.seen.values():
        if "forward" in cands and "backward" in cands:
            (fl, fu), (bl, bu) = cands["forward"], cands["backward"]
            scale = 1 + max(fl.abs().max().item(), fu.abs().max().item())
            assert (bl >= fl - TOL * scale).all(), "a forward lower bound beat backward's"
            assert (bu <= fu + TOL * scale).all(), "a forward upper bound beat backward's"
            compared += 1
    scale = 1 + hi_full.abs().max().item()
    torch.testing.assert_close(lo, lo_full, rtol=0, atol=TOL * scale)
    torch.testing.assert_close(hi, hi_full, rtol=0, atol=TOL * scale)
    if any(graph.needs_bounds(i) for i in range(1, graph.output)):
        assert compared or all(not c or "backward" not in c for c in full.seen.values())


@pytest.mark.parametrize("name", ["mlp_relu", "conv_maxpool", "residual", "smooth_acts"])
def test_combination_is_coupled_run_intersected_with_forward_alone(name):
    """``ibp+forward+backward`` = the coupled ``ibp+backward`` run, intersected with forward run
    on its own: its own, looser intermediate bounds build other relaxations, which the
    coupled run cannot stand for, so that run is kept."""
    model = make(name, seed=0).double()
    ball = _ball(math.inf, seed=0)
    combo = evax.bound(model, ball, method="ibp+forward+backward")
    coupled = evax.bound(model, ball, method="ibp+backward")
    alone = evax.bound(model, ball, method="forward")
    torch.testing.assert_close(combo.lower, torch.maximum(coupled.lower, alone.lower), rtol=0, atol=0)
    torch.testing.assert_close(combo.upper, torch.minimum(coupled.upper, alone.upper), rtol=0, atol=0)
