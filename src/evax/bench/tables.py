"""One function per table of the two papers; each returns a pandas DataFrame and writes CSV/JSON.

=====================  =====================================================================
function               what it reproduces
=====================  =====================================================================
:func:`eva_table1`     EVA paper Table 1: Del., Ins., muFid., Rob.-S_r, time of 11 methods
                       on MNIST, CIFAR-10, ImageNet
:func:`eva_table2`     EVA paper Table 2: Tightness + the 4 metrics of EVA per bound method on
                       MNIST, and (ours) a tiny MNIST net where the exact AO (MILP) is known
:func:`eva_table3`     EVA paper Table 3: ablations Greedy-AS, Greedy-AO, EVA_emp, EVA
:func:`infidelity_table1`  Yeh et al. Table 1: SENS_MAX and INFD, local (MNIST) and global
                       (MNIST, CIFAR-10, ImageNet) explanations, with and without smoothing
:func:`infidelity_table2`  Yeh et al. Table 2: randomization sanity check (Spearman)
:func:`targeted`       EVA paper Fig. 7: MNIST digits x 10 target classes (targeted EVA)
=====================  =====================================================================

Each table is a list of *cells* (setting x method x image, see :mod:`evax.bench.cells`) run
through :func:`run_cells` -- resumable from ``OUT/cache`` and spread over workers -- then
averaged over the images. A cell's metric that failed is never averaged: the table shows
``n/a`` (the method does not apply, as in the paper) or the error (missing component,
failure), listed in ``DataFrame.attrs["errors"]`` and in the report.

Images: the first ``n`` of a seeded permutation of the test split (the paper samples its
images at random from the test set; the first ``n`` of the permutation do not change when
``n`` grows, so a larger run reuses the cache); sample sets (20 images) are taken in order.
The explained class is the model's prediction. Seeds: ``seed + dataset index`` per image.
"""

from __future__ import annotations

import json
import math
import platform
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from evax.bench import cells as cells_mod
from evax.bench.cache import ResultCache, fingerprint
from evax.bench.published import EVA_TABLE1_IMAGES, PUBLISHED
from evax.bench.workers import run_tasks
from evax.errors import InvalidInputError

TABLES = ("eva-table1", "eva-table2", "eva-table3", "infidelity-table1", "infidelity-table2", "targeted")


# ------------------------------------------------------------------ settings
@dataclass(frozen=True)
class Setting:
    """A dataset/model block of a table."""

    key: str
    model: str
    dataset: str
    n: int  # default number of images
    note: str = ""
    extra: dict = field(default_factory=dict)


MNIST = Setting("mnist", "mnist-mlp", "mnist", 50, "the zoo's dense 784-256-128-64-32-10 MLP, MNIST test set")
MNIST_OFFLINE = Setting("mnist", "mnist-mlp", "mnist-samples", 4, "the zoo's dense MLP, 20 shipped MNIST digits")
CIFAR = Setting("cifar10", "cifar10-cnn", "cifar10-samples", 4, "the zoo's Keras CNN, foolbox's 20 CIFAR-10 samples")
IMAGENET = Setting(
    "imagenet", "imagenet-efficientnet-lite0", "imagenet-samples", 2, "EfficientNet-Lite0, foolbox's 20 ImageNet photos"
)


def _mnist(offline: bool) -> Setting:
    return MNIST_OFFLINE if offline else MNIST


# ------------------------------------------------------------------ budgets
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


def metric_configs(quick: bool) -> dict[str, dict]:
    """Deletion / Insertion / muFidelity / Robustness-S_r as App. F (12x12 grid variables, uniform
    random baseline, softmax score); ``quick`` cuts the sampling budgets for tests."""
    rob = {"cls": "RobustnessSr", "steps": 20, "restarts": 1, "max_iter": 12, "tol": 1e-2}
    if quick:
        rob = {"cls": "RobustnessSr", "steps": 5, "max_iter": 4, "tol": 0.1, "fractions": [0.25, 0.5, 1.0]}
    return {
        "deletion": {"cls": "Deletion", "baseline": "uniform"},
        "insertion": {"cls": "Insertion", "baseline": "uniform"},
        "mufidelity": {"cls": "MuFidelity", "baseline": "uniform", "n_subsets": 32 if quick else 128},
        "robustness": rob,
    }


def _table1_methods(setting: str, quick: bool) -> dict[str, dict]:
    """The 11 methods of Table 1 as explainer specs (App. E hyper-parameters)."""
    m = 8 if quick else 100
    eva = dict(eva_settings(setting))
    if quick:
        eva["method"] = "ibp"  # smoke-test budget: the cheapest bound method
    if setting == "imagenet":
        eva_spec = {
            "cls": "HybridEVA",
            "kwargs": {"split": eva["split"], "eps": eva["eps"], "method": eva["method"],
                       "n_samples": 8 if quick else 64},
            "explain": True,
        }
    else:
        eva_spec = {"cls": "EVA", "kwargs": {"eps": eva["eps"], "method": eva["method"]}, "explain": True}
    return {
        "Saliency": {"cls": "Saliency"},
        "GradInput": {"cls": "GradientInput"},
        "SmoothGrad": {"cls": "SmoothGrad", "kwargs": {"n_samples": m}},
        "VarGrad": {"cls": "VarGrad", "kwargs": {"n_samples": m}},
        "InteGrad": {"cls": "IntegratedGradients", "kwargs": {"n_steps": max(m, 2)}},
        "Occlusion": {"cls": "Occlusion"},
        "GradCAM": {"cls": "GradCAM"},
        "GradCAM++": {"cls": "GradCAMPlusPlus"},
        "RISE": {"cls": "RISE", "kwargs": {"n_masks": 200 if quick else (2000 if setting == "imagenet" else 6000)}},
        "Greedy-AS": {"cls": "GreedyAS", "kwargs": _greedy_budget(quick)},
        "EVA": eva_spec,
    }


def _greedy_budget(quick: bool) -> dict:
    # Greedy-AS / Greedy-AO (issue 5): budgets configurable; the quick one keeps tests short
    return {"n_subsets": 8, "pgd_steps": 5} if quick else {}


# ------------------------------------------------------------------ running cells
@dataclass
class RunOptions:
    """How to run: output folder, workers, device, seeds, thread count, progress bars."""

    out: Path
    workers: int = 1
    address: str | None = None
    device: str = "cpu"
    seed: int = 0
    threads: int | None = None
    progress: bool | None = None
    quick: bool = False
    offline: bool = False
    metrics: list[str] | None = None  # only these metric columns (None: all)

    @property
    def cache(self) -> ResultCache:
        return ResultCache(self.out / "cache")


def image_indices(dataset: str, n: int, seed: int) -> list[int]:
    """The images of a run: the first ``n`` of a seeded permutation (sample sets: in order)."""
    data = cells_mod.load_data(dataset, "test")
    total = len(data.labels)
    if n < 1:
        raise InvalidInputError(f"n must be >= 1, got {n}")
    if total <= 100:
        return list(range(min(n, total)))
    g = torch.Generator().manual_seed(seed)
    return torch.randperm(total, generator=g)[:n].tolist()


def run_cells(cells: list[cells_mod.Cell], opts: RunOptions, desc: str) -> tuple[dict, dict]:
    """Run ``cells`` (cache first), store their records; returns ``(records, stats)`` keyed by
    ``cell.key``. ``stats`` counts the cells taken from the cache and the ones computed."""
    cache = opts.cache
    records: dict[tuple, dict] = {}
    todo: list[cells_mod.Cell] = []
    fps = {}
    _restrict_metrics(cells, opts.metrics)
    for c in cells:
        # the device and the cache folder are left out: a run on another device, or a moved
        # output folder, reuses the cells (same maths); so is how many user images are read
        # (evax evaluate --n): a cell's image is the same whatever the count
        cfg = {k: v for k, v in c.config.items() if k not in ("device", "cache_dir", "images_limit")}
        fp = fingerprint({"kind": c.kind, "config": cfg, "index": c.index})
        fps[c.key] = fp
        prior = cache.get(c.key, fp)
        if prior is not None and _complete(c, prior):
            records[c.key] = prior
            continue
        c.prior = prior or {}
        c.threads = opts.threads
        todo.append(c)
    computed = 0
    for i, rec in run_tasks(cells_mod.compute_cell, todo, opts.workers, opts.address, opts.progress, desc):
        c = todo[i]
        tensors = rec.pop("tensors", {})
        # a non-permanent error is not stored: the next run retries it
        stored = dict(rec)
        stored["errors"] = {k: v for k, v in rec["errors"].items() if rec["permanent"].get(k)}
        cache.put(c.key, fps[c.key], stored, tensors)
        rec["tensors"] = tensors
        records[c.key] = rec
        computed += 1
    return records, {"cached": len(cells) - len(todo), "computed": computed}


def _restrict_metrics(cells: list[cells_mod.Cell], keep: list[str] | None) -> None:
    """Mark the cells to compute only the metrics ``keep`` (not part of their fingerprint)."""
    if keep is None:
        return
    known = {m for c in cells for m in c.config.get("metrics", {})}
    bad = [m for m in keep if m not in known]
    if bad:
        raise InvalidInputError(f"unknown metrics {bad}; this table has {sorted(known)}")
    for c in cells:
        c.only = tuple(keep)


def _complete(c: cells_mod.Cell, rec: dict) -> bool:
    wanted = cells_mod._expected(c)
    have = set(rec.get("values", {})) | set(rec.get("errors", {}))
    if c.kind == "targeted":
        return "maps" in rec.get("tensors", {})
    return all(m in have for m in wanted)


def _aggregate(
    name: str, cells: list[cells_mod.Cell], records: dict, metrics: list[str]
) -> tuple[list[dict], dict]:
    """Long-form rows ``{setting, method, metric, mean, std, n, error}`` averaged over images."""
    groups: dict[tuple[str, str], list[cells_mod.Cell]] = {}
    for c in cells:
        groups.setdefault((c.setting, c.method), []).append(c)
    rows, errors = [], {}
    for (setting, method), cs in groups.items():
        for metric in metrics:
            vals, errs = [], []
            for c in cs:
                rec = records.get(c.key, {})
                if metric in rec.get("values", {}) and rec["values"][metric] is not None:
                    vals.append(float(rec["values"][metric]))
                elif metric in rec.get("errors", {}):
                    errs.append(rec["errors"][metric])
                elif metric in rec.get("values", {}):
                    errs.append("error: not finite")
            expected = metric in cells_mod._expected(cs[0])
            if not expected:
                continue
            row = {"table": name, "setting": setting, "method": method, "metric": metric, "n": len(cs)}
            if errs or len(vals) < len(cs):
                msg = errs[0] if errs else "error: missing"
                row.update(mean=None, std=None, error=msg, n_ok=len(vals))
                errors[(setting, method, metric)] = msg
            else:
                t = torch.tensor(vals, dtype=torch.float64)
                row.update(
                    mean=float(t.mean()), std=float(t.std()) if len(vals) > 1 else 0.0, error=None, n_ok=len(vals)
                )
            rows.append(row)
    return rows, errors


def _dataframe(rows: list[dict], method_order: list[str], setting_order: list[str], metrics: list[str]):
    import pandas as pd

    cols = [(s, m) for s in setting_order for m in metrics if any(r["setting"] == s and r["metric"] == m for r in rows)]
    df = pd.DataFrame(
        index=pd.Index(method_order, name="method"),
        columns=pd.MultiIndex.from_tuples(cols, names=["setting", "metric"]),
        dtype=float,
    )
    for r in rows:
        if r["mean"] is not None and (r["setting"], r["metric"]) in df.columns:
            df.loc[r["method"], (r["setting"], r["metric"])] = r["mean"]
    return df


def machine_info() -> dict:
    """Hardware and software of the run, for the report."""
    import os

    info = {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cpu": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    info["cpu"] = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return info


def _finish(
    name: str,
    cells: list[cells_mod.Cell],
    records: dict,
    stats: dict,
    metrics: list[str],
    opts: RunOptions,
    settings: dict[str, Any],
    notes: list[str],
    started: float,
):
    """Aggregate, build the DataFrame, write ``OUT/<name>.csv`` and ``OUT/<name>.json``."""
    methods = list(dict.fromkeys(c.method for c in cells))
    setting_keys = list(dict.fromkeys(c.setting for c in cells))
    rows, errors = _aggregate(name, cells, records, metrics)
    df = _dataframe(rows, methods, setting_keys, metrics)
    n_images = {s: len({c.index for c in cells if c.setting == s}) for s in setting_keys}
    meta = {
        "table": name,
        "settings": settings,
        "n_images": n_images,
        "seed": opts.seed,
        "seeds": "per image: seed + dataset index",
        "quick": opts.quick,
        "workers": opts.workers,
        "address": opts.address,
        "device": opts.device,
        "machine": machine_info(),
        "cells": stats,
        "wall_seconds": time.perf_counter() - started,
        "notes": notes,
        "published": PUBLISHED.get(name),
        "published_time_images": EVA_TABLE1_IMAGES if name == "eva-table1" else None,
    }
    opts.out.mkdir(parents=True, exist_ok=True)
    flat = df.copy()
    flat.columns = [f"{s}/{m}" for s, m in df.columns]
    flat.to_csv(opts.out / f"{name}.csv")
    per_image = [
        {"setting": c.setting, "method": c.method, "index": c.index, **records.get(c.key, {}).get("values", {}),
         "errors": records.get(c.key, {}).get("errors", {})}
        for c in cells
    ]
    meta["figures"] = _figures(name, cells, records, opts.out)
    (opts.out / f"{name}.json").write_text(
        json.dumps({"meta": meta, "rows": rows, "images": per_image}, indent=1, default=str)
    )
    df.attrs.update(errors=errors, meta=meta, rows=rows)
    return df


def _figures(name: str, cells: list[cells_mod.Cell], records: dict, out: Path, max_images: int = 4) -> list[str]:
    """Heatmap grid (images x methods) per setting and mean Deletion/Insertion curves."""
    from evax.bench.figures import curves_figure, method_grid

    written = []
    for setting in dict.fromkeys(c.setting for c in cells):
        cs = [c for c in cells if c.setting == setting]
        idxs = list(dict.fromkeys(c.index for c in cs))[:max_images]
        methods = list(dict.fromkeys(c.method for c in cs))
        maps: dict[str, list] = {m: [] for m in methods}
        any_map = False
        for idx in idxs:
            for m in methods:
                rec = records.get((name, setting, m, idx), {})
                t = rec.get("tensors", {}).get("map")
                if t is not None:
                    t = t[0] if t.ndim == 3 else t
                    any_map = True
                maps[m].append(t)
        if any_map:
            data = cells_mod.load_data(cs[0].config["dataset"], "test")
            images = data.images[idxs]
            path = out / f"{name}-{setting}-heatmaps.png"
            method_grid(images, maps, path, [f"#{i} (label {int(data.labels[i])})" for i in idxs])
            written.append(path.name)
        curves: dict[str, dict] = {}
        for metric in ("deletion", "insertion"):
            for m in methods:
                rows = [records.get((name, setting, m, i), {}).get("extra", {}) for i in
                        dict.fromkeys(c.index for c in cs)]
                cv = [r[f"{metric}_curve"] for r in rows if f"{metric}_curve" in r]
                if cv and all(len(v) == len(cv[0]) for v in cv):
                    fr = next(r[f"{metric}_fractions"] for r in rows if f"{metric}_fractions" in r)
                    curves.setdefault(metric, {})[m] = (fr, torch.tensor(cv).mean(0).tolist())
        if curves:
            path = out / f"{name}-{setting}-curves.png"
            curves_figure(curves, path, f"{name} {setting}")
            written.append(path.name)
    return written


def _setting_meta(s: Setting, n: int, **extra) -> dict:
    return {"model": s.model, "dataset": s.dataset, "n": n, "note": s.note, **extra}


def _options(out, workers, address, device, seed, threads, progress, quick, offline, metrics=None) -> RunOptions:
    if workers < 1:
        raise InvalidInputError(f"workers must be >= 1, got {workers}")
    if metrics is not None:
        if isinstance(metrics, str) or not metrics:
            raise InvalidInputError(f"metrics must be a non-empty list of metric names, got {metrics!r}")
        metrics = list(dict.fromkeys(metrics))
    return RunOptions(Path(out), workers, address, device, seed, threads, progress, quick, offline, metrics)


_COMMON_DOC = """
    Args:
        n: images per setting (default: each setting's ``Setting.n``; the paper: 500/500/100).
        out: output folder (CSV/JSON here, the cache under ``out/cache``).
        settings: subset of the table's settings (e.g. ``["mnist"]``).
        workers, address: Ray workers / existing cluster (see :mod:`evax.bench.workers`).
        device: ``"cpu"`` or ``"cuda"``.
        seed: base seed (image ``i`` uses ``seed + i``).
        threads: torch threads per cell (None: unchanged).
        quick: reduced budgets (tests).
        offline: MNIST from the 20 shipped digits instead of the fetched test set.
        progress: tqdm bars (None: when stderr is a TTY).
        metrics: compute only these metric columns (e.g. ``["deletion", "insertion"]``; None: all).
            The cache is shared with full runs: a later run without the filter computes only
            the missing metrics and reuses the cached explanations.
"""


def _select(all_settings: dict[str, Setting], settings) -> list[Setting]:
    keys = list(all_settings) if settings is None else list(settings)
    bad = [k for k in keys if k not in all_settings]
    if bad:
        raise InvalidInputError(f"unknown settings {bad}; this table has {list(all_settings)}")
    return [all_settings[k] for k in keys]


def _only(methods: dict, keep: list[str] | None) -> dict:
    """Restrict a table's rows to ``keep`` (None: all)."""
    if keep is None:
        return methods
    bad = [m for m in keep if m not in methods]
    if bad:
        raise InvalidInputError(f"unknown methods {bad}; this table has {list(methods)}")
    return {k: v for k, v in methods.items() if k in keep}


def _within(keep: list[str] | None, rows: dict) -> list[str] | None:
    return None if keep is None else [m for m in keep if m in rows]


def _attr_cells(name, s: Setting, methods: dict, metrics: dict, n, opts: RunOptions, extra_cfg=None):
    cells = []
    for idx in image_indices(s.dataset, n or s.n, opts.seed):
        for mname, spec in methods.items():
            cfg = {
                "model": s.model, "dataset": s.dataset, "method": spec, "metrics": metrics, "grid": 12,
                "seed": opts.seed, "device": opts.device, "cache_dir": str(opts.out / "cache" / "models"), **(extra_cfg or {}),
            }
            cells.append(cells_mod.Cell(name, s.key, mname, idx, "attribution", cfg))
    return cells


# ------------------------------------------------------------------ EVA Table 1
def eva_table1(
    n: int | None = None, out: str | Path = "bench-out", settings=None, workers: int = 1, address: str | None = None,
    device: str = "cpu", seed: int = 0, threads: int | None = None, quick: bool = False, offline: bool = False,
    progress: bool | None = None, methods: list[str] | None = None,
    metrics: list[str] | None = None,
):
    """EVA paper Table 1: Deletion (lower better), Insertion, muFidelity (higher better),
    Robustness-S_r (lower better) and seconds per explanation for Saliency, Grad x Input,
    SmoothGrad, VarGrad, IG, Occlusion, Grad-CAM, Grad-CAM++, RISE, Greedy-AS and EVA on MNIST
    (EVA: IBP+Forward+Backward, eps 0.5, 12x12 grid), CIFAR-10 (see :func:`eva_settings`) and
    ImageNet (hybrid EVA at the penultimate layer). Metrics on the 12x12 grid cells (App. F).
    """
    opts = _options(out, workers, address, device, seed, threads, progress, quick, offline, metrics)
    started = time.perf_counter()
    all_s = {"mnist": _mnist(offline), "cifar10": CIFAR, "imagenet": IMAGENET}
    metrics = metric_configs(quick)
    cells, meta = [], {}
    for s in _select(all_s, settings):
        cells += _attr_cells("eva-table1", s, _only(_table1_methods(s.key, quick), methods), metrics, n, opts)
        meta[s.key] = _setting_meta(s, n or s.n, eva=eva_settings(s.key))
    records, stats = run_cells(cells, opts, "eva-table1")
    notes = [
        "time = seconds per explanation on this machine (the paper: total for 500/500/100 on a P100; "
        "the report divides the paper's time by its image count)",
        "Robustness-S_r budget: " + json.dumps(metrics["robustness"]),
    ]
    return _finish("eva-table1", cells, records, stats, [*metrics, "seconds"], opts, meta, notes, started)


# ------------------------------------------------------------------ EVA Table 2
BOUND_METHODS = ("ibp", "forward", "backward", "ibp+forward+backward")


def eva_table2(
    n: int | None = None, out: str | Path = "bench-out", settings=None, workers: int = 1, address: str | None = None,
    device: str = "cpu", seed: int = 0, threads: int | None = None, quick: bool = False, offline: bool = False,
    progress: bool | None = None, tiny_n: int | None = None, methods: list[str] | None = None,
    metrics: list[str] | None = None,
):
    """EVA paper Table 2: Tightness (mean guaranteed upper bound of AO(x, B), lower = tighter),
    Deletion, Insertion, muFidelity, Robustness-S_r of EVA with IBP, Forward, Backward and
    IBP+Forward+Backward on the MNIST MLP (eps 0.5, 12x12 grid).

    Setting ``mnist-tiny`` (not in the paper): a tiny 784-10-10-10 ReLU net on MNIST where the
    *exact* AO(x, B) is computed by MILP (``method="exact"``), next to the AO bound of each
    relaxation on the same images: how far each relaxation is from the truth. The tiny net is
    trained by the harness (2 epochs, seeded; see :func:`evax.bench.cells.tiny_mnist_net`)
    because no zoo net is small enough for the MILP at eps 0.5 (the MLP has 480 ReLUs, the
    MILP handles up to 400 binaries and takes exponential time in them).
    ``tiny_n``: images of the tiny-net block (default ``n`` or 4).
    """
    opts = _options(out, workers, address, device, seed, threads, progress, quick, offline, metrics)
    started = time.perf_counter()
    mnist = _mnist(offline)
    keys = ["mnist", "mnist-tiny"] if settings is None else list(settings)
    bad = [k for k in keys if k not in ("mnist", "mnist-tiny")]
    if bad:
        raise InvalidInputError(f"unknown settings {bad}; this table has ['mnist', 'mnist-tiny']")
    metrics = {**metric_configs(quick), "tightness": {}}
    cells, meta = [], {}
    if "mnist" in keys:
        rows = {bm: {"cls": "EVA", "kwargs": {"eps": 0.5, "method": bm}, "explain": True} for bm in BOUND_METHODS}
        cells += _attr_cells("eva-table2", mnist, _only(rows, _within(methods, rows)), metrics, n, opts)
        meta["mnist"] = _setting_meta(mnist, n or mnist.n, eps=0.5, grid=12)
    if "mnist-tiny" in keys:
        tiny = "bench:mnist-tiny-samples" if offline else "bench:mnist-tiny"
        ts = Setting("mnist-tiny", tiny, mnist.dataset, 4, "784-10-10-10 ReLU net trained by the harness (2 epochs, seed 0)")
        for idx in image_indices(ts.dataset, tiny_n or n or ts.n, opts.seed):
            tiny_rows = {b: b for b in (*BOUND_METHODS, "exact")}
            for bm in _only(tiny_rows, _within(methods, tiny_rows)):
                cfg = {"model": tiny, "dataset": ts.dataset, "bound_method": bm, "eps": 0.5, "seed": opts.seed, "device": opts.device,
                       "metrics": {"tightness": {}}, "cache_dir": str(opts.out / "cache" / "models")}
                cells.append(cells_mod.Cell("eva-table2", "mnist-tiny", bm, idx, "tightness", cfg))
        meta["mnist-tiny"] = _setting_meta(ts, tiny_n or n or ts.n, eps=0.5)
    records, stats = run_cells(cells, opts, "eva-table2")
    notes = [
        "tightness = mean over images of the AO(x, B) upper bound of the whole ball (EVA's Explanation.ao)",
        "mnist-tiny block: only Tightness (the AO of the whole ball; 'exact' = MILP ground truth); "
        "the exact EVA map would need 145 MILPs per image",
    ]
    return _finish("eva-table2", cells, records, stats, [*metrics, "seconds"], opts, meta, notes, started)


# ------------------------------------------------------------------ EVA Table 3
def eva_table3(
    n: int | None = None, out: str | Path = "bench-out", settings=None, workers: int = 1, address: str | None = None,
    device: str = "cpu", seed: int = 0, threads: int | None = None, quick: bool = False, offline: bool = False,
    progress: bool | None = None, methods: list[str] | None = None,
    metrics: list[str] | None = None,
):
    """EVA paper Table 3 (App. B ablations): Greedy-AS, Greedy-AO (Greedy-AS with the AO
    estimator), EVA_emp (Eq. 3-4, uniform samples of the ball) and EVA, same metrics as Table 1.
    """
    opts = _options(out, workers, address, device, seed, threads, progress, quick, offline, metrics)
    started = time.perf_counter()
    all_s = {"mnist": _mnist(offline), "cifar10": CIFAR, "imagenet": IMAGENET}
    metrics = metric_configs(quick)
    cells, meta = [], {}
    for s in _select(all_s, settings):
        t1 = _table1_methods(s.key, quick)
        eva = dict(eva_settings(s.key))
        if quick:
            eva["method"] = "ibp"
        rows = {
            "Greedy-AS": t1["Greedy-AS"],
            "Greedy-AO": {"cls": "GreedyAO", "kwargs": {"eps": eva["eps"], "method": eva["method"],
                                                         **({"n_subsets": 8} if quick else {})}},
            "EVA_emp": {"cls": "EmpiricalEVA", "kwargs": {"eps": eva["eps"], "n_samples": 64 if quick else 1000},
                        "explain": True},
            "EVA": t1["EVA"],
        }
        cells += _attr_cells("eva-table3", s, _only(rows, methods), metrics, n, opts)
        meta[s.key] = _setting_meta(s, n or s.n, eva=eva)
    records, stats = run_cells(cells, opts, "eva-table3")
    notes = ["time = seconds per explanation (the paper: total for 100 explanations)"]
    return _finish("eva-table3", cells, records, stats, [*metrics, "seconds"], opts, meta, notes, started)


# ------------------------------------------------------------------ Infidelity Table 1
def _grad(local: bool) -> dict:
    spec = {"captum": "Saliency", "call": {"abs": False}}
    return spec if local else {"times_input": spec}


def _ig(local: bool, steps: int) -> dict:
    # the library's IG (with its trapezoid correction); local IG = the path-averaged gradient
    # (multiply_by_inputs=False), global = IG itself
    return {"cls": "IntegratedGradients",
            "kwargs": {"n_steps": steps, "method": "riemann_trapezoid", "multiply_by_inputs": not local}}


def _gbp(local: bool) -> dict:
    spec = {"cls": "GuidedBackprop"}
    return spec if local else {"times_input": spec}


def _infd_methods(local: bool, quick: bool, setting: str) -> dict[str, dict]:
    steps = 8 if quick else 50
    sg = {"n_samples": 4 if quick else 50, "radius": 0.2}
    rows = {
        "Grad": _grad(local), "Grad-SG": {"smooth": _grad(local), "kwargs": sg},
        "IG": _ig(local, steps), "IG-SG": {"smooth": _ig(local, steps), "kwargs": sg},
        "GBP": _gbp(local), "GBP-SG": {"smooth": _gbp(local), "kwargs": sg},
    }
    if local:
        rows["Noisy Baseline"] = {"cls": "OptimalNoisyBaseline", "kwargs": {"n_samples": 200 if quick else 20000}}
    else:
        rows["SHAP"] = {"cls": "KernelSHAP", "kwargs": {"n_samples": 32 if quick else 500}}
        rows["Square"] = {"cls": "OptimalSquare", "kwargs": _square_kwargs(setting, quick)}
    return rows


def _square_kwargs(setting: str, quick: bool) -> dict:
    if setting == "imagenet-global" or quick:
        # 224x224: the exhaustive square set (~500k patches) is out of reach on a CPU; sampled
        # squares of larger sides, regression on a 16x16 grid of groups
        return {"sizes": [16, 32, 48] if setting == "imagenet-global" else [2, 4, 6], "exhaustive": False,
                "n_samples": 64 if quick else 2000, "groups_grid": 16 if setting == "imagenet-global" else 7}
    return {}


def _infd_metrics(local: bool, setting: str, quick: bool) -> dict:
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
    return {"sens_max": sens, "infd": infd}


INFD_SETTINGS = {
    "mnist-local": ("mnist", True),
    "mnist-global": ("mnist", False),
    "cifar10-global": ("cifar10", False),
    "imagenet-global": ("imagenet", False),
}


def infidelity_table1(
    n: int | None = None, out: str | Path = "bench-out", settings=None, workers: int = 1, address: str | None = None,
    device: str = "cpu", seed: int = 0, threads: int | None = None, quick: bool = False, offline: bool = False,
    progress: bool | None = None, methods: list[str] | None = None,
    metrics: list[str] | None = None,
):
    """Yeh et al. Table 1: SENS_MAX (Def. 3.1, relative, L-inf ball r = 0.2 local / 0.1 global,
    50 samples) and INFD (Def. 2.1 with the optimal beta; Noisy-Baseline perturbation for local
    explanations, all squares of side 1..10 for global ones) of Grad, IG, GBP, their smoothed
    versions (-SG), SHAP and the optimal explanations (Noisy Baseline, Square).

    Local explanations: the signed gradient, the path-averaged gradient (local IG), guided
    backprop; global ones multiply by ``x - 0`` (IG is global as is). The model's logit of the
    predicted class is explained and scored.
    """
    opts = _options(out, workers, address, device, seed, threads, progress, quick, offline, metrics)
    started = time.perf_counter()
    base = {"mnist": _mnist(offline), "cifar10": CIFAR, "imagenet": IMAGENET}
    keys = list(INFD_SETTINGS) if settings is None else list(settings)
    bad = [k for k in keys if k not in INFD_SETTINGS]
    if bad:
        raise InvalidInputError(f"unknown settings {bad}; this table has {list(INFD_SETTINGS)}")
    cells, meta = [], {}
    for key in keys:
        ds, local = INFD_SETTINGS[key]
        s = base[ds]
        metrics = _infd_metrics(local, key, quick)
        rows = _infd_methods(local, quick, key)
        for mname, spec in rows.items():
            if spec.get("cls") == "OptimalSquare" and "groups_grid" in spec.get("kwargs", {}):
                kw = dict(spec["kwargs"])
                rows[mname] = {"cls": "OptimalSquare", "kwargs": kw, "groups_grid": kw.pop("groups_grid")}
        keep = _within(methods, rows)
        for idx in image_indices(s.dataset, n or s.n, opts.seed):
            for mname, spec in _only(rows, keep).items():
                cfg = {"model": s.model, "dataset": s.dataset, "method": spec, "metrics": metrics,
                       "seed": opts.seed, "device": opts.device, "cache_dir": str(opts.out / "cache" / "models")}
                cells.append(cells_mod.Cell("infidelity-table1", key, mname, idx, "infidelity", cfg))
        meta[key] = _setting_meta(s, n or s.n, local=local, **{k: v for k, v in metrics.items()})
    records, stats = run_cells(cells, opts, "infidelity-table1")
    notes = ["INFD normalised by the optimal beta (the authors' evaluation); SENS_MAX relative to ||Phi(x)||"]
    return _finish("infidelity-table1", cells, records, stats, ["sens_max", "infd", "seconds"], opts, meta, notes,
                   started)


# ------------------------------------------------------------------ Infidelity Table 2
def infidelity_table2(
    n: int | None = None, out: str | Path = "bench-out", settings=None, workers: int = 1, address: str | None = None,
    device: str = "cpu", seed: int = 0, threads: int | None = None, quick: bool = False, offline: bool = False,
    progress: bool | None = None, methods: list[str] | None = None,
    metrics: list[str] | None = None,
):
    """Yeh et al. Table 2: Spearman rank correlation between the (global) explanations of the
    model and of the model with its last layer re-initialised, signed and absolute, for Grad,
    Grad-SG, IG, IG-SG and Square (low = passes the sanity check). The paper uses ResNet-50 on
    ImageNet; the default here is the MNIST MLP and the CIFAR-10 CNN (ImageNet optional:
    ``settings=["imagenet"]``).
    """
    opts = _options(out, workers, address, device, seed, threads, progress, quick, offline, metrics)
    started = time.perf_counter()
    all_s = {"mnist": _mnist(offline), "cifar10": CIFAR, "imagenet": IMAGENET}
    chosen = _select(all_s, settings if settings is not None else ["mnist", "cifar10"])
    cells, meta = [], {}
    for s in chosen:
        key = {"mnist": "mnist-global", "cifar10": "cifar10-global", "imagenet": "imagenet-global"}[s.key]
        m = _infd_methods(False, quick, key)
        rows = {k: m[k] for k in ("Grad", "Grad-SG", "IG", "IG-SG", "Square")}
        if "groups_grid" in rows["Square"].get("kwargs", {}):
            kw = dict(rows["Square"]["kwargs"])
            rows["Square"] = {"cls": "OptimalSquare", "kwargs": kw, "groups_grid": kw.pop("groups_grid")}
        for idx in image_indices(s.dataset, n or s.n, opts.seed):
            for mname, spec in _only(rows, methods).items():
                cfg = {"model": s.model, "dataset": s.dataset, "method": spec, "layer": "last",
                       "metrics": {"spearman": {}, "spearman_abs": {}}, "seed": opts.seed, "device": opts.device}
                cells.append(cells_mod.Cell("infidelity-table2", s.key, mname, idx, "sanity", cfg))
        meta[s.key] = _setting_meta(s, n or s.n, layer="last")
    records, stats = run_cells(cells, opts, "infidelity-table2")
    notes = ["the paper: ResNet-50 on ImageNet; here: the zoo's models (see settings)"]
    return _finish("infidelity-table2", cells, records, stats, ["spearman", "spearman_abs", "seconds"], opts, meta,
                   notes, started)


# ------------------------------------------------------------------ targeted (Fig. 7)
def targeted(
    n: int | None = None, out: str | Path = "bench-out", settings=None, workers: int = 1, address: str | None = None,
    device: str = "cpu", seed: int = 0, threads: int | None = None, quick: bool = False, offline: bool = False,
    progress: bool | None = None, method: str | None = None, methods: list[str] | None = None,
    metrics: list[str] | None = None,
):
    """EVA paper Fig. 7 (Sec. 4.3, App. H): for ``n`` MNIST digits (default 4), the EVA map of
    the predicted class and the targeted EVA map towards each of the 9 other classes (IBP+Forward+
    Backward, eps 0.5, 12x12 grid; ``phi = phi+ - phi-``: red = adding ink helps the target
    class, blue = removing ink does). Writes ``OUT/targeted.png``; the DataFrame has one row per
    digit with the AO bound towards each class.
    """
    import pandas as pd

    from evax.bench.figures import targeted_figure

    opts = _options(out, workers, address, device, seed, threads, progress, quick, offline, metrics)
    started = time.perf_counter()
    s = _mnist(offline)
    bm = method or ("ibp" if quick else "ibp+forward+backward")
    cells = []
    for idx in image_indices(s.dataset, n or 4, opts.seed):
        cfg = {"model": s.model, "dataset": s.dataset, "eps": 0.5, "bound_method": bm, "grid": 12,
               "seed": opts.seed, "device": opts.device, "timed": True, "metrics": {}}
        cells.append(cells_mod.Cell("targeted", "mnist", "EVA-targeted", idx, "targeted", cfg))
    records, stats = run_cells(cells, opts, "targeted")
    rows = []
    images, maps, labels, preds = [], [], [], []
    data = cells_mod.load_data(s.dataset, "test")
    for c in cells:
        rec = records[c.key]
        ex = rec.get("extra", {})
        row = {"index": c.index, "label": ex.get("label"), "predicted": ex.get("target"),
               "seconds": rec.get("values", {}).get("seconds")}
        for k, v in (ex.get("ao_targeted") or {}).items():
            row[f"ao_to_{k}"] = v
        rows.append(row)
        if "maps" in rec.get("tensors", {}):
            images.append(data.images[c.index])
            maps.append(rec["tensors"]["maps"])
            labels.append(ex.get("label"))
            preds.append(ex.get("target"))
    df = pd.DataFrame(rows).set_index("index")
    opts.out.mkdir(parents=True, exist_ok=True)
    df.to_csv(opts.out / "targeted.csv")
    if images:
        targeted_figure(torch.stack(images), torch.stack(maps), preds, opts.out / "targeted.png")
    meta = {
        "table": "targeted", "settings": {"mnist": _setting_meta(s, len(cells), eps=0.5, method=bm, grid=12)},
        "n_images": {"mnist": len(cells)}, "seed": opts.seed, "device": opts.device, "quick": quick, "workers": workers,
        "machine": machine_info(), "cells": stats, "wall_seconds": time.perf_counter() - started,
        "notes": ["diagonal: the plain EVA map of the predicted class"], "figure": "targeted.png",
    }
    (opts.out / "targeted.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1, default=str))
    df.attrs.update(meta=meta, errors={})
    return df


TABLE_FUNCTIONS = {
    "eva-table1": eva_table1,
    "eva-table2": eva_table2,
    "eva-table3": eva_table3,
    "infidelity-table1": infidelity_table1,
    "infidelity-table2": infidelity_table2,
    "targeted": targeted,
}


for _fn in TABLE_FUNCTIONS.values():
    _fn.__doc__ = (_fn.__doc__ or "") + _COMMON_DOC


def run_table(name: str, **kwargs):
    """Run table ``name`` (one of :data:`TABLES`) with ``kwargs`` of its function."""
    if name not in TABLE_FUNCTIONS:
        raise InvalidInputError(f"unknown table {name!r}; choose one of {list(TABLES)} or 'all'")
    return TABLE_FUNCTIONS[name](**kwargs)


def nan_to_none(v: Any) -> Any:
    return None if isinstance(v, float) and math.isnan(v) else v
