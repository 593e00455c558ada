"""The unit of work of the harness: one method on one image, all its metrics (a *cell*).

:func:`compute_cell` is a module-level function of a picklable :class:`Cell` (Ray ships it to
workers). It never raises: every failure becomes an entry of the record's ``errors`` with a
``permanent`` flag -- ``"n/a: ..."`` for a method that does not apply to the model
(:class:`~evax.errors.NotApplicableError`, kept in the cache like a number), ``"unavailable:
..."`` for a component not importable yet and ``"error: ..."`` for anything else (both
recomputed by the next run). A cell receives what the cache already holds for it (``prior``)
and computes only the missing metrics, reusing the cached explanation map.

Seeds: the image at dataset index ``i`` uses ``seed + i`` for the method's and the metrics'
generators, whatever the worker or the order -- this is what makes Ray and in-process runs
agree.
"""

from __future__ import annotations

import functools
import inspect
import json
import math
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from evax.bench.components import ComponentBroken, ComponentUnavailable, method_class, metric_class
from evax.bench.workers import torch_threads
from evax.core.variables import reduce_channels
from evax.errors import NotApplicableError


@dataclass
class Cell:
    """One (table, setting, method, image) unit; ``config`` is JSON-serialisable."""

    table: str
    setting: str
    method: str
    index: int
    kind: str
    config: dict
    threads: int | None = None
    prior: dict = field(default_factory=dict)
    only: tuple[str, ...] | None = None  # compute only these metrics (None: all of the config's)

    @property
    def key(self) -> tuple[str, str, str, int]:
        return (self.table, self.setting, self.method, self.index)

    @property
    def seed(self) -> int:
        return int(self.config.get("seed", 0)) + int(self.index)


# ------------------------------------------------------------------ models and data (cached per process)
@functools.lru_cache(maxsize=8)
def load_model(name: str, cache_dir: str | None = None, device: str = "cpu") -> nn.Module:
    """A zoo model, or ``"bench:mnist-tiny"`` (see :func:`tiny_mnist_net`), in eval mode on ``device``."""
    if name.startswith("bench:"):
        return tiny_mnist_net(name.split(":", 1)[1], cache_dir).to(device)
    from evax import zoo

    return zoo.load_model(name, progress=False).eval().to(device)


@functools.lru_cache(maxsize=4)
def load_user_model(spec_json: str, device: str = "cpu") -> nn.Module:
    """A model of ``evax evaluate`` from its JSON spec (:func:`evax.zoo.loaders.load_model` kwargs)."""
    from evax.zoo.loaders import load_model as load_any

    spec = json.loads(spec_json)
    return load_any(spec.pop("path_or_name"), **spec).model.to(device)


@functools.lru_cache(maxsize=4)
def load_user_images(spec_json: str):
    """The images of ``evax evaluate`` from their JSON spec (:func:`evax.zoo.images.load_images` kwargs)."""
    from evax.zoo.images import load_images

    spec = json.loads(spec_json)
    return load_images(spec.pop("spec"), tuple(spec.pop("input_shape")), **spec)


def _model(cfg: dict) -> nn.Module:
    if "user_model" in cfg:
        return load_user_model(json.dumps(cfg["user_model"], sort_keys=True), cfg.get("device", "cpu"))
    return load_model(cfg["model"], cfg.get("cache_dir"), cfg.get("device", "cpu"))


@functools.lru_cache(maxsize=8)
def load_data(name: str, split: str = "test"):
    from evax import zoo

    return zoo.load_dataset(name, split, progress=False)


TINY_NETS = {
    # name: (hidden widths, training set, epochs)
    "mnist-tiny": ((10, 10), "mnist", 2),
    "mnist-tiny-samples": ((6, 6), "mnist-samples", 30),  # offline, for tests only
}


def tiny_mnist_net(name: str = "mnist-tiny", cache_dir: str | None = None, seed: int = 0) -> nn.Module:
    """A tiny dense ReLU net (784-10-10-10, 20 ReLUs) whose exact MILP at eps 0.5 is tractable.

    No such net ships with the zoo, so it is trained here deterministically (a seeded
    ``torch.Generator`` for the initial weights and the batch order; Adam 1e-2, batch 128)
    for ``epochs`` over the training set of :data:`TINY_NETS` and cached as
    ``<cache_dir>/<name>.pt``. ``mnist-tiny`` trains 2 epochs on the 60k MNIST training images
    (a few seconds); ``mnist-tiny-samples`` (784-6-6-10) on the 20 shipped digits (offline
    tests only). With 784-16-16-10 one image's exact AO took about 300 s on the contended
    2-core CPU; 20 ReLUs keep it to seconds.
    """
    from evax.zoo.models import dense_mlp, init_with_generator

    hidden, dataset, epochs = TINY_NETS[name]
    model = dense_mlp(hidden=hidden)
    path = Path(cache_dir) / f"{name}.pt" if cache_dir else None
    if path is not None and path.exists():
        model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
        return model.eval()
    data = load_data(dataset, "test" if dataset.endswith("samples") else "train")
    g = torch.Generator().manual_seed(seed)
    init_with_generator(model, g)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    loss_fn = nn.CrossEntropyLoss()
    model.train()
    for _ in range(epochs):
        order = torch.randperm(len(data.labels), generator=g)
        for i in range(0, len(order), 128):
            idx = order[i : i + 128]
            loss = loss_fn(model(data.images[idx]), data.labels[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    model.eval()
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save(model.state_dict(), path)
    return model


# ------------------------------------------------------------------ explainers from JSON specs
class Explainer:
    """A method built from a spec, with ``raw(x, target) -> (N, C, H, W)`` and ``map(...) -> (N, H, W)``.

    Specs (JSON):

    * ``{"cls": "Saliency", "kwargs": {...}}`` -- an evax method (``evax.attribution.METHODS``);
    * ``{"captum": "Saliency", "init": {...}, "call": {...}}`` -- a Captum method used directly
      where the infidelity paper's variant is not an evax method (the *signed* gradient);
    * ``{"smooth": SPEC, "kwargs": {...}}`` -- :class:`evax.attribution.Smoothed` of SPEC (the
      "-SG" rows of the infidelity paper);
    * ``{"times_input": SPEC, "baseline": 0.0}`` -- ``Phi(x) * (x - x0)``, the global version
      of a local explanation (Yeh et al. Sec. 2.5).
    """

    def __init__(self, spec: dict, model: nn.Module, seed: int) -> None:
        self.spec, self.model, self.seed = spec, model, seed
        self.inner: Any = None
        self.obj: Any = None
        if "cls" in spec:
            cls = method_class(spec["cls"])
            kwargs = dict(spec.get("kwargs", {}))
            if "sizes" in kwargs:
                kwargs["sizes"] = tuple(kwargs["sizes"])
            if "groups_grid" in spec:
                from evax.groups import grid

                kwargs["groups"] = grid(int(spec["groups_grid"]))
            params = inspect.signature(cls).parameters
            if "seed" in params and "seed" not in kwargs:
                kwargs["seed"] = seed
            if "progress" in params:
                kwargs.setdefault("progress", False)
            self.obj = cls(model, **kwargs)
        elif "captum" in spec:
            import captum.attr as ca

            self.obj = getattr(ca, spec["captum"])(model, **spec.get("init", {}))
        elif "smooth" in spec:
            smoothed = method_class("Smoothed")
            self.inner = Explainer(spec["smooth"], model, seed)
            self.obj = smoothed(self.inner.raw, model=model, seed=seed, **spec.get("kwargs", {}))
        elif "times_input" in spec:
            self.inner = Explainer(spec["times_input"], model, seed)
        else:
            raise ValueError(f"bad explainer spec {spec!r}")
        self.reduce = spec.get("reduce", getattr(self.obj, "reduce", "sum"))
        self.last_explanation: Any = None

    def raw(self, inputs: torch.Tensor, target: Any = None) -> torch.Tensor:
        spec = self.spec
        if "times_input" in spec:
            return self.inner.raw(inputs, target) * (inputs - float(spec.get("baseline", 0.0)))
        if "captum" in spec:
            x = inputs.detach().clone().requires_grad_()
            out = self.obj.attribute(x, target=target, **spec.get("call", {}))
            return out.detach()
        if "smooth" in spec:
            out = self.obj.attribute(inputs, target)
            return out if out.shape == inputs.shape else out.reshape(inputs.shape)
        if hasattr(self.obj, "explain") and spec.get("explain"):
            ex = self.obj.explain(inputs, target)
            self.last_explanation = ex
            return ex.map.unsqueeze(1).expand(-1, inputs.shape[1], -1, -1)
        return self.obj.attribute_raw(inputs, target)

    def map(self, inputs: torch.Tensor, target: Any = None) -> torch.Tensor:
        return self.map_of(self.raw(inputs, target))

    def map_of(self, raw: torch.Tensor) -> torch.Tensor:
        """The ``(N, H, W)`` map of a raw ``(N, C, H, W)`` explanation of this method."""
        if "cls" in self.spec and "times_input" not in self.spec and hasattr(self.obj, "explain"):
            return raw[:, 0]  # EVA-family: the map is shared by the channels
        return reduce_channels(raw, self.reduce) if raw.ndim == 4 else raw


# ------------------------------------------------------------------ errors
def _describe(exc: BaseException) -> tuple[str, bool]:
    """``(message, permanent)`` for a failure; a :class:`ComponentBroken` (a module of evax that
    fails to import) is re-raised: that is a bug, never a cell's recorded error."""
    if isinstance(exc, ComponentBroken):
        raise exc
    if isinstance(exc, NotApplicableError):
        return f"n/a: {exc}", True
    if isinstance(exc, ComponentUnavailable):
        return f"unavailable: {exc}", False
    where = traceback.extract_tb(exc.__traceback__)[-1] if exc.__traceback__ else None
    loc = f" at {Path(where.filename).name}:{where.lineno}" if where else ""
    return f"error: {type(exc).__name__}: {exc}{loc}", False


def _finite(v: float) -> float | None:
    v = float(v)
    return v if math.isfinite(v) else None


# ------------------------------------------------------------------ the cell
def compute_cell(cell: Cell) -> dict:
    """Compute the missing parts of ``cell``; returns the full record (see the module docstring)."""
    prior = cell.prior or {}
    rec: dict[str, Any] = {
        "values": dict(prior.get("values", {})),
        "errors": {},
        "permanent": {},
        "extra": dict(prior.get("extra", {})),
        "tensors": dict(prior.get("tensors", {})),
        "seed": cell.seed,
    }
    # keep cached permanent errors (n/a)
    for k, msg in prior.get("errors", {}).items():
        if prior.get("permanent", {}).get(k):
            rec["errors"][k] = msg
            rec["permanent"][k] = True
    fn = _KINDS[cell.kind]
    with torch_threads(cell.threads):
        try:
            fn(cell, rec)
        except Exception as exc:  # noqa: BLE001 - a cell never raises: the error is recorded
            msg, permanent = _describe(exc)
            for m in _expected(cell):
                if m not in rec["values"] and m not in rec["errors"]:
                    rec["errors"][m] = msg
                    rec["permanent"][m] = permanent
    return rec


def _metric_names(cell: Cell) -> list[str]:
    names = list(cell.config.get("metrics", {}))
    return names if cell.only is None else [m for m in names if m in cell.only]


def _expected(cell: Cell) -> list[str]:
    return _metric_names(cell) + (["seconds"] if cell.config.get("timed", True) else [])


def _todo(cell: Cell, rec: dict) -> list[str]:
    return [m for m in _metric_names(cell) if m not in rec["values"] and m not in rec["errors"]]


def _explanation_inputs(cell: Cell, rec: dict):
    """The model, image and target of a cell that explains one image (label and target noted in
    ``rec``), and the metrics still to compute; ``None`` when the record is already complete."""
    model = _model(cell.config)
    x, target, label = _image(cell, model)
    rec["extra"].update(label=label, target=int(target[0]))
    todo = _todo(cell, rec)
    if not todo and "map" in rec["tensors"]:
        return None
    return model, x, target, todo


def _image(cell: Cell, model: nn.Module) -> tuple[torch.Tensor, torch.Tensor, int]:
    if "user_images" in cell.config:
        spec = {**cell.config["user_images"], "limit": cell.config.get("images_limit")}
        data = load_user_images(json.dumps(spec, sort_keys=True))
    else:
        data = load_data(cell.config["dataset"], cell.config.get("split", "test"))
    x = data.images[cell.index : cell.index + 1].clone().to(cell.config.get("device", "cpu"))
    with torch.no_grad():
        pred = model(x).argmax(1)
    return x, pred, int(data.labels[cell.index])


def _grid(cell: Cell):
    from evax.groups import grid

    return grid(int(cell.config.get("grid", 12)))


def _explanation_map(cell: Cell, rec: dict, model, x, target) -> torch.Tensor | None:
    """The cached map, or compute it (timed) with the cell's method."""
    if "map" in rec["tensors"]:
        return rec["tensors"]["map"].to(x.device)
    explainer = Explainer(cell.config["method"], model, cell.seed)
    t0 = time.perf_counter()
    m = explainer.map(x, target)
    rec["values"]["seconds"] = time.perf_counter() - t0
    m = m.detach().float()
    rec["tensors"]["map"] = m.cpu()
    ex = explainer.last_explanation
    if ex is not None:
        rec["extra"]["ao"] = [float(v) for v in ex.ao]
        if ex.certified_robust is not None:
            rec["extra"]["certified_robust"] = [bool(v) for v in ex.certified_robust]
    return m


def _attribution_cell(cell: Cell, rec: dict) -> None:
    """EVA paper Tables 1-3: explanation + Deletion, Insertion, muFidelity, Robustness-S_r (+ Tightness, certified)."""
    cfg = cell.config
    prepared = _explanation_inputs(cell, rec)
    if prepared is None:
        return
    model, x, target, todo = prepared
    try:
        phi = _explanation_map(cell, rec, model, x, target)
    except Exception as exc:  # noqa: BLE001
        msg, permanent = _describe(exc)
        for m in [*todo, "seconds"]:
            rec["errors"][m] = msg
            rec["permanent"][m] = permanent
        return
    groups = _grid(cell)
    for name in todo:
        mcfg = dict(cfg["metrics"][name])
        try:
            if name in ("tightness", "certified"):  # the AO bound; certified robust: AO < 0
                ao = rec["extra"].get("ao")
                if ao is None:
                    raise NotApplicableError(f"{name} is the AO bound of an EVA explanation")
                rec["values"][name] = float(ao[0]) if name == "tightness" else float(ao[0] < 0)
                continue
            _score_explanation(rec, name, mcfg, model, x, target, groups, cell.seed, phi)
        except Exception as exc:  # noqa: BLE001
            msg, permanent = _describe(exc)
            rec["errors"][name], rec["permanent"][name] = msg, permanent


def _score_explanation(rec: dict, name: str, mcfg: dict, model, x, target, groups, seed, phi) -> None:
    """Score ``phi`` with the metric of ``mcfg`` (Deletion, Insertion, MuFidelity, RobustnessSr):
    its value, and its curves and capped count when it has them, into ``rec``."""
    cls = metric_class(mcfg.pop("cls"))
    metric = cls(model, x, target, groups=groups, seed=seed, progress=False, **mcfg)
    out = metric(phi, detailed=True)  # a MetricResult (CurveResult, RobustnessResult...)
    rec["values"][name] = _finite(out.scores.flatten()[0])
    curves = getattr(out, "curves", None)
    if curves is not None:
        rec["extra"][f"{name}_curve"] = [float(v) for v in curves[0]]
        rec["extra"][f"{name}_fractions"] = [float(v) for v in out.fractions]
    capped = getattr(out, "capped", None)
    if capped is not None:
        rec["extra"][f"{name}_capped"] = int(capped.sum())


def _perturbation(spec: dict):
    cls = metric_class(spec["cls"])
    kwargs = dict(spec.get("kwargs", {}))
    if "sizes" in kwargs:
        kwargs["sizes"] = tuple(kwargs["sizes"])
    return cls(**kwargs)


def _infidelity_cell(cell: Cell, rec: dict) -> None:
    """Infidelity paper Table 1: INFD (Def. 2.1, optimal beta) and SENS_MAX (Def. 3.1) of one explanation."""
    cfg = cell.config
    model = _model(cfg)
    x, target, label = _image(cell, model)
    rec["extra"].update(label=label, target=int(target[0]))
    todo = _todo(cell, rec)
    if not todo:
        return
    try:
        explainer = Explainer(cfg["method"], model, cell.seed)
        if "raw" in rec["tensors"]:  # the raw explanation is what INFD and SENS_MAX score
            phi = rec["tensors"]["raw"].to(x.device)
        else:
            t0 = time.perf_counter()
            phi = explainer.raw(x, target).detach()
            rec["values"]["seconds"] = time.perf_counter() - t0
            rec["tensors"]["raw"] = phi.float().cpu()
            rec["tensors"]["map"] = reduce_channels(phi, "sum").float().cpu()
    except Exception as exc:  # noqa: BLE001
        msg, permanent = _describe(exc)
        for m in [*todo, "seconds"]:
            rec["errors"][m], rec["permanent"][m] = msg, permanent
        return
    for name in todo:
        mcfg = dict(cfg["metrics"][name])
        try:
            if name == "infd":
                cls = metric_class("Infidelity")
                pert = _perturbation(mcfg.pop("perturbation"))
                metric = cls(model, x, target, noise=pert, seed=cell.seed, progress=False, **mcfg)
                val = metric(phi.to(x.dtype))
            elif name == "sens_max":
                cls = metric_class("MaxSensitivity")
                metric = cls(model, x, target, seed=cell.seed, progress=False, **mcfg)
                val = metric(explainer.raw, explanations=phi.to(x.dtype))
            else:
                raise ValueError(f"unknown metric {name!r}")
            rec["values"][name] = _finite(torch.as_tensor(val).flatten()[0])
        except Exception as exc:  # noqa: BLE001
            msg, permanent = _describe(exc)
            rec["errors"][name], rec["permanent"][name] = msg, permanent


def _sanity_cell(cell: Cell, rec: dict) -> None:
    """Infidelity paper Table 2: Spearman correlation before/after randomising the last layer."""
    cfg = cell.config
    model = _model(cfg)
    x, target, label = _image(cell, model)
    rec["extra"].update(label=label, target=int(target[0]))
    if not _todo(cell, rec):
        return
    explainer = Explainer(cfg["method"], model, cell.seed)
    sanity = metric_class("RandomizationSanity")(model, x, target, layer=cfg.get("layer", "last"), seed=cell.seed)
    t0 = time.perf_counter()
    res = sanity(explainer.raw, detailed=True)
    rec["values"]["seconds"] = time.perf_counter() - t0
    rec["values"]["spearman"] = _finite(res.scores[0])
    rec["values"]["spearman_abs"] = _finite(res.scores_abs[0])
    rec["extra"]["layers"] = list(res.layers)
    rec["tensors"]["map"] = reduce_channels(res.original, "sum").float().cpu()
    rec["tensors"]["map_randomized"] = reduce_channels(res.randomized, "sum").float().cpu()


def _tightness_cell(cell: Cell, rec: dict) -> None:
    """EVA Table 2's extra block: the AO bound of the whole ball B by a bound method (exact = MILP)."""
    from evax.bounds.api import bound
    from evax.core.specs import margin_spec
    from evax.perturbation import Ball

    cfg = cell.config
    if "tightness" in rec["values"]:
        return
    model = _model(cfg)
    x, target, label = _image(cell, model)
    rec["extra"].update(label=label, target=int(target[0]))
    with torch.no_grad():
        n_classes = int(model(x[:1]).shape[1])  # the model's own number of classes
    spec = margin_spec(target, n_classes)
    t0 = time.perf_counter()
    b = bound(model, Ball(x, float(cfg["eps"])), cfg["bound_method"], spec)
    rec["values"]["seconds"] = time.perf_counter() - t0
    rec["values"]["tightness"] = float(b.upper.amax(dim=1)[0])


def _targeted_cell(cell: Cell, rec: dict) -> None:
    """Paper Fig. 7: EVA for the predicted class and targeted EVA towards each other class."""
    from evax.attribution.eva import EVA

    cfg = cell.config
    if "maps" in rec["tensors"]:
        return
    model = _model(cfg)
    x, target, label = _image(cell, model)
    rec["extra"].update(label=label, target=int(target[0]))
    eva = EVA(model, eps=float(cfg["eps"]), method=cfg["bound_method"], groups=_grid(cell))
    n_out = int(cfg.get("classes", 10))
    others = torch.tensor([c for c in range(n_out) if c != int(target[0])], device=x.device)
    t0 = time.perf_counter()
    plain = eva.explain(x, target)
    tgt = eva.explain(x.expand(len(others), -1, -1, -1), target.expand(len(others)), contrast=others)
    rec["values"]["seconds"] = time.perf_counter() - t0
    maps = torch.zeros(n_out, *x.shape[2:])
    maps[others.cpu()] = tgt.map.float().cpu()
    maps[int(target[0])] = plain.map[0].float().cpu()
    rec["tensors"]["maps"] = maps
    rec["extra"]["ao_targeted"] = {int(c): float(a) for c, a in zip(others, tgt.ao, strict=True)}
    rec["extra"]["ao"] = float(plain.ao[0])


def _evaluate_cell(cell: Cell, rec: dict) -> None:
    """``evax evaluate``: one method on one user image, the fidelity metrics (as
    :func:`_attribution_cell`) and infidelity / max-sensitivity (as :func:`_infidelity_cell`)
    of the same explanation (raw ``(1, C, H, W)`` kept for INFD, the map for the others)."""
    cfg = cell.config
    prepared = _explanation_inputs(cell, rec)
    if prepared is None:
        return
    model, x, target, todo = prepared
    explainer = Explainer(cfg["method"], model, cell.seed)
    try:
        if "raw" in rec["tensors"]:
            raw = rec["tensors"]["raw"].to(x.device)
        else:
            t0 = time.perf_counter()
            raw = explainer.raw(x, target).detach()
            rec["values"]["seconds"] = time.perf_counter() - t0
            rec["tensors"]["raw"] = raw.float().cpu()
            rec["tensors"]["map"] = explainer.map_of(raw).detach().float().cpu()
            ex = explainer.last_explanation
            if ex is not None:
                rec["extra"]["ao"] = [float(v) for v in ex.ao]
                if ex.certified_robust is not None:
                    rec["extra"]["certified_robust"] = [bool(v) for v in ex.certified_robust]
    except Exception as exc:  # noqa: BLE001
        msg, permanent = _describe(exc)
        for m in [*todo, "seconds"]:
            rec["errors"][m], rec["permanent"][m] = msg, permanent
        return
    phi = rec["tensors"]["map"].to(x.device)
    groups = _grid(cell)
    for name in todo:
        mcfg = dict(cfg["metrics"][name])
        try:
            if name == "infidelity":
                pert = _perturbation(mcfg.pop("perturbation"))
                metric = metric_class("Infidelity")(model, x, target, noise=pert, seed=cell.seed,
                                                    progress=False, **mcfg)
                rec["values"][name] = _finite(metric(raw.to(x.dtype)).flatten()[0])
            elif name == "sensitivity":
                metric = metric_class("MaxSensitivity")(model, x, target, seed=cell.seed, progress=False, **mcfg)
                val = metric(explainer.raw, explanations=raw.to(x.dtype))
                rec["values"][name] = _finite(val.flatten()[0])
            else:
                _score_explanation(rec, name, mcfg, model, x, target, groups, cell.seed, phi)
        except Exception as exc:  # noqa: BLE001
            msg, permanent = _describe(exc)
            rec["errors"][name], rec["permanent"][name] = msg, permanent


_KINDS = {
    "evaluate": _evaluate_cell,
    "attribution": _attribution_cell,
    "infidelity": _infidelity_cell,
    "sanity": _sanity_cell,
    "tightness": _tightness_cell,
    "targeted": _targeted_cell,
}


def config_json(config: dict) -> str:
    return json.dumps(config, sort_keys=True, default=str)
