"""The tables of ``evax bench`` as data: one :class:`~evax.bench.specs.TableSpec` per table.

=====================  =====================================================================
table                  what it reproduces
=====================  =====================================================================
``eva-table1``         EVA paper Table 1: Del., Ins., muFid., Rob.-S_r, time of 11 methods
                       on MNIST, CIFAR-10, ImageNet
``eva-table2``         EVA paper Table 2: Tightness + the 4 metrics of EVA per bound method on
                       MNIST, and (ours) a tiny MNIST net where the exact AO (MILP) is known
``eva-table3``         EVA paper Table 3: ablations Greedy-AS, Greedy-AO, EVA_emp, EVA
``infidelity-table1``  Yeh et al. Table 1: SENS_MAX and INFD, local (MNIST) and global
                       (MNIST, CIFAR-10, ImageNet) explanations, with and without smoothing
``infidelity-table2``  Yeh et al. Table 2: randomization sanity check (Spearman)
``targeted``           EVA paper Fig. 7: MNIST digits x 10 target classes (targeted EVA)
``certified-study``    (ours, issue 18) EVA vs the Table 1 baselines on normally vs certifiably
                       trained models, paired differences, EVA's Tightness and certified share
=====================  =====================================================================

A table's spec depends on the budget (``quick``: reduced budgets for smoke tests;
``offline``: MNIST from the 20 shipped digits) and, for a few tables, on an option
(``targeted``: ``method``, its bound method): :func:`table_spec` builds it. A new table is a
function returning a ``TableSpec``, added to :data:`BUILDERS`.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from evax.bench import protocols as P
from evax.bench.published import EVA_TABLE1_IMAGES
from evax.bench.specs import MethodSpec, MetricSpec, SettingSpec, TableSpec
from evax.errors import InvalidInputError

BOUND_METHODS = ("ibp", "forward", "backward", "ibp+forward+backward")

_MNIST_NOTE = "the zoo's dense 784-256-128-64-32-10 MLP, MNIST test set"
_MNIST_OFFLINE_NOTE = "the zoo's dense MLP, 20 shipped MNIST digits"


def _base(key: str, offline: bool) -> dict:
    """Model, dataset, default n and note of the papers' datasets (MNIST offline: the 20 digits)."""
    if key == "mnist":
        if offline:
            return {"model": "mnist-mlp", "dataset": "mnist-samples", "n": 4, "note": _MNIST_OFFLINE_NOTE}
        return {"model": "mnist-mlp", "dataset": "mnist", "n": 50, "note": _MNIST_NOTE}
    if key == "cifar10":
        return {"model": "cifar10-cnn", "dataset": "cifar10-samples", "n": 4,
                "note": "the zoo's Keras CNN, foolbox's 20 CIFAR-10 samples"}
    if key == "imagenet":
        return {"model": "imagenet-efficientnet-lite0", "dataset": "imagenet-samples", "n": 2,
                "note": "EfficientNet-Lite0, foolbox's 20 ImageNet photos"}
    raise KeyError(key)


def _setting(key: str, offline: bool, methods, metrics, **kw: Any) -> SettingSpec:
    base = _base(kw.pop("base", key), offline)
    return SettingSpec(key=key, methods=tuple(methods), metrics=tuple(metrics), **{**base, **kw})


GRID = {"grid": 12}


# ------------------------------------------------------------------ EVA paper
def eva_table1(quick: bool = False, offline: bool = False) -> TableSpec:
    metrics = P.fidelity_metrics(quick)
    settings = [
        _setting(k, offline, P.table1_methods(k, quick), metrics, config=GRID, meta={"eva": P.eva_settings(k)})
        for k in ("mnist", "cifar10", "imagenet")
    ]
    rob = next(m for m in metrics if m.name == "robustness").to_config()
    return TableSpec(
        "eva-table1", "EVA paper, Table 1 -- Deletion, Insertion, muFidelity, Robustness-S_r, time", tuple(settings),
        notes=("time = seconds per explanation on this machine (the paper: total for 500/500/100 on a P100; "
               "the report divides the paper's time by its image count)",
               "Robustness-S_r budget: " + json.dumps(rob)),
        published_time_images=EVA_TABLE1_IMAGES,
    )


def eva_table2(quick: bool = False, offline: bool = False) -> TableSpec:
    """Tightness (mean guaranteed upper bound of AO(x, B), lower = tighter) and Table 1's metrics
    of EVA with IBP, Forward, Backward and IBP+Forward+Backward on the MNIST MLP (eps 0.5, 12x12
    grid); ``mnist-tiny`` (not in the paper): a 784-10-10-10 ReLU net where the *exact* AO is
    computed by MILP next to each relaxation's bound (see :func:`evax.bench.cells.tiny_mnist_net`;
    no zoo net is small enough for the MILP at eps 0.5). Option ``tiny_n``: its images."""
    metrics = (*P.fidelity_metrics(quick), MetricSpec("tightness"))
    mnist = _setting(
        "mnist", offline,
        [MethodSpec(bm, "EVA", {"eps": 0.5, "method": bm}, explain=True) for bm in BOUND_METHODS], metrics,
        config=GRID, meta={"eps": 0.5, "grid": 12},
    )
    tiny = SettingSpec(
        "mnist-tiny", "bench:mnist-tiny-samples" if offline else "bench:mnist-tiny", mnist.dataset, 4,
        methods=tuple(MethodSpec(bm, "bound", {"method": bm}) for bm in (*BOUND_METHODS, "exact")),
        metrics=(MetricSpec("tightness"),), cell="tightness",
        note="784-10-10-10 ReLU net trained by the harness (2 epochs, seed 0)",
        config={"eps": 0.5}, meta={"eps": 0.5}, n_option="tiny_n",
    )
    return TableSpec(
        "eva-table2", "EVA paper, Table 2 -- impact of the verified perturbation analysis method", (mnist, tiny),
        notes=("tightness = mean over images of the AO(x, B) upper bound of the whole ball (EVA's Explanation.ao)",
               "mnist-tiny block: only Tightness (the AO of the whole ball; 'exact' = MILP ground truth); "
               "the exact EVA map would need 145 MILPs per image"),
    )


def eva_table3(quick: bool = False, offline: bool = False) -> TableSpec:
    """App. B ablations: Greedy-AS, Greedy-AO (Greedy-AS with the AO estimator), EVA_emp
    (Eq. 3-4, uniform samples of the ball) and EVA, same metrics as Table 1."""
    metrics = P.fidelity_metrics(quick)
    settings = []
    for k in ("mnist", "cifar10", "imagenet"):
        eva = P.eva_config(k, quick)
        rows = (
            MethodSpec("Greedy-AS", "GreedyAS", P.greedy_budget(quick)),
            MethodSpec("Greedy-AO", "GreedyAO", {"eps": eva["eps"], "method": eva["method"],
                                                 **({"n_subsets": 8} if quick else {})}),
            MethodSpec("EVA_emp", "EmpiricalEVA", {"eps": eva["eps"], "n_samples": 64 if quick else 1000},
                       explain=True),
            P.eva_method(k, quick),
        )
        settings.append(_setting(k, offline, rows, metrics, config=GRID, meta={"eva": eva}))
    return TableSpec("eva-table3", "EVA paper, Table 3 -- ablations (Greedy-AO, empirical EVA)", tuple(settings),
                     notes=("time = seconds per explanation (the paper: total for 100 explanations)",))


def targeted(quick: bool = False, offline: bool = False, method: str | None = None) -> TableSpec:
    """Fig. 7 (Sec. 4.3, App. H): for ``n`` MNIST digits (default 4), the EVA map of the
    predicted class and the targeted EVA map towards each of the 9 other classes (IBP+Forward+
    Backward, eps 0.5, 12x12 grid; ``phi = phi+ - phi-``: red = adding ink helps the target
    class, blue = removing ink does). Option ``method``: the bound method."""
    bm = method or ("ibp" if quick else "ibp+forward+backward")
    s = _setting("mnist", offline, [MethodSpec("EVA-targeted", "bound", {"method": bm})], (), cell="targeted", n=4,
                 config={"eps": 0.5, "grid": 12, "timed": True}, meta={"eps": 0.5, "method": bm, "grid": 12})
    return TableSpec("targeted", "EVA paper, Fig. 7 -- targeted explanations", (s,),
                     notes=("diagonal: the plain EVA map of the predicted class",), output="targeted")


# ------------------------------------------------------------------ infidelity paper
INFD_SETTINGS = {
    "mnist-local": ("mnist", True),
    "mnist-global": ("mnist", False),
    "cifar10-global": ("cifar10", False),
    "imagenet-global": ("imagenet", False),
}


def infidelity_table1(quick: bool = False, offline: bool = False) -> TableSpec:
    """SENS_MAX (Def. 3.1, relative, L-inf ball r = 0.2 local / 0.1 global, 50 samples) and INFD
    (Def. 2.1 with the optimal beta; Noisy-Baseline perturbation for local explanations, all
    squares of side 1..10 for global ones) of Grad, IG, GBP, their smoothed versions (-SG), SHAP
    and the optimal explanations (Noisy Baseline, Square). Local explanations: the signed
    gradient, the path-averaged gradient (local IG), guided backprop; global ones multiply by
    ``x - 0`` (IG is global as is). The logit of the predicted class is explained and scored."""
    settings = []
    for key, (ds, local) in INFD_SETTINGS.items():
        metrics = P.infidelity_metrics(local, key, quick)
        settings.append(_setting(key, offline, P.infidelity_methods(local, quick, key), metrics, base=ds,
                                 cell="infidelity",
                                 meta={"local": local, **{m.name: m.to_config() for m in metrics}}))
    return TableSpec(
        "infidelity-table1", "Yeh et al., Table 1 -- SENS_MAX and INFD, local and global explanations",
        tuple(settings),
        notes=("INFD normalised by the optimal beta (the authors' evaluation); SENS_MAX relative to ||Phi(x)||",),
    )


def infidelity_table2(quick: bool = False, offline: bool = False) -> TableSpec:
    """Spearman rank correlation between the (global) explanations of the model and of the model
    with its last layer re-initialised, signed and absolute, for Grad, Grad-SG, IG, IG-SG and
    Square (low = passes the sanity check). The paper uses ResNet-50 on ImageNet; the default
    here is the MNIST MLP and the CIFAR-10 CNN (ImageNet optional)."""
    settings = []
    for k in ("mnist", "cifar10", "imagenet"):
        rows = {m.name: m for m in P.infidelity_methods(False, quick, f"{k}-global")}
        settings.append(_setting(
            k, offline, [rows[r] for r in ("Grad", "Grad-SG", "IG", "IG-SG", "Square")],
            (MetricSpec("spearman"), MetricSpec("spearman_abs")), cell="sanity",
            config={"layer": "last"}, meta={"layer": "last"},
        ))
    return TableSpec("infidelity-table2", "Yeh et al., Table 2 -- randomization sanity check", tuple(settings),
                     notes=("the paper: ResNet-50 on ImageNet; here: the zoo's models (see settings)",),
                     default_settings=("mnist", "cifar10"))


# ------------------------------------------------------------------ certified vs normal (issue 18)
# (model, eps): a normally trained model and its certifiably trained twin (same architecture,
# same data), at the certified models' training radius 0.1 and at the EVA paper's 0.5. The zoo
# has no normally trained twin of the small CNN (mnist-lenet5 is another architecture: an
# optional, loose comparison) and no certified CIFAR-10 model.
CERTIFIED_MODELS = ("mnist-mlp", "mnist-mlp-cert0.1", "fashion-mlp", "fashion-mlp-cert0.1", "mnist-cnn-cert0.1",
                    "mnist-lenet5")
CERTIFIED_EPS = (0.1, 0.5)
CERTIFIED_DEFAULT = ("mnist-mlp", "mnist-mlp-cert0.1", "fashion-mlp", "fashion-mlp-cert0.1", "mnist-cnn-cert0.1")
# Table 1's rows that apply to every model here (Grad-CAM needs a conv layer: not on the MLPs);
# Greedy-AS only on request (about 120 s per MNIST digit on a contended 2-core CPU)
CERTIFIED_METHODS = ("Saliency", "GradInput", "InteGrad", "SmoothGrad", "VarGrad", "Occlusion", "RISE", "Greedy-AS",
                     "EVA")


def certified_key(model: str, eps: float) -> str:
    return f"{model}-eps{eps:g}"


def certified_study(quick: bool = False, offline: bool = False) -> TableSpec:
    """EVA against the Table 1 baselines on normally vs certifiably trained models (issue 18).

    One setting per (model, eps): the first ``n`` test images (default 50), every method,
    Deletion / Insertion / muFidelity on the 12 x 12 cells (App. F), and for EVA its Tightness
    (mean AO(x, B) upper bound, the default bound method) and ``certified`` (the share of images
    whose AO bound is < 0: no perturbation of the ball changes the class). Every baseline is
    compared with EVA on the same images: paired difference +- standard error.
    """
    from evax.bounds.api import DEFAULT_METHOD

    t1 = {m.name: m for m in P.table1_methods("mnist", quick)}
    metrics = (*P.fidelity_metrics(quick)[:3], MetricSpec("tightness"), MetricSpec("certified"))
    settings = []
    for model in CERTIFIED_MODELS:
        if offline:
            if not model.startswith("mnist-mlp"):
                continue
            dataset, n = "mnist-samples", 4
        else:
            dataset, n = ("fashion-mnist" if model.startswith("fashion") else "mnist"), 50
        for eps in CERTIFIED_EPS:
            rows = []
            for name in CERTIFIED_METHODS:
                if name == "EVA":
                    rows.append(MethodSpec("EVA", "EVA", {"eps": eps, "method": DEFAULT_METHOD}, explain=True,
                                           groups_grid=12))
                else:
                    rows.append(MethodSpec(**{**_fields(t1[name]), "default": name != "Greedy-AS"}))
            settings.append(SettingSpec(
                certified_key(model, eps), model, dataset, n, tuple(rows), metrics,
                note=("certifiably trained" if "cert" in model else "normally trained") + f", EVA at eps {eps:g}",
                config=GRID, meta={"eps": eps, "eva_method": DEFAULT_METHOD}, images="first",
            ))
    default = None if offline else tuple(certified_key(m, e) for m in CERTIFIED_DEFAULT for e in CERTIFIED_EPS)
    return TableSpec(
        "certified-study", "Certified vs normal models -- EVA against the Table 1 baselines (issue 18)",
        tuple(settings), default_settings=default, reference="EVA",
        notes=("images: the first n of the test split; in brackets the paired difference method - EVA on the same "
               "images (mean +- SE); tightness = EVA's mean AO(x, B) upper bound, certified = share of images with "
               "AO < 0", "mnist-lenet5 (normally trained) is another architecture than mnist-cnn-cert0.1; the zoo "
               "has no certified CIFAR-10 model"),
    )


def _fields(m: MethodSpec) -> dict:
    return {f: getattr(m, f) for f in ("name", "kind", "kwargs", "explain", "groups_grid", "inner")}


# ------------------------------------------------------------------ the registry
BUILDERS: dict[str, Callable[..., TableSpec]] = {
    "eva-table1": eva_table1,
    "eva-table2": eva_table2,
    "eva-table3": eva_table3,
    "infidelity-table1": infidelity_table1,
    "infidelity-table2": infidelity_table2,
    "targeted": targeted,
    "certified-study": certified_study,
}
TABLES = tuple(BUILDERS)
# ``evax bench all``: the papers' tables (the study is run by name)
PAPER_TABLES = TABLES[:6]
# the options a table's builder takes besides the budget
TABLE_OPTIONS: dict[str, tuple[str, ...]] = {"targeted": ("method",)}


def table_spec(name: str, quick: bool = False, offline: bool = False, **options: Any) -> TableSpec:
    """The spec of table ``name`` at the given budget."""
    if name not in BUILDERS:
        raise InvalidInputError(f"unknown table {name!r}; choose one of {list(TABLES)} or 'all'")
    bad = [k for k, v in options.items() if v is not None and k not in TABLE_OPTIONS.get(name, ())]
    if bad:
        raise InvalidInputError(f"table {name!r} takes no option {bad}")
    return BUILDERS[name](quick=quick, offline=offline, **{k: v for k, v in options.items() if v is not None})
