"""What a table run writes: the means over images (DataFrame, ``OUT/<name>.csv``), the JSON
(settings, per-image values, errors, machine), the heatmap and curve figures, and for
``targeted`` the Fig. 7 grid. Used by :func:`evax.bench.runner.run`.
"""

from __future__ import annotations

import json
import math
import platform
import time
from pathlib import Path
from typing import Any

import torch

from evax.bench import cells as cells_mod
from evax.bench.published import PUBLISHED
from evax.bench.specs import TableSpec, thaw


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


def aggregate(name: str, cells: list[cells_mod.Cell], records: dict, metrics: list[str]) -> tuple[list[dict], dict]:
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
            if metric not in cells_mod._expected(cs[0]):
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


def paired_differences(rows: list[dict], cells: list[cells_mod.Cell], records: dict, reference: str,
                       metrics: list[str]) -> None:
    """Add ``se`` and, against ``reference``, the paired difference ``diff`` +- ``diff_se`` on the
    same images to ``rows`` (:func:`evax.bench.evaluate_report.summarize`, per setting)."""
    from evax.bench.evaluate_report import summarize

    by = {(r["setting"], r["method"], r["metric"]): r for r in rows}
    for setting in dict.fromkeys(c.setting for c in cells):
        cs = [c for c in cells if c.setting == setting]
        methods = list(dict.fromkeys(c.method for c in cs))
        ref = reference if reference in methods else None
        plain = [m for m in metrics if m != "seconds"]
        for s in summarize(cs, records, methods, plain, ref):
            row = by.get((setting, s["method"], s["metric"]))
            if row is not None:
                row.update(se=s["se"], diff=s["diff"], diff_se=s["diff_se"], reference=ref)


def dataframe(rows: list[dict], method_order: list[str], setting_order: list[str], metrics: list[str]):
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


def _setting_meta(spec: TableSpec, key: str, n: int) -> dict:
    s = spec.setting(key)
    return {"model": s.model, "dataset": s.dataset, "n": n, "note": s.note, **thaw(s.meta)}


def write_table(spec: TableSpec, cells: list[cells_mod.Cell], records: dict, stats: dict, opts, started: float):
    """Aggregate, build the DataFrame, write ``OUT/<name>.csv``, ``OUT/<name>.json`` and the figures."""
    from evax.bench.runner import select_settings, setting_n

    name, metrics = spec.name, spec.columns
    methods = list(dict.fromkeys(c.method for c in cells))
    setting_keys = list(dict.fromkeys(c.setting for c in cells))
    rows, errors = aggregate(name, cells, records, metrics)
    if spec.reference is not None:
        paired_differences(rows, cells, records, spec.reference, metrics)
    df = dataframe(rows, methods, setting_keys, metrics)
    n_images = {s: len({c.index for c in cells if c.setting == s}) for s in setting_keys}
    meta = {
        "table": name,
        "settings": {s.key: _setting_meta(spec, s.key, setting_n(s, opts)) for s in select_settings(spec, opts.settings)},
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
        "notes": list(spec.notes),
        "published": PUBLISHED.get(name),
        "published_time_images": thaw(spec.published_time_images),
    }
    if spec.reference is not None:
        meta["reference"] = spec.reference
    opts.out.mkdir(parents=True, exist_ok=True)
    flat = df.copy()
    flat.columns = [f"{s}/{m}" for s, m in df.columns]
    flat.to_csv(opts.out / f"{name}.csv")
    per_image = [
        {"setting": c.setting, "method": c.method, "index": c.index, **records.get(c.key, {}).get("values", {}),
         "errors": records.get(c.key, {}).get("errors", {})}
        for c in cells
    ]
    meta["figures"] = figures(name, cells, records, opts.out)
    (opts.out / f"{name}.json").write_text(
        json.dumps({"meta": meta, "rows": rows, "images": per_image}, indent=1, default=str)
    )
    df.attrs.update(errors=errors, meta=meta, rows=rows)
    return df


def figures(name: str, cells: list[cells_mod.Cell], records: dict, out: Path, max_images: int = 4) -> list[str]:
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


def write_targeted(spec: TableSpec, cells: list[cells_mod.Cell], records: dict, stats: dict, opts, started: float):
    """Fig. 7: ``OUT/targeted.png``, and a DataFrame with one row per digit (the AO bound
    towards each class), ``OUT/targeted.csv`` / ``.json``."""
    import pandas as pd

    from evax.bench.figures import targeted_figure

    rows = []
    images, maps, preds = [], [], []
    s = spec.settings[0]
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
            preds.append(ex.get("target"))
    df = pd.DataFrame(rows).set_index("index")
    opts.out.mkdir(parents=True, exist_ok=True)
    df.to_csv(opts.out / f"{spec.name}.csv")
    if images:
        targeted_figure(torch.stack(images), torch.stack(maps), preds, opts.out / f"{spec.name}.png")
    meta = {
        "table": spec.name, "settings": {s.key: _setting_meta(spec, s.key, len(cells))},
        "n_images": {s.key: len(cells)}, "seed": opts.seed, "device": opts.device, "quick": opts.quick,
        "workers": opts.workers, "machine": machine_info(), "cells": stats,
        "wall_seconds": time.perf_counter() - started, "notes": list(spec.notes), "figure": f"{spec.name}.png",
    }
    (opts.out / f"{spec.name}.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1, default=str))
    df.attrs.update(meta=meta, errors={})
    return df


def nan_to_none(v: Any) -> Any:
    return None if isinstance(v, float) and math.isnan(v) else v
