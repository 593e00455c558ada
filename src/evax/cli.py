"""The ``evax`` command line: ``evax explain`` (EVA on a model and images), ``evax evaluate``
(attribution methods compared by faithfulness metrics), ``evax bench`` and ``evax zoo``.

Every error is one ``error: ...`` line on stderr and exit code 2 (:mod:`evax.core.cli_support`)."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Annotated

import numpy as np
import torch
import typer
from tqdm.auto import tqdm

from evax.bounds.api import DEFAULT_METHOD
from evax.core import cli_support as _cli
from evax.errors import InvalidInputError
from evax.zoo.images import load_image as _load_image

app = typer.Typer(help="evax: explanations with guarantees.", no_args_is_help=True, add_completion=False)


def _mount_zoo() -> None:
    from evax.zoo.cli import app as zoo_app

    app.add_typer(zoo_app, name="zoo")


_mount_zoo()


def _mount_bench() -> None:
    from evax.bench.cli import bench

    app.command(name="bench")(bench)


_mount_bench()


load_image = _load_image  # moved to evax.zoo.images; kept here for old imports


MODEL_HELP = "zoo name (evax zoo list), .onnx / .pt2 (torch.export) / TorchScript file, or package.module:factory"


@app.command()
@_cli.clean_errors
def explain(
    model: Annotated[str, typer.Option(help=MODEL_HELP)] = "mnist-mlp",
    dataset: Annotated[str, typer.Option(help="zoo dataset to draw images from")] = "mnist-samples",
    index: Annotated[list[int] | None, typer.Option(help="image indices (repeat the option)")] = None,
    n: Annotated[int, typer.Option(help="number of images when no --index is given")] = 4,
    image: Annotated[Path | None, typer.Option(help="explain this PNG/JPG instead (resized)")] = None,
    images: Annotated[str | None, typer.Option(help="DIR (ImageFolder), GLOB, image, .npy or .npz")] = None,
    labels: Annotated[Path | None, typer.Option(help="CSV file,label for --images")] = None,
    invert: Annotated[bool, typer.Option(help="invert --image (dark digit on white paper)")] = False,
    input_shape: Annotated[str | None, typer.Option(help="C,H,W of the model input, e.g. 1,28,28")] = None,
    classes: Annotated[Path | None, typer.Option(help="class names, one per line")] = None,
    mean: Annotated[str | None, typer.Option(help="normalisation the model expects, e.g. 0.485,0.456,0.406")] = None,
    std: Annotated[str | None, typer.Option(help="with --mean, e.g. 0.229,0.224,0.225")] = None,
    weights: Annotated[Path | None, typer.Option(help="state_dict for a package.module:factory model")] = None,
    layout: Annotated[str, typer.Option(help="ONNX input layout: auto, nchw or nhwc")] = "auto",
    method: Annotated[
        str, typer.Option(help="bound method, e.g. ibp, backward, ibp+forward+backward")
    ] = "ibp+backward",
    eps: Annotated[float, typer.Option(help="radius of the L-inf perturbation ball")] = 0.5,
    grid: Annotated[int, typer.Option(help="side of the grid of groups")] = 12,
    equal_cells: Annotated[bool, typer.Option(
        "--equal-cells/--paper-grid",
        help="cells of one size: the grid side nearest to --grid that divides the image (28x28: 14x14 cells "
             "of 2x2 pixels; unequal cells show as stripes in the map), or exactly --grid x --grid as the EVA "
             "paper (edges rounded)")] = True,
    target: Annotated[int | None, typer.Option(help="class to explain (default: predicted)")] = None,
    contrast: Annotated[int | None, typer.Option(help="targeted explanation against this class")] = None,
    out: Annotated[Path, typer.Option(help="output directory (PNG figure + JSON)")] = Path("evax-out"),
    device: Annotated[str, typer.Option(help="auto, cpu, cuda, cuda:N or mps")] = "auto",
    batch_size: Annotated[int | None, typer.Option(help="boxes per engine call")] = None,
    kind: Annotated[str, typer.Option(help="eva (importance map) or sufficient (a kept set of cells proven "
                                            "to keep the decision)")] = "eva",
    order: Annotated[str, typer.Option(help="--kind sufficient: search order, eva, verix or random")] = "eva",
) -> None:
    """Explain images with EVA and write a figure and the scores.

    ``--kind sufficient`` computes verified sufficient explanations instead: the cells of the
    grid that, held at their values, provably keep the decision whatever the others do inside
    the ball (drawn over the image, next to the EVA map with ``--order eva``).

    With no arguments: the zoo's MNIST MLP on the first MNIST test digits shipped with evax
    (no download). Prints, per image, the prediction, the guaranteed upper bound of the
    adversarial overlap AO(x, B) and whether the image is certified robust on the ball.
    """
    from evax import zoo
    from evax.attribution.eva import EVA
    from evax.groups import grid as grid_groups
    from evax.viz import explanation_figure
    from evax.zoo.loaders import load_model as load_any

    _cli.positive(n, "--n")
    _cli.positive(grid, "--grid")
    _cli.positive(batch_size, "--batch-size")
    if image is not None and images is not None:
        raise InvalidInputError("pass --image or --images, not both")
    dev = torch.device(_cli.device(device))
    _cli.check_output_dir(out)
    net, info = load_any(model, input_shape=input_shape, weights=weights, mean=mean, std=std,
                         classes=classes, layout=layout)
    info.require_boundable("evax explain (EVA)")
    net = net.to(dev).eval()
    class_names = list(info.classes) if info.classes else None
    if image is not None or images is not None:
        from evax.zoo.images import load_images

        spec = image if image is not None else images
        loaded = load_images(spec, info.input_shape, labels=labels, invert=invert)
        sel = list(index) if index else list(range(min(n, loaded.images.shape[0]) if images else 1))
        if any(i < 0 or i >= loaded.images.shape[0] for i in sel):
            raise InvalidInputError(f"--index out of range [0, {loaded.images.shape[0]}) for {spec}")
        x = loaded.images[sel]
        labels_ = loaded.labels[sel].tolist()
        names = [Path(loaded.names[i]).name if image is not None else loaded.names[i] for i in sel]
        class_names = class_names or loaded.classes
        idx = sel
    else:
        data = zoo.load_dataset(dataset)
        idx = list(index) if index else list(range(min(n, len(data.images))))
        if any(i < 0 or i >= len(data.images) for i in idx):
            raise InvalidInputError(f"--index out of range [0, {len(data.images)}) for {dataset}")
        x = data.images[idx]
        labels_ = data.labels[idx].tolist()
        names = [f"{dataset}[{i}]" for i in idx]
        class_names = class_names or data.classes
    if tuple(x.shape[1:]) != tuple(info.input_shape):
        raise InvalidInputError(
            f"images of {dataset} have shape {tuple(x.shape[1:])}, {model} expects {info.input_shape}"
        )
    if kind not in ("eva", "sufficient"):
        raise InvalidInputError(f"--kind must be eva or sufficient, got {kind!r}")
    groups = grid_groups(grid, equal=equal_cells)
    cell_grid = groups.shape(*x.shape[-2:])
    if kind == "sufficient":
        if contrast is not None:
            raise InvalidInputError("--contrast applies to --kind eva only")
        _explain_sufficient(net, x.to(dev), names, model, info, method, eps, groups, order, target, out)
        return
    explainer = EVA(net, eps=eps, method=method, groups=groups, batch_size=batch_size)
    out = _cli.output_dir(out)
    typer.echo(f"groups: {cell_grid[0]}x{cell_grid[1]} grid" + (" of equal cells" if equal_cells else " (paper)"))
    results = []
    maps, scores, titles = [], [], []
    x = x.to(dev)
    for k in tqdm(range(x.shape[0]), desc="EVA", unit="image", disable=not sys.stderr.isatty()):
        t0 = time.perf_counter()
        ex = explainer.explain(x[k : k + 1], target=target, contrast=contrast)
        seconds = time.perf_counter() - t0
        with torch.no_grad():
            pred = int(net(x[k : k + 1]).argmax(1))
        ao = float(ex.ao[0])
        robust = None if ex.certified_robust is None else bool(ex.certified_robust[0])
        label = labels_[k]
        label_name = class_names[label] if class_names is not None and 0 <= label < len(class_names) else "?"
        status = {True: "CERTIFIED ROBUST (proof)", False: "not certified", None: "targeted"}[robust]
        typer.echo(
            f"{names[k]}: label {label_name}, predicted {pred}, explained {int(ex.target[0])}"
            + (f" vs {contrast}" if contrast is not None else "")
            + f", AO(x,B) <= {ao:.4g}, {status}, {seconds:.2f}s"
        )
        results.append(
            {
                "name": names[k],
                "label": label,
                "prediction": pred,
                "seconds": seconds,
                "certified_robust": robust,
                **{k2: v[0] if isinstance(v, list) else v for k2, v in ex.to_dict().items()},
            }
        )
        maps.append(ex.map[0].cpu())
        scores.append(ex.scores[0].cpu())
        titles.append(f"{names[k]} pred {pred}" + (" (certified)" if robust else ""))
    png = out / "eva.png"
    explanation_figure(
        x.cpu(),
        torch.stack(maps),
        titles,
        torch.stack(scores),
        cell_grid,
        signed=contrast is not None,
        path=png,
    )
    meta = {"model": model, "model_info": info.to_dict(), "method": method, "eps": eps, "p": "inf", "grid": grid,
            "equal_cells": equal_cells, "cells": list(cell_grid)}
    (out / "eva.json").write_text(json.dumps({"config": meta, "images": results}, indent=2))
    typer.echo(f"wrote {png} and {out / 'eva.json'}")


def _explain_sufficient(net, x, names, model, info, method, eps, groups, order, target, out) -> None:
    """``evax explain --kind sufficient``: one batched search for every image, a figure and JSON."""
    from evax.attribution.sufficient import Sufficient
    from evax.viz import sufficient_figure

    if order not in ("eva", "verix", "random"):
        raise InvalidInputError(f"--order must be eva, verix or random, got {order!r}")
    explainer = Sufficient(net, eps, method=method, groups=groups, order=order)
    out = _cli.output_dir(out)
    t0 = time.perf_counter()
    ex = explainer.explain(x, target=target)
    seconds = time.perf_counter() - t0
    for k, name in enumerate(names):
        status = "proven sufficient" if bool(ex.certified[k]) else "NOT proven (every cell kept)"
        typer.echo(f"{name}: class {int(ex.target[k])}, keeps {int(ex.size[k])} of {ex.n_cells} cells, {status}")
    typer.echo(f"{ex.checks} engine calls, {seconds:.2f}s")
    png = out / "sufficient.png"
    sufficient_figure(x.cpu(), ex, eva_maps=ex.order_map().cpu() if order == "eva" else None, path=png)
    meta = {"model": model, "model_info": info.to_dict(), "method": method, "eps": eps, "p": "inf",
            "grid": groups.n_side, "equal_cells": groups.equal, "cells": list(groups.shape(*x.shape[-2:])),
            "order": order}
    payload = {"config": meta, "names": names, **ex.to_dict()}
    (out / "sufficient.json").write_text(json.dumps(payload, indent=2))
    typer.echo(f"wrote {png} and {out / 'sufficient.json'}")


@app.command()
@_cli.clean_errors
def evaluate(
    model: Annotated[str, typer.Option(help=MODEL_HELP)] = "mnist-mlp",
    images: Annotated[str | None, typer.Option(help="DIR (ImageFolder), GLOB, image, .npy or .npz")] = None,
    dataset: Annotated[str, typer.Option(help="zoo dataset when no --images is given")] = "mnist-samples",
    labels: Annotated[Path | None, typer.Option(help="CSV file,label for --images")] = None,
    n: Annotated[int | None, typer.Option(help="only the first N images")] = None,
    method: Annotated[list[str] | None, typer.Option(help="attribution method (repeat); default: "
                                                       "Saliency GradInput InteGrad SmoothGrad Occlusion EVA")] = None,
    metric: Annotated[list[str] | None, typer.Option(help="deletion, insertion, mufidelity, robustness, infidelity, "
                                                       "sensitivity (repeat); default: the first three + infidelity")] = None,
    reference: Annotated[str | None, typer.Option(help="method the others are compared to (paired differences)")] = None,
    input_shape: Annotated[str | None, typer.Option(help="C,H,W of the model input, e.g. 1,28,28")] = None,
    classes: Annotated[Path | None, typer.Option(help="class names, one per line")] = None,
    mean: Annotated[str | None, typer.Option(help="normalisation the model expects, e.g. 0.485,0.456,0.406")] = None,
    std: Annotated[str | None, typer.Option(help="with --mean")] = None,
    weights: Annotated[Path | None, typer.Option(help="state_dict for a package.module:factory model")] = None,
    layout: Annotated[str, typer.Option(help="ONNX input layout: auto, nchw or nhwc")] = "auto",
    eps: Annotated[float, typer.Option(help="EVA: radius of the L-inf ball (the paper: 0.5)")] = 0.5,
    bound_method: Annotated[str, typer.Option(help="EVA: bound method")] = DEFAULT_METHOD,
    grid: Annotated[int, typer.Option(help="side of the grid of variables (EVA groups, metrics)")] = 12,
    seed: Annotated[int, typer.Option(help="base seed (image i uses seed + i)")] = 0,
    quick: Annotated[bool, typer.Option(help="reduced budgets (smoke test), not the paper's")] = False,
    workers: Annotated[int, typer.Option(help="Ray workers (1: in-process)")] = 1,
    out: Annotated[Path, typer.Option(help="output folder (report, tables, figures, cache/)")] = Path("evaluate-out"),
    device: Annotated[str, typer.Option(help="auto, cpu, cuda, cuda:N or mps")] = "cpu",
) -> None:
    """Compare attribution methods on your model and images with faithfulness metrics.

    Every method on every image, every metric; results cached per (method, image) under
    OUT/cache (a rerun resumes); writes OUT/report.md, report.html, table.md/.csv,
    results.csv, heatmaps.png and curves.png.
    """
    from evax.bench import evaluate as ev
    from evax.bench import evaluate_report as rep
    from evax.zoo.loaders import load_model as load_any

    _cli.positive(n, "--n")
    _cli.positive(grid, "--grid")
    _cli.positive(workers, "--workers")
    dev = _cli.device(device)
    _cli.check_output_dir(out)
    cfg = ev.EvaluateConfig(
        methods=list(method) if method else list(ev.DEFAULT_METHODS),
        metrics=list(metric) if metric else list(ev.DEFAULT_METRICS),
        reference=reference, eps=eps, bound_method=bound_method, grid=grid, seed=seed, quick=quick,
    )
    if cfg.reference is None:
        cfg.reference = "EVA" if "EVA" in cfg.methods else cfg.methods[0]
    from evax.attribution.eva import EVA

    if any(m in ("EVA", "GreedyAO", "Greedy-AO") for m in cfg.methods):
        EVA(torch.nn.Identity(), eps=eps, method=bound_method)  # validate eps / bound method now
    ev.build_cells({}, {}, 1, cfg)  # validates methods, metrics, reference before any work
    def _abs(p: Path | None) -> str | None:  # Ray workers do not share the working directory
        return None if p is None else str(Path(p).expanduser().resolve())

    model_path = Path(model).expanduser()
    model_spec = {"path_or_name": _abs(model_path) if model_path.is_file() else model, "input_shape": input_shape,
                  "weights": _abs(weights), "mean": mean, "std": std, "classes": _abs(classes), "layout": layout}
    net, info = load_any(**model_spec)
    needs = ev.bound_methods(cfg.methods)
    if needs:
        info.require_boundable(", ".join(needs))
    model_spec["input_shape"] = list(info.input_shape)
    if images is not None:
        from evax.zoo.images import load_images

        images_spec = {"spec": str(Path(images).expanduser().resolve()) if Path(images).exists() else images,
                       "input_shape": list(info.input_shape), "labels": _abs(labels), "limit": n}
        loaded = load_images(images_spec["spec"], info.input_shape, labels=images_spec["labels"], limit=n)
        x, names = loaded.images, loaded.names
    else:
        from evax import zoo

        data = zoo.load_dataset(dataset)
        k = min(n or len(data.images), len(data.images))
        x, names = data.images[:k], [f"{dataset}[{i}]" for i in range(k)]
        if tuple(x.shape[1:]) != tuple(info.input_shape):
            raise InvalidInputError(f"{dataset} images have shape {tuple(x.shape[1:])}, the model takes {info.input_shape}")
        path = _cli.output_dir(out) / "images.npz"
        np.savez(path, images=x.numpy(), labels=data.labels[:k].numpy())
        images_spec = {"spec": str(path.resolve()), "input_shape": list(info.input_shape), "labels": None, "limit": None}
    out = _cli.output_dir(out)
    typer.echo(f"{len(cfg.methods)} method(s) x {x.shape[0]} image(s), metrics {', '.join(cfg.metrics)}")
    cells, records, stats = ev.run(model_spec, images_spec, x.shape[0], cfg, out, workers=workers, device=dev)
    rows = rep.summarize(cells, records, cfg.methods, cfg.metrics, cfg.reference)
    table = rep.markdown_table(rows, cfg.methods, cfg.metrics, cfg.reference)
    rep.write_csvs(out, cells, records, rows, cfg.metrics, names)
    (out / "table.md").write_text(table)
    figures = [rep.heatmaps_figure(out / "heatmaps.png", x, cells, records, cfg.methods, names)]
    curves = rep.curves_figure(out / "curves.png", cells, records, cfg.methods)
    if curves is not None:
        figures.append(curves)
    method_settings, metric_settings = ev.full_settings(cfg)
    settings = {
        "model": f"{model} ({info.source}, input {info.input_shape}, {info.num_classes} classes)",
        "images": f"{images or dataset} ({x.shape[0]} images)",
        **{f"method {k}": json.dumps(v, default=str) for k, v in method_settings.items()},
        **{f"metric {k}": json.dumps(v, default=str) for k, v in metric_settings.items()},
        "variables": f"{grid}x{grid} grid of cells (EVA groups and the metrics' variables)",
        "score": "softmax of the explained class (the model's prediction)",
        "reference": cfg.reference, "seed": f"{seed} (image i uses seed + i)",
        "budgets": "quick (smoke test, NOT the paper's)" if quick else "the papers' (EVA App. E/F; Yeh et al. local INFD)",
        "workers": workers, "device": dev,
    }
    md, page = rep.write_report(out, table, settings, figures, stats)
    typer.echo(table)
    errors = sum(1 for r in rows if r["error"])
    if errors:
        typer.echo(f"{errors} (method, metric) entr(ies) with errors or missing values: see {out / 'results.csv'}")
    typer.echo(f"wrote {md}, {page}, {out / 'table.csv'}, {out / 'results.csv'}")


def main() -> None:  # pragma: no cover - console entry point
    app()
