"""One runner for every table: a :class:`~evax.bench.specs.TableSpec` becomes cells, the cells
are run (cache first, spread over workers), the results averaged and written.

    >>> from evax.bench.registry import table_spec
    >>> from evax.bench.runner import RunOptions, run_table
    >>> df = run_table(table_spec("eva-table2", quick=True), RunOptions(out=Path("bench-out"), n=2))
    >>> df = run_table("eva-table2", n=2, out="bench-out", quick=True)      # the same, by name

Each table is a list of *cells* (setting x method x image, see :mod:`evax.bench.cells`) run
through :func:`run_cells` -- resumable from ``OUT/cache`` and spread over workers -- then
averaged over the images. A cell's metric that failed is never averaged: the table shows
``n/a`` (the method does not apply, as in the paper) or the error (missing component,
failure), listed in ``DataFrame.attrs["errors"]`` and in the report.

Images: the first ``n`` of a seeded permutation of the test split (the paper samples its
images at random from the test set; the first ``n`` of the permutation do not change when
``n`` grows, so a larger run reuses the cache); sample sets (<= 100 images) are taken in
order, and a setting with ``images="first"`` takes the first ``n`` test images. The explained
class is the model's prediction. Seeds: ``seed + dataset index`` per image.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from evax.bench import cells as cells_mod
from evax.bench.cache import ResultCache, fingerprint
from evax.bench.specs import SettingSpec, TableSpec, thaw
from evax.bench.workers import run_tasks
from evax.errors import InvalidInputError


@dataclass(frozen=True)
class RunOptions:
    """How to run a table: output folder, workers, device, seeds, threads, progress bars, the
    budget (``quick``, ``offline``: used when a table is run by name) and the selection (``n``
    images per setting, ``n_by_setting`` for one setting, only these ``settings``, ``methods``
    and ``metrics``; None: the table's defaults)."""

    out: Path
    workers: int = 1
    address: str | None = None
    device: str = "cpu"
    seed: int = 0
    threads: int | None = None
    progress: bool | None = None
    quick: bool = False
    offline: bool = False
    metrics: tuple[str, ...] | None = None  # only these metric columns (None: all)
    n: int | None = None
    n_by_setting: Mapping[str, int] = field(default_factory=dict)
    settings: tuple[str, ...] | None = None
    methods: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "out", Path(self.out))
        if self.workers < 1:
            raise InvalidInputError(f"workers must be >= 1, got {self.workers}")
        if self.n is not None and self.n < 1:
            raise InvalidInputError(f"n must be >= 1, got {self.n}")
        for name in ("metrics", "settings", "methods"):
            v = getattr(self, name)
            if v is None:
                continue
            if isinstance(v, str) or not v:
                raise InvalidInputError(f"{name} must be a non-empty list of names, got {v!r}")
            object.__setattr__(self, name, tuple(dict.fromkeys(v)))
        object.__setattr__(self, "n_by_setting", dict(self.n_by_setting))

    @property
    def cache(self) -> ResultCache:
        return ResultCache(self.out / "cache")


def image_indices(dataset: str, n: int, seed: int, order: str = "permutation") -> list[int]:
    """The images of a run: the first ``n`` of a seeded permutation (sample sets, or
    ``order="first"``: the first ``n``)."""
    data = cells_mod.load_data(dataset, "test")
    total = len(data.labels)
    if n < 1:
        raise InvalidInputError(f"n must be >= 1, got {n}")
    if total <= 100 or order == "first":
        return list(range(min(n, total)))
    g = torch.Generator().manual_seed(seed)
    return torch.randperm(total, generator=g)[:n].tolist()


# ------------------------------------------------------------------ spec -> cells
def select_settings(spec: TableSpec, keys: tuple[str, ...] | None) -> list[SettingSpec]:
    """The settings to run: ``keys`` (in that order), else the table's defaults."""
    chosen = keys if keys is not None else (spec.default_settings or spec.setting_keys)
    bad = [k for k in chosen if k not in spec.setting_keys]
    if bad:
        raise InvalidInputError(f"unknown settings {bad}; this table has {list(spec.setting_keys)}")
    return [spec.setting(k) for k in chosen]


def _methods(settings: list[SettingSpec], keep: tuple[str, ...] | None) -> dict[str, list]:
    """Per setting, the methods to run: ``keep`` (each must be a row of some chosen setting),
    else the default ones."""
    if keep is not None:
        known = list(dict.fromkeys(m.name for s in settings for m in s.methods))
        bad = [m for m in keep if m not in known]
        if bad:
            raise InvalidInputError(f"unknown methods {bad}; this table has {known}")
    return {s.key: [m for m in s.methods if (m.name in keep if keep is not None else m.default)]
            for s in settings}


def setting_n(s: SettingSpec, opts: RunOptions) -> int:
    return opts.n_by_setting.get(s.key) or opts.n or s.n


def build_cells(spec: TableSpec, opts: RunOptions) -> list[cells_mod.Cell]:
    """Every (setting, method, image) cell of ``spec`` under ``opts``."""
    settings = select_settings(spec, opts.settings)
    methods = _methods(settings, opts.methods)
    cells = []
    for s in settings:
        metrics = s.metric_configs()
        for idx in image_indices(s.dataset, setting_n(s, opts), opts.seed, s.images):
            for m in methods[s.key]:
                cfg: dict[str, Any] = {"model": s.model, "dataset": s.dataset, "seed": opts.seed,
                                       "device": opts.device, "cache_dir": str(opts.out / "cache" / "models"),
                                       "metrics": metrics}
                if m.kind == "bound":
                    cfg["bound_method"] = m.kwargs["method"]
                else:
                    cfg["method"] = m.to_config()
                cfg.update(s.config)
                cells.append(cells_mod.Cell(spec.name, s.key, m.name, idx, s.cell, thaw(cfg)))
    return cells


# ------------------------------------------------------------------ running cells
def run_cells(cells: list[cells_mod.Cell], opts: RunOptions, desc: str) -> tuple[dict, dict]:
    """Run ``cells`` (cache first), store their records; returns ``(records, stats)`` keyed by
    ``cell.key``. ``stats`` counts the cells taken from the cache and the ones computed."""
    cache = opts.cache
    records: dict[tuple, dict] = {}
    todo: list[cells_mod.Cell] = []
    fps = {}
    _restrict_metrics(cells, opts.metrics)
    for c in cells:
        fp = cell_fingerprint(c)
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


def cell_fingerprint(c: cells_mod.Cell) -> str:
    """The cache key of a cell's configuration. The device and the cache folder are left out: a
    run on another device, or a moved output folder, reuses the cells (same maths); so is how
    many user images are read (``evax evaluate --n``): a cell's image is the same whatever the
    count."""
    cfg = {k: v for k, v in c.config.items() if k not in ("device", "cache_dir", "images_limit")}
    return fingerprint({"kind": c.kind, "config": cfg, "index": c.index})


def _restrict_metrics(cells: list[cells_mod.Cell], keep) -> None:
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


# ------------------------------------------------------------------ the runner
def run_table(table: TableSpec | str, options: RunOptions | None = None, /, **kwargs: Any):
    """Run a table: a :class:`TableSpec`, or a registered table's name (built at
    ``options.quick`` / ``options.offline``). Returns a pandas DataFrame (methods x (setting,
    metric)); writes ``OUT/<name>.csv``, ``OUT/<name>.json`` and the figures.

    ``options`` or keyword arguments (the ones of the earlier per-table functions):

    Args:
        n: images per setting (default: each setting's ``n``; the paper: 500/500/100).
        out: output folder (CSV/JSON here, the cache under ``out/cache``).
        settings: subset of the table's settings (e.g. ``["mnist"]``).
        methods: only these rows; metrics: only these metric columns (the cache is shared with
            full runs: a later run without the filter computes only the missing metrics and
            reuses the cached explanations).
        workers, address: Ray workers / existing cluster (see :mod:`evax.bench.workers`).
        device: ``"cpu"`` or ``"cuda"``.
        seed: base seed (image ``i`` uses ``seed + i``).
        threads: torch threads per cell (None: unchanged).
        quick: reduced budgets (tests). offline: MNIST from the 20 shipped digits.
        progress: tqdm bars (None: when stderr is a TTY).
        tiny_n: images of ``eva-table2``'s ``mnist-tiny`` setting; method: ``targeted``'s bound
            method.
    """
    from evax.bench import registry

    if options is None:
        options, table_options = options_from_kwargs(**kwargs)
    elif kwargs:
        raise TypeError("give either options or keyword arguments, not both")
    else:
        table_options = {}
    if isinstance(table, str):
        spec = registry.table_spec(table, quick=options.quick, offline=options.offline,
                                   **{k: table_options.pop(k) for k in list(table_options)
                                      if k in registry.TABLE_OPTIONS.get(table, ())})
    else:
        spec = table
    n_by = dict(options.n_by_setting)
    for s in spec.settings:
        if s.n_option and table_options.get(s.n_option):
            n_by[s.key] = int(table_options.pop(s.n_option))
    table_options = {k: v for k, v in table_options.items() if v is not None}
    if table_options:
        raise InvalidInputError(f"table {spec.name!r} takes no option {sorted(table_options)}")
    if n_by != dict(options.n_by_setting):
        options = dataclasses.replace(options, n_by_setting=n_by)
    return run(spec, options)


_RUN_FIELDS = {f.name for f in dataclasses.fields(RunOptions)}


def options_from_kwargs(out: str | Path = "bench-out", **kwargs: Any) -> tuple[RunOptions, dict]:
    """``(RunOptions, table options)`` from the keyword arguments of :func:`run_table`."""
    run_kw = {k: v for k, v in kwargs.items() if k in _RUN_FIELDS}
    rest = {k: v for k, v in kwargs.items() if k not in _RUN_FIELDS}
    for k in ("metrics", "settings", "methods"):
        if run_kw.get(k) is not None and not isinstance(run_kw[k], str):
            run_kw[k] = tuple(run_kw[k])
    return RunOptions(out=Path(out), **run_kw), rest


def run(spec: TableSpec, opts: RunOptions):
    """Build the cells of ``spec``, run them, write the outputs; the DataFrame."""
    from evax.bench import outputs

    started = time.perf_counter()
    cells = build_cells(spec, opts)
    records, stats = run_cells(cells, opts, spec.name)
    if spec.output == "targeted":
        return outputs.write_targeted(spec, cells, records, stats, opts, started)
    return outputs.write_table(spec, cells, records, stats, opts, started)
