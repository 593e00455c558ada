"""Local (patch) forward forms and backward multipliers give exactly the dense bounds."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import evax
from bounds.nets import ALL, make
from bounds.test_soundness import assert_sound
from evax.bounds.api import get_graph
from evax.bounds.local_backward import local_lower_bounds, stem_chain
from evax.bounds.local_forms import densify, input_local_form
from evax.bounds.ops.activation import ReLU
from evax.bounds.propagate import Propagator
from evax.perturbation import Box

pytestmark = pytest.mark.usefixtures("one_thread")


class PixelScale(nn.Module):
    """A per-pixel affine map (not per channel): exercises the unfolded scale."""

    def __init__(self, shape) -> None:
        super().__init__()
        gen = torch.Generator().manual_seed(5)
        self.register_buffer("scale", torch.randn(shape, generator=gen))
        self.register_buffer("shift", torch.randn(shape, generator=gen))

    def forward(self, x):
        return x * self.scale + self.shift


def conv_stem(seed: int) -> nn.Module:
    """A 3x12x12 net whose stem has every op with a local rule, then pooling and a head."""
    torch.manual_seed(seed)
    net = nn.Sequential(
        PixelScale((3, 12, 12)),
        nn.Conv2d(3, 6, 3, padding=1),
        nn.Conv2d(6, 6, 3, padding=1),  # conv after conv: border entries must be masked
        nn.BatchNorm2d(6),
        nn.LeakyReLU(0.1),
        nn.Conv2d(6, 6, 3, padding=2, dilation=2, groups=2),
        nn.Tanh(),
        nn.Conv2d(6, 5, 2),
        nn.Sigmoid(),
        nn.Conv2d(5, 4, 3),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(4 * 4 * 4, 6),
    )
    for m in net.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.3, 0.3)
            m.running_var.uniform_(0.5, 1.5)
            m.weight.data.normal_()
    return net.eval()


def _both(model, inset, methods):
    graph = get_graph(model, inset.shape, torch.device("cpu"), torch.float32)
    local = Propagator(graph, inset, frozenset(methods.split("+")), local_forms=True).run(None)
    dense = Propagator(graph, inset, frozenset(methods.split("+")), local_forms=False).run(None)
    return local, dense


def _assert_close(a, b):
    for x, y in zip(a, b, strict=True):
        torch.testing.assert_close(x, y, rtol=1e-4, atol=1e-4 * (1 + y.abs().max().item()))


def _ball(shape, variant: str, seed: int):
    gen = torch.Generator().manual_seed(seed)
    center = torch.rand((3, *shape), generator=gen)
    fixed = torch.rand((3, *shape), generator=gen) < 0.3
    if variant == "box":
        lo = center - 0.1 * torch.rand(center.shape, generator=gen)
        return Box(lo, center + 0.1 * torch.rand(center.shape, generator=gen))
    sign = {"half+": 1, "half-": -1}.get(variant, 0)
    domain = (0.0, 1.0) if variant == "domain" else None
    return evax.Ball(center, 0.1, fixed=fixed, domain=domain, sign=sign)


@pytest.mark.parametrize("variant", ["plain", "domain", "half+", "half-", "box"])
@pytest.mark.parametrize("methods", ["forward", "ibp+forward", "backward", "forward+backward"])
def test_local_equals_dense_on_conv_stem(variant, methods):
    model = conv_stem(seed=3)
    local, dense = _both(model, _ball((3, 12, 12), variant, seed=11), methods)
    _assert_close(local, dense)


@pytest.mark.parametrize("arch", [a for a in ALL if a.startswith("conv") or a in {"residual", "pool_first"}])
def test_local_equals_dense_on_test_nets(arch):
    model = make(arch, seed=2)
    for methods in ("ibp+forward", "ibp+backward"):
        local, dense = _both(model, _ball((2, 6, 6), "domain", seed=4), methods)
        _assert_close(local, dense)


@pytest.mark.parametrize("variant", ["plain", "half-", "box"])
def test_local_crown_rows_equal_dense_rows(variant):
    """Every neuron of every stem node: the windowed pull-back equals the dense one."""
    model = conv_stem(seed=6)
    inset = _ball((3, 12, 12), variant, seed=2)
    graph = get_graph(model, inset.shape, torch.device("cpu"), torch.float32)
    prop = Propagator(graph, inset, frozenset({"backward"}), local_forms=False)
    prop.run(None)
    rad = inset.box_radius()
    checked = 0
    for i in prop.best:
        chain = stem_chain(graph, i)
        if i == 0 or chain is None:
            continue
        c, h, w = graph.nodes[i].shape
        lo_d, hi_d = prop._backward_rows(i, torch.arange(c * h * w))
        lo_l, hi_l = local_lower_bounds(graph, chain, torch.arange(h * w), prop.relax, inset.reference(), rad)
        _assert_close((lo_l.reshape(3, -1), hi_l.reshape(3, -1)), (lo_d, hi_d))
        checked += 1
    assert checked >= 3


def test_monotone_outputs_take_the_op_of_their_input_bounds():
    """A ReLU output's bounds are relu(input bounds), and CROWN on it is never tighter."""
    model = conv_stem(seed=4)
    inset = _ball((3, 12, 12), "plain", seed=9)
    graph = get_graph(model, inset.shape, torch.device("cpu"), torch.float32)
    prop = Propagator(graph, inset, frozenset({"backward"}), local_forms=False)
    prop.run(None)
    relu = next(i for i, node in enumerate(graph.nodes) if isinstance(node.op, ReLU))
    lo_in, hi_in = prop.best[graph.nodes[relu].inputs[0]]
    lo, hi = prop.best[relu]
    assert torch.equal(lo, lo_in.clamp_min(0)) and torch.equal(hi, hi_in.clamp_min(0))
    c, h, w = graph.nodes[relu].shape
    lo_c, hi_c = prop._backward_rows(relu, torch.arange(c * h * w))
    assert (lo_c <= lo.reshape(3, -1) + 1e-5).all() and (hi_c >= hi.reshape(3, -1) - 1e-5).all()


def test_conv_stem_is_sound():
    model = conv_stem(seed=8)
    ball = evax.Ball(torch.rand(2, 3, 12, 12), 0.05, domain=(0.0, 1.0))
    assert_sound(model, ball, ["forward", "backward", "ibp+forward", "ibp+forward+backward"])


def test_local_path_is_taken_for_box_sets_only(monkeypatch):
    model = conv_stem(seed=1)
    graph = get_graph(model, (3, 12, 12), torch.device("cpu"), torch.float32)
    center = torch.rand(1, 3, 12, 12)
    assert Propagator(graph, evax.Ball(center, 0.1), frozenset({"forward"}))._local
    assert not Propagator(graph, evax.Ball(center, 0.5, p=2), frozenset({"forward"}))._local
    assert evax.Ball(center, 0.5, p=1).box_radius() is None


def test_densify_of_the_input_form_is_the_identity():
    form = input_local_form((2, 3, 4), torch.zeros(1))
    dense = densify(form)
    eye = torch.eye(24).view(1, 24, 2, 3, 4)
    assert torch.equal(dense.al, eye) and dense.al is dense.au


def test_wide_windows_fall_back_to_dense():
    # 5x5 kernels on a 6x6 input: the window would cover the layer, so the dense rule runs.
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(2, 3, 5, padding=2), nn.ReLU(), nn.Conv2d(3, 3, 5), nn.Flatten(), nn.Linear(12, 4)
    )
    local, dense = _both(model.eval(), _ball((2, 6, 6), "plain", seed=1), "ibp+forward")
    _assert_close(local, dense)


def test_p2_ball_is_unchanged_by_the_flag():
    model = conv_stem(seed=2)
    ball = evax.Ball(torch.rand(2, 3, 12, 12), 0.3, p=2)
    local, dense = _both(model, ball, "forward")
    assert all(torch.equal(x, y) for x, y in zip(local, dense, strict=True))
    assert math.isfinite(local[1].max().item())


def _eva_boxes(images: torch.Tensor, n_side: int, eps: float) -> evax.Ball:
    """Per image: the whole ball, then one box per grid cell with that cell fixed (EVA's boxes)."""
    n, _, h, w = images.shape
    cells = torch.zeros(h, w, dtype=torch.long)
    for a in range(h):
        for b in range(w):
            cells[a, b] = (a * n_side // h) * n_side + b * n_side // w
    fixed = torch.zeros((n_side**2 + 1, 1, h, w), dtype=torch.bool)
    fixed[1:, 0] = cells == torch.arange(n_side**2).view(-1, 1, 1)
    centre = images.repeat_interleave(n_side**2 + 1, dim=0)
    fixed = fixed.repeat(n, images.shape[1], 1, 1)
    return evax.Ball(centre, eps, fixed=fixed, domain=(0.0, 1.0))


def test_boxes_sharing_a_root_get_the_bounds_they_get_alone():
    """EVA's boxes differ from their image's whole ball in one cell: the stem's CROWN bounds are
    computed only where a receptive field meets that cell and taken from the root elsewhere;
    every box's bounds equal those of the box bounded on its own."""
    model = conv_stem(seed=8)
    gen = torch.Generator().manual_seed(3)
    inset = _eva_boxes(torch.rand((2, 3, 12, 12), generator=gen), n_side=4, eps=0.15)
    graph = get_graph(model, inset.shape, torch.device("cpu"), torch.float32)
    prop = Propagator(graph, inset, frozenset({"backward"}))
    together = prop.run(None)
    i = max(j for j in prop.best if j and stem_chain(graph, j) is not None)
    root, needed = prop._stem_roots(stem_chain(graph, i), inset.reference())
    assert root.tolist() == [0] * 17 + [17] * 17
    assert needed[[0, 17]].all() and needed.float().mean() < 0.9  # work was skipped
    for b in range(inset.batch_size):
        alone = Propagator(graph, inset.select(slice(b, b + 1)), frozenset({"backward"})).run(None)
        _assert_close((together[0][b : b + 1], together[1][b : b + 1]), alone)


def test_local_support_covers_every_dependence():
    """A position the support leaves out has zero gradient with respect to the pixel, at every
    node of the stem (and the support is local: not everything)."""
    model = conv_stem(seed=9).double()
    graph = get_graph(model, (3, 12, 12), torch.device("cpu"), torch.float64)
    local = 0
    for i in range(1, len(graph.nodes)):
        chain = stem_chain(graph, i)
        if chain is None:
            continue
        for pixel in [(0, 0), (5, 7), (11, 11)]:
            support = torch.zeros((1, 1, 12, 12), dtype=torch.bool)
            support[0, 0, pixel[0], pixel[1]] = True
            x = torch.rand((1, 3, 12, 12), dtype=torch.float64, requires_grad=True)
            out = x
            for j in reversed(chain):
                support = graph.nodes[j].op.local_support(support)
                out = graph.nodes[j].op.evaluate(out)
            assert out.shape[-2:] == support.shape[-2:]
            h, w = out.shape[-2:]
            grads = torch.stack([
                torch.autograd.grad(out[0, :, a, b].sum(), x, retain_graph=True)[0][0, :, pixel[0], pixel[1]]
                .abs().sum()
                for a in range(h) for b in range(w)
            ]).view(h, w)
            assert ((grads > 0) <= support[0, 0]).all()
            local += int(not support.all())
    assert local >= 6


@pytest.mark.parametrize("methods", ["backward", "crown-ibp", "alpha-crown", "ibp+forward+backward"])
@pytest.mark.parametrize("arch", ["conv_stem", "mlp_relu", "residual"])
def test_dense_passes_a_few_boxes_at_a_time_give_the_same_bounds(arch, methods):
    """A small ``box_budget`` splits the dense backward passes (and alpha-CROWN's optimisation)
    into groups of boxes: the bounds are the same."""
    model = conv_stem(seed=4) if arch == "conv_stem" else make(arch, seed=1)
    shape = (3, 12, 12) if arch == "conv_stem" else (2, 6, 6)
    inset = _ball(shape, "domain", seed=7)
    graph = get_graph(model, inset.shape, torch.device("cpu"), torch.float32)
    spec = torch.randn((3, 4, graph.output_size), generator=torch.Generator().manual_seed(0))
    whole = Propagator(graph, inset, frozenset(methods.split("+"))).run(spec)
    split = Propagator(graph, inset, frozenset(methods.split("+")), box_budget=1).run(spec)
    _assert_close(split, whole)


def test_chunks_share_their_groups_root(monkeypatch):
    """A chunk cut inside a group of EVA boxes runs with the group's root prepended (so its
    boxes still share the stem's work); the results are those of one chunk, box by box."""
    from evax.bounds import api

    model = conv_stem(seed=8)
    gen = torch.Generator().manual_seed(4)
    inset = _eva_boxes(torch.rand((2, 3, 12, 12), generator=gen), n_side=4, eps=0.15)
    whole = evax.bound(model, inset, "backward", batch_size=inset.batch_size)
    seen: list[int] = []
    run = api._run_combination

    def recording(graph, sub, *args, **kwargs):
        seen.append(sub.batch_size)
        return run(graph, sub, *args, **kwargs)

    monkeypatch.setattr(api, "_run_combination", recording)
    chunked = evax.bound(model, inset, "backward", batch_size=6)
    # 34 boxes (groups [0, 17) and [17, 34)) in chunks of 6: every chunk but the first gets
    # the root (box 0 or 17) of its boxes from an earlier chunk.
    assert seen == [6, 7, 7, 7, 7, 5]
    _assert_close((chunked.lower, chunked.upper), (whole.lower, whole.upper))


def test_a_roots_stem_bounds_are_reused_by_later_chunks(monkeypatch):
    """With a shared cache, a chunk that holds a root again takes its stem bounds from the chunk
    that computed them (fewer positions computed) and gets the same bounds."""
    import evax.bounds.propagate as propagate

    model = conv_stem(seed=8)
    gen = torch.Generator().manual_seed(5)
    inset = _eva_boxes(torch.rand((1, 3, 12, 12), generator=gen), n_side=4, eps=0.15)
    graph = get_graph(model, inset.shape, torch.device("cpu"), torch.float32)
    pairs: list[int] = []
    count = propagate.local_lower_bounds

    def counting(graph, chain, positions, *args, **kwargs):
        pairs.append(positions.numel())
        return count(graph, chain, positions, *args, **kwargs)

    monkeypatch.setattr(propagate, "local_lower_bounds", counting)
    first, second = torch.arange(0, 9), torch.cat([torch.tensor([0]), torch.arange(9, 17)])
    results = {}
    for shared in (True, False):
        cache: dict = {}
        pairs.clear()
        for index in (first, second):
            kwargs = {"stem_cache": cache, "box_ids": index} if shared else {}
            results[shared, int(index[-1])] = Propagator(
                graph, inset.select(index), frozenset({"backward"}), **kwargs
            ).run(None)
        results[shared] = sum(pairs)
    assert results[True] < results[False]
    for last in (8, 16):
        _assert_close(results[True, last], results[False, last])
