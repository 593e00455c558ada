"""Verified sufficient explanations: soundness, agreement with brute force, minimality, errors."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import evax
import evax.zoo
from bounds.attack import search as attack_search
from evax.attribution.eva import margin_spec
from evax.attribution.sufficient import Sufficient, _candidate_rank, _section_points
from evax.errors import InvalidInputError

pytestmark = pytest.mark.usefixtures("one_thread")


# -- tiny models and a reference implementation ------------------------------------------------
def linear_net(seed: int = 0) -> nn.Module:
    gen = torch.Generator().manual_seed(seed)
    lin = nn.Linear(36, 3)
    with torch.no_grad():
        lin.weight.copy_(torch.randn(3, 36, generator=gen))
        lin.bias.copy_(torch.randn(3, generator=gen))
    return nn.Sequential(nn.Flatten(), lin).eval()


def relu_net(seed: int = 0, hidden: int = 8) -> nn.Module:
    gen = torch.Generator().manual_seed(seed)
    a, b = nn.Linear(36, hidden), nn.Linear(hidden, 3)
    with torch.no_grad():
        for layer in (a, b):
            layer.weight.copy_(torch.randn(layer.weight.shape, generator=gen) / math.sqrt(layer.in_features))
            layer.bias.copy_(0.1 * torch.randn(layer.bias.shape, generator=gen))
    return nn.Sequential(nn.Flatten(), a, nn.ReLU(), b).eval()


def images(n: int = 3, seed: int = 1) -> torch.Tensor:
    return torch.rand(n, 1, 6, 6, generator=torch.Generator().manual_seed(seed))


def cell_masks(groups, x: torch.Tensor) -> torch.Tensor:
    """``(G, H, W)`` bool masks of the cells (pixels when ``groups`` is None)."""
    h, w = x.shape[2:]
    if groups is None:
        return torch.eye(h * w, dtype=torch.bool).view(h * w, h, w)
    return evax.groups.resolve(groups, x)[0]


def overlap(model, x1, tgt, eps, method, masks, free_cells, domain=None) -> float:
    """AO upper bound of one image with the cells ``free_cells`` (bool (G,)) free."""
    free = (masks & free_cells.view(-1, 1, 1)).any(0)
    ball = evax.Ball(x1, eps, fixed=~free.expand_as(x1), domain=domain)
    spec = margin_spec(tgt.view(1), model(x1).shape[1])
    return evax.bound(model, ball, method, spec).upper.amax().item()


def verix_reference(model, x1, tgt, eps, method, masks, order, domain=None) -> torch.Tensor:
    """VeriX's sequential traversal, one bound call per cell: kept cells (G,) bool."""
    g = masks.shape[0]
    freed = torch.zeros(g, dtype=torch.bool)
    if overlap(model, x1, tgt, eps, method, masks, freed, domain) >= 0:
        return torch.ones(g, dtype=torch.bool)
    for u in order.tolist():
        trial = freed.clone()
        trial[u] = True
        if overlap(model, x1, tgt, eps, method, masks, trial, domain) < 0:
            freed = trial
    return ~freed


def prefix_reference(model, x1, tgt, eps, method, masks, order, domain=None) -> torch.Tensor:
    """Brute force over all prefixes: kept cells of the largest certified prefix."""
    g = masks.shape[0]
    best = -1
    for k in range(g + 1):
        freed = torch.zeros(g, dtype=torch.bool)
        freed[order[:k]] = True
        if overlap(model, x1, tgt, eps, method, masks, freed, domain) < 0:
            best = k
    kept = torch.ones(g, dtype=torch.bool)
    if best >= 0:
        kept[order[:best]] = False
    return kept


# -- helpers -------------------------------------------------------------------------------------
def test_candidate_rank_and_section_points():
    cand = torch.tensor([[True, False, True, True], [False, True, True, False]])
    rank = torch.tensor([[3, 0, 1, 2], [0, 1, 2, 3]])  # image 0 order: cells 1, 2, 3, 0
    assert _candidate_rank(cand, rank).tolist() == [[2, 4, 0, 1], [4, 0, 1, 4]]
    pts, uniq = _section_points(torch.tensor([-1, 0, 3]), torch.tensor([11, 3, 5]), 4)
    got = [row[u].tolist() for row, u in zip(pts, uniq, strict=True)]
    assert got == [[0, 3, 6, 10], [1, 2], [4]]  # both ends of [lo+1, hi-1], no duplicates


# -- agreement with the references (monotone bounds: IBP, exact MILP, linear models) ------------
CASES = [
    ("linear", "backward", evax.groups.grid(3)),
    ("linear", "backward", None),
    ("relu", "ibp", evax.groups.grid(3)),
    ("relu", "ibp", None),
]


@pytest.mark.parametrize(("net", "method", "groups"), CASES)
@pytest.mark.parametrize("eps", [0.05, 0.15, 0.3])
def test_greedy_equals_sequential_verix_traversal(net, method, groups, eps):
    model = linear_net() if net == "linear" else relu_net()
    x = images()
    suff = Sufficient(model, eps, method=method, groups=groups, order="verix", domain=(0, 1),
                      boxes_per_round=4, counterfactuals=False)
    e = suff.explain(x)
    masks = cell_masks(groups, x)
    for i in range(x.shape[0]):
        ref = verix_reference(model, x[i : i + 1], e.target[i], eps, method, masks, e.order[i], (0, 1))
        assert torch.equal(e.kept[i], ref), f"image {i}"
    assert torch.equal(e.size, e.kept.sum(1))


def test_cases_are_not_trivial():
    """The agreement tests above must see kept sets that are neither empty nor full."""
    sizes = []
    for eps in (0.05, 0.15, 0.3):
        for model in (linear_net(), relu_net()):
            e = Sufficient(model, eps, method="ibp", groups=None, order="verix", domain=(0, 1),
                           counterfactuals=False).explain(images())
            sizes += e.size.tolist()
    assert any(0 < s < 36 for s in sizes)
    assert len(set(sizes)) > 3


@pytest.mark.parametrize(("net", "method", "groups"), CASES)
def test_prefix_search_equals_brute_force_over_prefixes(net, method, groups):
    model = linear_net(2) if net == "linear" else relu_net(2)
    x = images(2, seed=3)
    for order in ("verix", "random"):
        e = Sufficient(model, 0.15, method=method, groups=groups, order=order, domain=(0, 1),
                       search="prefix", boxes_per_round=3, counterfactuals=False).explain(x)
        masks = cell_masks(groups, x)
        for i in range(x.shape[0]):
            ref = prefix_reference(model, x[i : i + 1], e.target[i], 0.15, method, masks, e.order[i], (0, 1))
            assert torch.equal(e.kept[i], ref)


@pytest.mark.slow
def test_greedy_with_exact_milp_and_smallest_set():
    """method='exact': the greedy set equals VeriX's traversal; the exhaustive search gives a
    set no larger, that is certified, and no smaller kept set is certified."""
    model = relu_net(4, hidden=6)
    x = images(2, seed=5)
    groups = evax.groups.grid(3)
    masks = cell_masks(groups, x)
    greedy = Sufficient(model, 0.2, method="exact", groups=groups, order="verix", domain=(0, 1),
                        counterfactuals=False).explain(x)
    small = Sufficient(model, 0.2, method="exact", groups=groups, domain=(0, 1), order="random",
                       search="smallest", counterfactuals=False).explain(x)
    for i in range(2):
        ref = verix_reference(model, x[i : i + 1], greedy.target[i], 0.2, "exact", masks, greedy.order[i], (0, 1))
        assert torch.equal(greedy.kept[i], ref)
    assert (small.size <= greedy.size).all()
    assert small.certified.all()
    # every set of size smallest - 1 fails (checked independently)
    from itertools import combinations

    for i in range(2):
        s = int(small.size[i])
        if s == 0:
            continue
        for keep in combinations(range(9), s - 1):
            free = torch.ones(9, dtype=torch.bool)
            free[list(keep)] = False
            assert overlap(model, x[i : i + 1], small.target[i], 0.2, "exact", masks, free, (0, 1)) >= 0


def test_smallest_equals_brute_force_over_subsets():
    """Linear model (exact bounds): the exhaustive search's size is the smallest certified
    kept set, found by checking every subset independently."""
    from itertools import combinations

    model = linear_net(6)
    x = images(2, seed=13)
    groups = evax.groups.grid(3)
    masks = cell_masks(groups, x)
    e = Sufficient(model, 0.2, method="backward", groups=groups, domain=(0, 1), search="smallest",
                   counterfactuals=False).explain(x)
    greedy = Sufficient(model, 0.2, method="backward", groups=groups, domain=(0, 1), order="verix",
                        counterfactuals=False).explain(x)
    for i in range(2):
        best = None
        for s in range(10):
            for keep in combinations(range(9), s):
                free = torch.ones(9, dtype=torch.bool)
                free[list(keep)] = False
                if overlap(model, x[i : i + 1], e.target[i], 0.2, "backward", masks, free, (0, 1)) < 0:
                    best = s
                    break
            if best is not None:
                break
        assert int(e.size[i]) == best
    assert (e.size <= greedy.size).all() and e.certified.all()
    assert (e.size > 0).any()  # not a trivial case


# -- soundness: the certificate holds independently ---------------------------------------------
def _reverify(model, x, e, eps, method, domain):
    masks = e.mask.unsqueeze(1).expand_as(x)  # kept pixels are fixed
    ball = evax.Ball(x, eps, fixed=masks, domain=domain)
    spec = margin_spec(e.target, model(x).shape[1])
    ub = evax.bound(model, ball, method, spec).upper.amax(1)
    found = attack_search(model, ball, spec, restarts=4, steps=40, generator=torch.Generator().manual_seed(0))
    return ub, found.highest.amax(1)


@pytest.mark.parametrize("order", ["verix", "eva", "random"])
def test_certified_sets_reverify_on_relu_net(order):
    model = relu_net(1, hidden=16)
    x = images(4, seed=7)
    e = Sufficient(model, 0.2, method="backward", groups=evax.groups.grid(3), order=order,
                   domain=(0, 1)).explain(x)
    assert e.certified.all()  # the target is the predicted class: a set always exists
    ub, attacked = _reverify(model, x, e, 0.2, "backward", (0, 1))
    assert (ub < 0).all() and (attacked < 0).all()
    assert torch.allclose(ub, e.ao, atol=1e-5)


def test_zoo_mlp_pixels_certified_and_locally_minimal():
    """The MNIST MLP at pixel level: certified, re-verified by bound and attack; removing any
    kept pixel breaks the proof (checked in one batched call)."""
    model = evax.zoo.load_model("mnist-mlp", progress=False)
    x = evax.zoo.load_dataset("mnist-samples").images[:2]
    e = Sufficient(model, 0.05, groups=None, order="verix", domain=(0, 1), counterfactuals=False).explain(x)
    assert e.certified.all() and (e.size > 0).all() and (e.size < 784).all()
    ub, attacked = _reverify(model, x, e, 0.05, "backward", (0, 1))
    assert (ub < 0).all() and (attacked < 0).all()
    # local minimality: free each kept pixel in addition, all boxes in one call
    pairs = e.kept.nonzero()
    img, cell = pairs[:, 0], pairs[:, 1]
    fixed = e.mask[img].clone().view(-1, 784)
    fixed[torch.arange(img.shape[0]), cell] = False
    ball = evax.Ball(x[img], 0.05, fixed=fixed.view(-1, 1, 28, 28), domain=(0, 1))
    spec = margin_spec(e.target[img], 10)
    ub_minus = evax.bound(model, ball, "backward", spec).upper.amax(1)
    assert (ub_minus >= 0).float().mean() >= 0.99  # linear relaxations are not always monotone
    assert e.checks < 40


@pytest.mark.parametrize("net", ["linear", "relu"])
def test_removing_a_kept_cell_breaks_the_proof(net):
    model = linear_net(3) if net == "linear" else relu_net(3)
    method = "backward" if net == "linear" else "ibp"
    x = images(3, seed=9)
    masks = cell_masks(None, x)
    e = Sufficient(model, 0.15, method=method, groups=None, order="verix", domain=(0, 1),
                   counterfactuals=False).explain(x)
    freed = ~e.kept
    n_checked = 0
    for i in range(3):
        if not e.certified[i]:
            continue
        for u in e.kept[i].nonzero().squeeze(1).tolist():
            trial = freed[i].clone()
            trial[u] = True
            assert overlap(model, x[i : i + 1], e.target[i], 0.15, method, masks, trial, (0, 1)) >= 0
            n_checked += 1
    assert n_checked > 0


# -- counterfactual witnesses -------------------------------------------------------------------
def test_counterfactuals_are_real_and_inside_the_ball():
    """Linear model: the bounds are exact, so each kept pixel whose freeing makes the overlap
    clearly positive has a class-changing point, found by the attack."""
    model = linear_net(5)
    x = images(3, seed=11)
    eps = 0.15
    e = Sufficient(model, eps, method="backward", groups=None, order="verix", domain=(0, 1)).explain(x)
    assert e.counterfactuals.shape[0] == int(e.witnessed.sum()) > 0
    img, cell = e.counterfactual_index[:, 0], e.counterfactual_index[:, 1]
    assert e.witnessed[img, cell].all() and e.kept[img, cell].all()
    delta = (e.counterfactuals - x[img]).flatten(1)
    assert (delta.abs() <= eps + 1e-6).all()
    assert ((e.counterfactuals >= 0) & (e.counterfactuals <= 1)).all()
    allowed = ~e.kept[img].clone()
    allowed[torch.arange(img.shape[0]), cell] = True
    assert (delta[~allowed] == 0).all()
    with torch.no_grad():
        cls = model(e.counterfactuals).argmax(1)
    assert (cls != e.target[img]).all() and torch.equal(cls, e.counterfactual_class)
    # witnesses are found where the exact overlap is clearly positive
    masks = cell_masks(None, x)
    missed = 0
    for i, u in e.kept.nonzero().tolist():
        if e.witnessed[i, u] or not e.certified[i]:
            continue
        trial = ~e.kept[i].clone()
        trial[u] = True
        if overlap(model, x[i : i + 1], e.target[i], eps, "backward", masks, trial, (0, 1)) > 1e-2:
            missed += 1
    assert missed == 0


def test_exact_method_witnesses_every_kept_cell_by_milp():
    """method='exact': a nearly blind PGD (1 step, 1 run) misses witnesses; the MILP, complete,
    finds one for every kept cell of every certified result, each inside the ball (only the
    freed cells and the tested cell move, domain respected) and a real class change."""
    model = relu_net(4, hidden=6)
    x = images(3, seed=5)
    eps = 0.2
    e = Sufficient(model, eps, method="exact", groups=evax.groups.grid(3), order="verix", domain=(0, 1),
                   attack_steps=1, attack_restarts=1).explain(x)
    must = e.kept & e.certified.unsqueeze(1)
    assert must.any()
    assert torch.equal(e.witnessed, must)
    img, cell = e.counterfactual_index[:, 0], e.counterfactual_index[:, 1]
    masks = cell_masks(evax.groups.grid(3), x)
    moved = (e.counterfactuals - x[img]).abs().flatten(1)
    assert (moved <= eps + 1e-6).all()
    assert ((e.counterfactuals >= 0) & (e.counterfactuals <= 1)).all()
    allowed = ~e.kept[img].clone()
    allowed[torch.arange(img.shape[0]), cell] = True
    pixel_allowed = (masks.unsqueeze(0) & allowed.view(*allowed.shape, 1, 1)).any(1).flatten(1)
    assert (moved[~pixel_allowed] == 0).all()
    with torch.no_grad():
        cls = model(e.counterfactuals).argmax(1)
    assert (cls != e.target[img]).all() and torch.equal(cls, e.counterfactual_class)


def test_exact_counterexample_is_the_milp_maximiser():
    """The MILP's point attains its optimum: the model's margin there equals the exact upper
    bound of the margin rows (and lies in the box); no point is returned for a certified box."""
    from evax.bounds.api import get_graph
    from evax.bounds.exact import exact_counterexamples

    model = relu_net(2, hidden=5).double()
    x = images(2, seed=3).double()
    tgt = model(x).argmax(1)
    spec = margin_spec(tgt, 3).double()
    graph = get_graph(model, tuple(x.shape[1:]), x.device, torch.float64)
    for eps, expect_found in ((0.5, True), (1e-4, False)):
        ball = evax.Ball(x, eps, domain=(0, 1))
        found, pts, values = exact_counterexamples(graph, ball, spec)
        upper = evax.bound(model, ball, "exact", spec).upper.amax(1)
        torch.testing.assert_close(values, upper, rtol=1e-7, atol=1e-7)
        lo, hi = ball.interval()
        assert ((pts >= lo) & (pts <= hi)).all()
        with torch.no_grad():
            margin = (spec @ model(pts).unsqueeze(-1)).squeeze(-1).amax(1)
        torch.testing.assert_close(margin, values, rtol=1e-6, atol=1e-6)
        assert bool(found.all()) is expect_found and torch.equal(found, values > 0)


# -- edge cases ---------------------------------------------------------------------------------
def test_whole_ball_certified_gives_empty_set():
    model = relu_net()
    x = images(2)
    e = Sufficient(model, 1e-4, method="backward", groups=None, order="random").explain(x)
    assert (e.size == 0).all() and e.certified.all() and not e.mask.any()
    assert e.checks == 1  # the first round tests the whole ball


def test_wrong_target_keeps_everything_uncertified():
    model = relu_net()
    x = images(2)
    pred = model(x).argmax(1)
    other = (pred + 1) % 3
    e = Sufficient(model, 0.1, method="backward", groups=evax.groups.grid(3), order="verix").explain(x, other)
    assert (e.size == 9).all() and not e.certified.any() and e.mask.all()


def test_engine_calls_grow_like_log():
    model = linear_net()
    x = images(2)
    e = Sufficient(model, 0.15, method="backward", groups=None, order="verix", search="prefix",
                   boxes_per_round=8).explain(x)
    assert e.checks <= math.ceil(math.log(38) / math.log(7)) + 1  # G = 36, 8 points per round


def test_batch_independent_and_inputs_unchanged():
    model = relu_net()
    x = images(3)
    x0 = x.clone()
    s = Sufficient(model, 0.15, method="ibp", groups=None, order="verix", domain=(0, 1))
    e = s.explain(x)
    assert torch.equal(x, x0)
    for i in range(3):
        assert torch.equal(s.explain(x[i : i + 1]).kept[0], e.kept[i])


def test_explicit_scores_and_explainer_orders():
    model = relu_net()
    x = images(2)
    scores = torch.rand(2, 9, generator=torch.Generator().manual_seed(0))
    e = Sufficient(model, 0.15, groups=evax.groups.grid(3), order=scores).explain(x)
    assert torch.equal(e.order, torch.sort(scores, dim=1, stable=True).indices)
    explainer = lambda inputs, target: inputs[:, 0]  # noqa: E731 - brightness as importance
    e2 = Sufficient(model, 0.15, groups=None, order=explainer).explain(x)
    assert torch.equal(e2.order, torch.sort(x.flatten(1), dim=1, stable=True).indices)
    assert e2.certified.all()


def test_to_dict_is_json():
    import json

    model = relu_net()
    e = Sufficient(model, 0.15, groups=evax.groups.grid(3), order="verix").explain(images(2))
    d = json.loads(json.dumps(e.to_dict()))
    assert d["size"] == e.size.tolist() and d["cells"] == 9 and d["checks"] == e.checks
    assert [len(k) for k in d["kept_cells"]] == d["size"]


# -- bad inputs ---------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"eps": 0.0}, "eps"),
        ({"eps": -1.0}, "eps"),
        ({"method": "nope"}, "method"),
        ({"search": "fast"}, "search"),
        ({"order": "best"}, "order"),
        ({"boxes_per_round": 1}, "boxes_per_round"),
        ({"p": 3}, "p must be"),
        ({"domain": (0, 1), "p": 2}, "domain"),
    ],
)
def test_bad_configuration(kwargs, match):
    args = {"eps": 0.1, **kwargs}
    with pytest.raises(InvalidInputError, match=match):
        Sufficient(relu_net(), **args)


def test_bad_inputs():
    model = relu_net()
    x = images(2)
    s = Sufficient(model, 0.1, groups=evax.groups.grid(3))
    with pytest.raises(InvalidInputError, match="target out of range"):
        s.explain(x, target=5)
    with pytest.raises(InvalidInputError, match="target"):
        s.explain(x, target=[0, 1, 2])
    with pytest.raises(InvalidInputError, match="shape"):
        s.explain(torch.rand(2, 1, 5, 5))
    with pytest.raises(InvalidInputError, match="NaN"):
        s.explain(torch.full((1, 1, 6, 6), float("nan")))
    with pytest.raises(InvalidInputError, match="outside the domain"):
        Sufficient(model, 0.1, domain=(0, 1), groups=None).explain(x + 2)
    empty = torch.zeros(1, 2, 6, 6, dtype=torch.bool)
    empty[0, 0] = True
    with pytest.raises(InvalidInputError, match="empty"):
        Sufficient(model, 0.1, groups=empty).explain(x)
    with pytest.raises(InvalidInputError, match="no groups"):
        Sufficient(model, 0.1, groups=torch.zeros(1, 0, 6, 6, dtype=torch.bool)).explain(x)
    with pytest.raises(InvalidInputError, match="shape"):
        Sufficient(model, 0.1, groups=evax.groups.grid(3), order=torch.rand(2, 5)).explain(x)
    with pytest.raises(InvalidInputError, match="max_cells"):
        Sufficient(model, 0.1, groups=None, search="smallest").explain(x)
    assert torch.equal(x, images(2))


@pytest.mark.parametrize("p", [2, 1])
def test_other_norms(p):
    """L2 / L1 balls: certified sets re-verify by bound and attack; L2 witnesses lie in the
    ball and change the class; L1 searches no witness (documented)."""
    model = linear_net(7)
    x = images(2, seed=15)
    eps = 0.3 if p == 2 else 0.6
    e = Sufficient(model, eps, p=p, method="backward", groups=evax.groups.grid(3), order="verix").explain(x)
    assert e.certified.all()
    ball = evax.Ball(x, eps, p=p, fixed=e.mask.unsqueeze(1))
    spec = margin_spec(e.target, 3)
    assert (evax.bound(model, ball, "backward", spec).upper.amax(1) < 0).all()
    found = attack_search(model, ball, spec, restarts=4, steps=40, generator=torch.Generator().manual_seed(0))
    assert (found.highest.amax(1) < 0).all()
    if p == 1:
        assert not e.witnessed.any()
        return
    assert (e.size < 9).any() and e.witnessed.any()
    img = e.counterfactual_index[:, 0]
    if img.numel():
        norms = (e.counterfactuals - x[img]).flatten(1).norm(dim=1)
        assert (norms <= eps * (1 + 1e-5)).all()
        assert (model(e.counterfactuals).argmax(1) != e.target[img]).all()


def test_flat_inputs():
    """``(N, D)`` inputs: features are the cells; the result equals VeriX's traversal."""
    model = relu_net(8)[1:]  # drop Flatten: takes (N, 36)
    x = images(2, seed=17).flatten(1)
    e = Sufficient(model, 0.15, method="ibp", groups=None, order="verix", domain=(0, 1)).explain(x)
    assert e.mask.shape == (2, 36) and e.certified.all()
    for i in range(2):
        freed = torch.zeros(36, dtype=torch.bool)
        for u in e.order[i].tolist():
            trial = freed.clone()
            trial[u] = True
            ball = evax.Ball(x[i : i + 1], 0.15, fixed=~trial.view(1, 36), domain=(0, 1))
            spec = margin_spec(e.target[i].view(1), 3)
            if evax.bound(model, ball, "ibp", spec).upper.amax() < 0:
                freed = trial
        assert torch.equal(e.kept[i], ~freed)
    with pytest.raises(InvalidInputError, match="image inputs"):
        Sufficient(model, 0.15, groups=None, order="eva").explain(x)
