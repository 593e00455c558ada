"""Backward passes of boxes near a root box, as differences on windows (:mod:`evax.bounds.delta_backward`).

The rows of a dense layer after a convolutional stem start with the same multipliers in every
box; a box that differs from its root (EVA: the whole ball) on one cell runs only the
difference to the root's pass, on a window. Every test compares with the dense pass of the
same rows, neuron by neuron, in float64.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

import evax
from bounds.test_local_forms import PixelScale, _eva_boxes
from bounds.test_soundness import assert_sound
from evax.bounds.api import get_graph
from evax.bounds.delta_backward import plan_delta, split_path
from evax.bounds.propagate import Propagator, box_roots


def _net(kind: str, seed: int) -> nn.Module:
    """3x12x12 nets with a convolutional stem, something entering a dense hidden layer, a head."""
    torch.manual_seed(seed)
    if kind == "pool":  # the EVA paper's CIFAR-10 layout
        body = [nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(), nn.Conv2d(6, 5, 3), nn.ReLU(), nn.MaxPool2d(2),
                nn.Flatten(), nn.Linear(5 * 5 * 5, 7)]
    elif kind == "padded-pool":  # overlapping, padded pooling windows
        body = [nn.Conv2d(3, 4, 3), nn.ReLU(), nn.MaxPool2d(3, stride=2, padding=1), nn.Flatten(),
                nn.Linear(4 * 5 * 5, 7)]
    elif kind == "flatten":  # no pooling: the stem's top is flattened into the dense layer
        body = [nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.LeakyReLU(0.2), nn.Conv2d(4, 4, 3),
                nn.Tanh(), nn.Flatten(), nn.Linear(4 * 10 * 10, 7)]
    else:  # a smooth stem with a dilated, grouped convolution
        body = [nn.Conv2d(3, 4, 3, padding=2, dilation=2, groups=1), nn.Sigmoid(), nn.Conv2d(4, 4, 2, groups=2),
                nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(4 * 5 * 5, 7)]
    net = nn.Sequential(PixelScale((3, 12, 12)), *body, nn.ReLU(), nn.Linear(7, 4))
    for m in net.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.3, 0.3)
            m.running_var.uniform_(0.5, 1.5)
    return net.double().eval()


KINDS = ["pool", "padded-pool", "flatten", "smooth"]


def _boxes(seed: int, eps: float = 0.15) -> evax.Ball:
    gen = torch.Generator().manual_seed(seed)
    return _eva_boxes(torch.rand((2, 3, 12, 12), generator=gen, dtype=torch.float64), n_side=4, eps=eps)


def _hidden(graph) -> int:
    """The dense hidden layer: the node that feeds the last ReLU."""
    return max(i for i, node in enumerate(graph.nodes) if i and node.op.as_matrix() is not None and
               any(graph.nodes[u].op.kink_at_zero for u in node.users))


@pytest.mark.parametrize("kind", KINDS)
def test_differences_on_windows_equal_the_dense_pass(kind):
    model = _net(kind, seed=KINDS.index(kind))
    inset = _boxes(seed=1)
    graph = get_graph(model, inset.shape, torch.device("cpu"), torch.float64)
    prop = Propagator(graph, inset, frozenset({"backward"}))
    prop.run(None)
    i = _hidden(graph)
    rows = torch.arange(graph.nodes[i].numel)
    lower, upper, done = _delta_then_dense(prop, i, rows)
    # On a 12 x 12 image a central cell's differences cover more than half of the map: those
    # boxes go dense. Both roots and the boxes of border cells go by differences.
    assert done[[0, 17]].all() and done.float().mean() > 0.5
    dense_lo, dense_hi = prop._backward_rows(i, rows)
    torch.testing.assert_close(lower, dense_lo, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(upper, dense_hi, rtol=1e-9, atol=1e-9)


def _delta_then_dense(prop: Propagator, i: int, rows: torch.Tensor):
    """The rows' raw CROWN bounds (not intersected with anything) as the engine computes them:
    differences where they apply, dense passes for the other boxes."""
    n = prop.inset.batch_size
    lower = torch.full((n, rows.numel()), -torch.inf, dtype=torch.float64)
    upper = torch.full_like(lower, torch.inf)
    done = prop._backward_delta(i, rows, lower, upper)
    assert done is not None
    prop._backward_dense(i, rows, (~done).nonzero()[:, 0], lower, upper, False)
    return lower, upper, done


@pytest.mark.parametrize("kind", KINDS)
def test_bounds_with_and_without_delta_passes_agree(kind):
    model = _net(kind, seed=10 + KINDS.index(kind))
    inset = _boxes(seed=2, eps=0.05)
    graph = get_graph(model, inset.shape, torch.device("cpu"), torch.float64)
    a = Propagator(graph, inset, frozenset({"backward"})).run(None)
    b = Propagator(graph, inset, frozenset({"backward"}), delta_passes=False).run(None)
    torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9)


def test_plan_windows_are_local_and_far_boxes_go_dense():
    """The windows are a fraction of the map; a box that differs from its root on most pixels
    is left to the dense pass (and still gets the dense pass's bounds)."""
    model = _net("pool", seed=0)
    inset = _boxes(seed=3)
    centre = inset.center.clone()
    centre[5] = torch.rand(centre[5].shape, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    far = evax.Ball(centre, inset.eps, fixed=inset.fixed, domain=(0.0, 1.0))
    graph = get_graph(model, far.shape, torch.device("cpu"), torch.float64)
    prop = Propagator(graph, far, frozenset({"backward"}))
    prop.run(None)
    i = _hidden(graph)
    start = graph.nodes[i].inputs[0]
    ref = far.reference()
    root, _ = box_roots(ref, prop._box_radius.reshape(ref.shape))
    # Box 5 (another image) starts a group of its own, and box 6 a new one (the rest of the first
    # image): box 5 has no box near it, so it is neither a root of the plan nor one of its boxes.
    assert root[:8].tolist() == [0, 0, 0, 0, 0, 5, 6, 6]
    plan = plan_delta(graph, start, prop.relax, root, ref, prop._box_radius.reshape(ref.shape))
    _, h, w = graph.nodes[plan.stem[0]].shape
    assert plan.window[0] * plan.window[1] < h * w
    assert 5 not in plan.boxes.tolist() + plan.roots.tolist() and {0, 17} <= set(plan.roots.tolist())
    rows = torch.arange(graph.nodes[i].numel)
    lower, upper, done = _delta_then_dense(prop, i, rows)
    assert not done[5]
    dense_lo, dense_hi = prop._backward_rows(i, rows)
    torch.testing.assert_close(lower, dense_lo, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(upper, dense_hi, rtol=1e-9, atol=1e-9)


def test_no_plan_without_a_stem_or_shared_roots():
    mlp = nn.Sequential(nn.Flatten(), nn.Linear(12, 8), nn.ReLU(), nn.Linear(8, 3)).double().eval()
    graph = get_graph(mlp, (3, 2, 2), torch.device("cpu"), torch.float64)
    assert split_path(graph, 3) is None
    model = _net("pool", seed=0)
    graph = get_graph(model, (3, 12, 12), torch.device("cpu"), torch.float64)
    gen = torch.Generator().manual_seed(0)
    ball = evax.Ball(torch.rand((3, 3, 12, 12), generator=gen, dtype=torch.float64), 0.1)  # three images
    prop = Propagator(graph, ball, frozenset({"backward"}))
    prop.run(None)
    i = _hidden(graph)
    rows = torch.arange(graph.nodes[i].numel)
    lower = torch.full((3, rows.numel()), -torch.inf, dtype=torch.float64)
    assert prop._backward_delta(i, rows, lower, lower.clone()) is None


@pytest.mark.parametrize("kind", KINDS)
def test_sound_on_eva_boxes(kind):
    """Sampled points of every EVA box stay inside the CROWN bounds computed with the passes."""
    model = _net(kind, seed=20 + KINDS.index(kind))
    assert_sound(model, _boxes(seed=4, eps=0.1), ["backward", "ibp+backward"])
