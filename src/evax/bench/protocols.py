"""The papers' protocols as specs: EVA's configuration per dataset, the Table 1 methods (App. E
hyper-parameters), the fidelity metrics (App. F) and the infidelity paper's methods and metrics.

Every function takes ``quick`` (reduced budgets for smoke tests) and returns frozen specs
(:mod:`evax.bench.specs`); the tables of :mod:`evax.bench.registry` are assembled from them,
and ``evax evaluate`` (:mod:`evax.bench.evaluate`) uses the same rows and columns.
"""

from __future__ import annotations

from evax.bench.specs import MethodSpec, MetricSpec


def eva_settings(key: str) -> dict:
    """EVA's configuration per dataset (Sec. 4): eps, bound method, grid."""
    return {
        "mnist": {"eps": 0.5, "method": "ibp+forward+backward"},
        # the paper uses IBP+Forward on its CIFAR CNN; on the zoo's 6-conv CNN full CROWN and
        # forward do not fit this CPU's budget (145 boxes, 32x32x3 inputs, 4 conv layers behind
        # the first pooling), so the default is CROWN-IBP, the tightest linear method that does
        # (tens of seconds per explanation). At eps 0.5 the AO bound stays vacuous on this
        # normally trained net (one image: 1.7e10 with CROWN-IBP, 1.9e10 with IBP).
        "cifar10": {"eps": 0.5, "method": "crown-ibp"},
        # hybrid EVA at the penultimate layer (pooled features), eps = 5 on 0-255 pixels
        "imagenet": {"eps": 5 / 255, "method": "ibp+backward", "split": "flatten"},
    }[key]


def eva_config(key: str, quick: bool) -> dict:
    """:func:`eva_settings`, with the cheapest bound method (IBP) at the smoke-test budget."""
    eva = dict(eva_settings(key))
    if quick:
        eva["method"] = "ibp"
    return eva


def fidelity_metrics(quick: bool) -> tuple[MetricSpec, ...]:
    """Deletion / Insertion / muFidelity / Robustness-S_r as App. F (12x12 grid variables,
    uniform random baseline, softmax score); ``quick`` cuts the sampling budgets for tests."""
    rob = {"steps": 20, "restarts": 1, "max_iter": 12, "tol": 1e-2}
    if quick:
        rob = {"steps": 5, "max_iter": 4, "tol": 0.1, "fractions": [0.25, 0.5, 1.0]}
    return (
        MetricSpec("deletion", "Deletion", {"baseline": "uniform"}),
        MetricSpec("insertion", "Insertion", {"baseline": "uniform"}),
        MetricSpec("mufidelity", "MuFidelity", {"baseline": "uniform", "n_subsets": 32 if quick else 128}),
        MetricSpec("robustness", "RobustnessSr", rob),
    )


def metric_configs(quick: bool) -> dict[str, dict]:
    """:func:`fidelity_metrics` as the JSON configurations of the cells."""
    return {m.name: m.to_config() for m in fidelity_metrics(quick)}


def greedy_budget(quick: bool) -> dict:
    # Greedy-AS / Greedy-AO (issue 5): budgets configurable; the quick one keeps tests short
    return {"n_subsets": 8, "pgd_steps": 5} if quick else {}


def eva_method(key: str, quick: bool, name: str = "EVA") -> MethodSpec:
    """EVA as in Table 1: plain EVA, hybrid EVA at the penultimate layer on ImageNet."""
    eva = eva_config(key, quick)
    if key == "imagenet":
        return MethodSpec(name, "HybridEVA", {"split": eva["split"], "eps": eva["eps"], "method": eva["method"],
                                              "n_samples": 8 if quick else 64}, explain=True)
    return MethodSpec(name, "EVA", {"eps": eva["eps"], "method": eva["method"]}, explain=True)


def table1_methods(key: str, quick: bool) -> tuple[MethodSpec, ...]:
    """The 11 methods of Table 1 (App. E hyper-parameters)."""
    m = 8 if quick else 100
    rise = 200 if quick else (2000 if key == "imagenet" else 6000)
    return (
        MethodSpec("Saliency", "Saliency"),
        MethodSpec("GradInput", "GradientInput"),
        MethodSpec("SmoothGrad", "SmoothGrad", {"n_samples": m}),
        MethodSpec("VarGrad", "VarGrad", {"n_samples": m}),
        MethodSpec("InteGrad", "IntegratedGradients", {"n_steps": max(m, 2)}),
        MethodSpec("Occlusion", "Occlusion"),
        MethodSpec("GradCAM", "GradCAM"),
        MethodSpec("GradCAM++", "GradCAMPlusPlus"),
        MethodSpec("RISE", "RISE", {"n_masks": rise}),
        MethodSpec("Greedy-AS", "GreedyAS", greedy_budget(quick)),
        eva_method(key, quick),
    )


# ------------------------------------------------------------------ the infidelity paper
def _grad(local: bool) -> MethodSpec:
    spec = MethodSpec("Grad", "captum:Saliency", {"abs": False})
    return spec if local else MethodSpec("Grad", "times_input", inner=spec)


def _ig(local: bool, steps: int) -> MethodSpec:
    # the library's IG (with its trapezoid correction); local IG = the path-averaged gradient
    # (multiply_by_inputs=False), global = IG itself
    return MethodSpec("IG", "IntegratedGradients",
                      {"n_steps": steps, "method": "riemann_trapezoid", "multiply_by_inputs": not local})


def _gbp(local: bool) -> MethodSpec:
    spec = MethodSpec("GBP", "GuidedBackprop")
    return spec if local else MethodSpec("GBP", "times_input", inner=spec)


def square_kwargs(setting: str, quick: bool) -> tuple[dict, int | None]:
    """The optimal Square explanation's kwargs and grid of groups (None: pixels)."""
    if setting == "imagenet-global" or quick:
        # 224x224: the exhaustive square set (~500k patches) is out of reach on a CPU; sampled
        # squares of larger sides, regression on a 16x16 grid of groups
        return ({"sizes": [16, 32, 48] if setting == "imagenet-global" else [2, 4, 6], "exhaustive": False,
                 "n_samples": 64 if quick else 2000}, 16 if setting == "imagenet-global" else 7)
    return {}, None


def infidelity_methods(local: bool, quick: bool, setting: str) -> tuple[MethodSpec, ...]:
    """Yeh et al.'s rows: Grad, IG, GBP, their -SG versions, + Noisy Baseline (local) or SHAP
    and Square (global)."""
    steps = 8 if quick else 50
    sg = {"n_samples": 4 if quick else 50, "radius": 0.2}

    def smooth(m: MethodSpec) -> MethodSpec:
        return MethodSpec(f"{m.name}-SG", "smooth", sg, inner=m)

    grad, ig, gbp = _grad(local), _ig(local, steps), _gbp(local)
    rows = [grad, smooth(grad), ig, smooth(ig), gbp, smooth(gbp)]
    if local:
        rows.append(MethodSpec("Noisy Baseline", "OptimalNoisyBaseline", {"n_samples": 200 if quick else 20000}))
    else:
        rows.append(MethodSpec("SHAP", "KernelSHAP", {"n_samples": 32 if quick else 500}))
        kw, grid = square_kwargs(setting, quick)
        rows.append(MethodSpec("Square", "OptimalSquare", kw, groups_grid=grid))
    return tuple(rows)


def infidelity_metrics(local: bool, setting: str, quick: bool) -> tuple[MetricSpec, ...]:
    """SENS_MAX (relative, L-inf ball r = 0.2 local / 0.1 global) and INFD (Noisy-Baseline
    perturbation for local explanations, squares of side 1..10 for global ones)."""
    if local:
        pert = {"cls": "NoisyBaseline", "kwargs": {"sigma": 0.2, "baseline": 0.0, "clip": [0.0, 1.0]}}
        infd = {"perturbation": pert, "n_samples": 64 if quick else 1000}
    elif setting == "imagenet-global" or quick:
        sizes = [16, 32, 48] if setting == "imagenet-global" else [2, 4, 6]
        pert = {"cls": "SquareRemoval", "kwargs": {"sizes": sizes, "baseline": 0.0, "exhaustive": False}}
        infd = {"perturbation": pert, "n_samples": 64 if quick else 1000}
    else:
        pert = {"cls": "SquareRemoval", "kwargs": {"sizes": list(range(1, 11)), "baseline": 0.0, "exhaustive": True}}
        infd = {"perturbation": pert}
    sens = {"radius": 0.2 if local else 0.1, "n_samples": 3 if quick else 50}
    return MetricSpec("sens_max", None, sens), MetricSpec("infd", None, infd)
