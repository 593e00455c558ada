"""The ``evax`` command line: ``evax explain`` (EVA on a zoo model or an image file) and
``evax zoo`` (datasets and models)."""

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

from evax.errors import EvaxError, InvalidInputError

app = typer.Typer(help="evax: explanations with guarantees.", no_args_is_help=True, add_completion=False)


def _mount_zoo() -> None:
    from evax.zoo.cli import app as zoo_app

    app.add_typer(zoo_app, name="zoo")


_mount_zoo()


def _mount_bench() -> None:
    from evax.bench.cli import bench

    app.command(name="bench")(bench)


_mount_bench()


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise InvalidInputError("--device cuda requested but no CUDA device is available")
    return torch.device(name)


def load_image(path: Path, shape: tuple[int, int, int], invert: bool = False) -> torch.Tensor:
    """Read a PNG/JPG as ``(1, C, H, W)`` in ``[0, 1]``, converted and resized to ``shape``."""
    try:
        from PIL import Image, UnidentifiedImageError
    except ImportError as exc:  # pragma: no cover - pillow comes with matplotlib
        raise InvalidInputError("reading images needs pillow: pip install pillow") from exc
    try:
        img = Image.open(path)
        img.load()
    except (OSError, UnidentifiedImageError) as exc:
        raise InvalidInputError(f"cannot read image {str(path)!r}: {exc}") from exc
    c, h, w = shape
    img = img.convert("L" if c == 1 else "RGB").resize((w, h), Image.BILINEAR)
    arr = np.asarray(img, dtype=np.float32).reshape(h, w, c)
    x = torch.from_numpy(arr.copy()).permute(2, 0, 1) / 255
    return (1 - x if invert else x).unsqueeze(0)


@app.command()
def explain(
    model: Annotated[str, typer.Option(help="zoo model name (evax zoo list)")] = "mnist-mlp",
    dataset: Annotated[str, typer.Option(help="zoo dataset to draw images from")] = "mnist-samples",
    index: Annotated[list[int] | None, typer.Option(help="image indices (repeat the option)")] = None,
    n: Annotated[int, typer.Option(help="number of images when no --index is given")] = 4,
    image: Annotated[Path | None, typer.Option(help="explain this PNG/JPG instead (resized)")] = None,
    invert: Annotated[bool, typer.Option(help="invert --image (dark digit on white paper)")] = False,
    method: Annotated[
        str, typer.Option(help="bound method, e.g. ibp, backward, ibp+forward+backward")
    ] = "ibp+forward+backward",
    eps: Annotated[float, typer.Option(help="radius of the L-inf perturbation ball")] = 0.5,
    grid: Annotated[int, typer.Option(help="side of the grid of groups")] = 12,
    target: Annotated[int | None, typer.Option(help="class to explain (default: predicted)")] = None,
    contrast: Annotated[int | None, typer.Option(help="targeted explanation against this class")] = None,
    out: Annotated[Path, typer.Option(help="output directory (PNG figure + JSON)")] = Path("evax-out"),
    device: Annotated[str, typer.Option(help="cpu, cuda or auto")] = "auto",
    batch_size: Annotated[int | None, typer.Option(help="boxes per engine call")] = None,
) -> None:
    """Explain images with EVA and write a figure and the scores.

    With no arguments: the zoo's MNIST MLP on the first MNIST test digits shipped with evax
    (no download). Prints, per image, the prediction, the guaranteed upper bound of the
    adversarial overlap AO(x, B) and whether the image is certified robust on the ball.
    """
    from evax import zoo
    from evax.attribution.eva import EVA
    from evax.groups import grid as grid_groups
    from evax.viz import explanation_figure

    try:
        dev = _device(device)
        info = zoo.model_info(model)
        net = zoo.load_model(model).to(dev).eval()
        if image is not None:
            x = load_image(image, info.input_shape, invert)
            labels, names, idx = [-1], [image.name], [0]
            classes = None
        else:
            data = zoo.load_dataset(dataset)
            idx = list(index) if index else list(range(min(n, len(data.images))))
            if any(i < 0 or i >= len(data.images) for i in idx):
                raise InvalidInputError(f"--index out of range [0, {len(data.images)}) for {dataset}")
            x = data.images[idx]
            labels = data.labels[idx].tolist()
            names = [f"{dataset}[{i}]" for i in idx]
            classes = data.classes
        if tuple(x.shape[1:]) != tuple(info.input_shape):
            raise InvalidInputError(
                f"images of {dataset} have shape {tuple(x.shape[1:])}, {model} expects {info.input_shape}"
            )
        explainer = EVA(net, eps=eps, method=method, groups=grid_groups(grid), batch_size=batch_size)
        out.mkdir(parents=True, exist_ok=True)
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
            label = labels[k]
            label_name = classes[label] if classes is not None and label >= 0 else "?"
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
            grid,
            signed=contrast is not None,
            path=png,
        )
        meta = {"model": model, "method": method, "eps": eps, "p": "inf", "grid": grid}
        (out / "eva.json").write_text(json.dumps({"config": meta, "images": results}, indent=2))
        typer.echo(f"wrote {png} and {out / 'eva.json'}")
    except EvaxError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(code=2) from exc


def main() -> None:  # pragma: no cover - console entry point
    app()
