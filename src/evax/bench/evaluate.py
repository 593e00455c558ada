"""``evax evaluate``: every attribution method on every user image, every metric, one report.

The unit of work is the bench's cell (:mod:`evax.bench.cells`, kind ``"evaluate"``): one method
on one image, its explanation and all its metrics, seeded by the image index, cached under
``OUT/cache/evaluate/...`` (a rerun reuses every finished cell: change a budget and only the
cells under the new configuration are recomputed), spread over Ray workers with ``workers > 1``
exactly as ``evax bench`` does (:func:`evax.bench.runner.run_cells`).

Method and metric specs are the bench's (:mod:`evax.bench.protocols`: App. F's metrics, the EVA
Table 1 methods): the paper's protocol (App. E/F) unless ``quick``.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path

from evax.bench import cells as cells_mod
from evax.bench.protocols import infidelity_metrics, metric_configs, table1_methods
from evax.bench.runner import RunOptions, run_cells
from evax.bounds.api import DEFAULT_METHOD
from evax.errors import InvalidInputError

METRICS = ("deletion", "insertion", "mufidelity", "robustness", "infidelity", "sensitivity")
DEFAULT_METRICS = ("deletion", "insertion", "mufidelity", "infidelity")
DEFAULT_METHODS = ("Saliency", "GradInput", "InteGrad", "SmoothGrad", "Occlusion", "EVA")
# better when lower (True) or higher (False), for the report
LOWER_IS_BETTER = {"deletion": True, "insertion": False, "mufidelity": False, "robustness": True,
                   "infidelity": True, "sensitivity": True}
_BOUND_METHODS = {"EVA", "Greedy-AO", "GreedyAO"}


@dataclass
class EvaluateConfig:
    """What ``evax evaluate`` runs (every field is printed in the report)."""

    methods: list[str] = field(default_factory=lambda: list(DEFAULT_METHODS))
    metrics: list[str] = field(default_factory=lambda: list(DEFAULT_METRICS))
    reference: str | None = None
    eps: float = 0.5
    bound_method: str = DEFAULT_METHOD
    grid: int = 12
    seed: int = 0
    quick: bool = False


def method_specs(cfg: EvaluateConfig) -> dict[str, dict]:
    """Explainer specs by name: the bench's Table-1 rows (``Saliency``, ``GradInput``, ``InteGrad``,
    ``SmoothGrad``, ``VarGrad``, ``Occlusion``, ``GradCAM``, ``GradCAM++``, ``RISE``, ``Greedy-AS``,
    ``EVA``), any other class of ``evax.attribution.METHODS`` with its defaults."""
    from evax.attribution import METHODS

    table = {m.name: m.to_config() for m in table1_methods("mnist", cfg.quick)}
    table["EVA"] = {"cls": "EVA", "kwargs": {"eps": cfg.eps, "method": cfg.bound_method}, "explain": True}
    out = {}
    for name in cfg.methods:
        if name in table:
            out[name] = copy.deepcopy(table[name])
        elif name in METHODS:
            spec: dict = {"cls": name}
            if name == "GreedyAO":
                spec["kwargs"] = {"eps": cfg.eps, "method": cfg.bound_method}
            out[name] = spec
        else:
            known = sorted(set(table) | set(METHODS))
            raise InvalidInputError(f"unknown method {name!r}; choose from {', '.join(known)}")
        if out[name].get("cls") in ("EVA", "GreedyAO"):
            out[name]["groups_grid"] = cfg.grid
    return out


def metric_specs(cfg: EvaluateConfig) -> dict[str, dict]:
    """Metric configurations by name (the bench's; infidelity / sensitivity: the infidelity
    paper's local protocol: noisy baseline sigma 0.2, L-inf radius 0.2)."""
    bad = [m for m in cfg.metrics if m not in METRICS]
    if bad:
        raise InvalidInputError(f"unknown metric(s) {bad}; choose from {', '.join(METRICS)}")
    fid = metric_configs(cfg.quick)
    infd = {m.name: m.to_config() for m in infidelity_metrics(True, "mnist", cfg.quick)}
    every = {**fid, "infidelity": infd["infd"], "sensitivity": infd["sens_max"]}
    return {m: copy.deepcopy(every[m]) for m in cfg.metrics}


def build_cells(model_spec: dict, images_spec: dict, n_images: int, cfg: EvaluateConfig,
                device: str = "cpu") -> list[cells_mod.Cell]:
    """One cell per (method, image)."""
    if len(set(cfg.methods)) != len(cfg.methods):
        raise InvalidInputError(f"a method is listed twice: {cfg.methods}")
    if cfg.reference is not None and cfg.reference not in cfg.methods:
        raise InvalidInputError(f"--reference {cfg.reference!r} is not one of the methods {cfg.methods}")
    methods = method_specs(cfg)
    metric_specs(cfg)  # validates the names
    # every metric's spec is in the cell's configuration (and fingerprint), the run computes only
    # the chosen ones: a later run with more metrics reuses the explanations and the metrics done
    metrics = metric_specs(EvaluateConfig(metrics=list(METRICS), quick=cfg.quick))
    images_spec = dict(images_spec)
    limit = images_spec.pop("limit", None)
    base = {"user_model": model_spec, "user_images": images_spec, "images_limit": limit, "metrics": metrics,
            "grid": cfg.grid, "seed": cfg.seed, "device": device}
    return [
        cells_mod.Cell("evaluate", "user", name, i, "evaluate", {**base, "method": spec})
        for name, spec in methods.items()
        for i in range(n_images)
    ]


def run(model_spec: dict, images_spec: dict, n_images: int, cfg: EvaluateConfig, out: Path,
        workers: int = 1, device: str = "cpu", progress: bool | None = None) -> tuple[list, dict, dict]:
    """Run (or resume) every cell; ``(cells, records, stats)``."""
    cells = build_cells(model_spec, images_spec, n_images, cfg, device)
    opts = RunOptions(out=Path(out), workers=workers, device=device, seed=cfg.seed, progress=progress,
                      metrics=tuple(cfg.metrics))
    records, stats = run_cells(cells, opts, "evaluate")
    return cells, records, stats


def bound_methods(methods: list[str]) -> list[str]:
    """The methods that need the bound engine (refused for a TorchScript model)."""
    return [m for m in methods if m in _BOUND_METHODS]


_NOT_SETTINGS = {"self", "model", "inputs", "targets", "target", "explainer", "perturbation", "noise", "progress", "seed",
                 "groups", "kwargs", "args"}


def _defaults(cls_name: str) -> dict:
    import inspect

    from evax.bench.components import ComponentUnavailable, method_class, metric_class

    try:
        cls = metric_class(cls_name)
    except ComponentUnavailable:  # not a metric: a method
        cls = method_class(cls_name)
    out = {}
    for name, p in inspect.signature(cls).parameters.items():
        if name in _NOT_SETTINGS or p.default is inspect.Parameter.empty:
            continue
        out[name] = p.default if isinstance(p.default, (int, float, str, bool, type(None))) else repr(p.default)
    return out


def full_settings(cfg: EvaluateConfig) -> tuple[dict[str, dict], dict[str, dict]]:
    """Every hyper-parameter of every method and metric that runs: the class defaults overlaid
    with the specs (what the report prints)."""
    methods = {}
    for name, spec in method_specs(cfg).items():
        cls = spec.get("cls")
        methods[name] = {**(_defaults(cls) if cls else {}), **spec.get("kwargs", {})}
        if "groups_grid" in spec:
            methods[name]["groups"] = f"grid({spec['groups_grid']})"
    metrics = {}
    for name, spec in metric_specs(cfg).items():
        spec = dict(spec)
        cls = spec.pop("cls", {"infidelity": "Infidelity", "sensitivity": "MaxSensitivity"}.get(name))
        metrics[name] = {"class": cls, **_defaults(cls), **spec}
    return methods, metrics
