"""``evax zoo`` commands (a typer sub-app; the main CLI mounts it as ``evax zoo``).

``evax zoo list`` prints every model with its input shape, classes, measured accuracy and
source; ``evax zoo datasets`` lists the datasets; ``evax zoo fetch NAME`` pre-fetches a
model's weights or a dataset into the cache (for offline use later).
"""

from __future__ import annotations

from typing import Annotated

import typer

from evax.core import cli_support as _cli
from evax.errors import InvalidInputError
from evax.zoo.datasets import DATASETS, load_dataset
from evax.zoo.fetch import cache_dir
from evax.zoo.registry import MODELS, load_model, registry_table

app = typer.Typer(help="Real datasets and pretrained models, offline.", no_args_is_help=True)


def _print_table(header: list[str], rows: list[list[str]]) -> None:
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(header)]
    typer.echo("  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)))
    typer.echo("  ".join("-" * w for w in widths))
    for r in rows:
        typer.echo("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)))


@app.command("list")
def list_models_cmd() -> None:
    """Models: name, input shape, classes, measured accuracy, verified accuracy of certifiably
    trained models (at their eps, :class:`~evax.zoo.registry.CertifiedInfo`), eval set, source."""
    rows = [
        [
            r["name"],
            "x".join(str(d) for d in r["input_shape"]),
            str(r["classes"]),
            f"{100 * r['accuracy']:.2f}%",
            "-" if r["verified"] is None else f"{100 * r['verified']:.2f}%",
            r["evaluated_on"],
            r["source"],
        ]
        for r in registry_table()
    ]
    header = ["name", "input", "classes", "accuracy", "verified", "evaluated on", "source"]
    _print_table(header, rows)


@app.command("datasets")
def list_datasets_cmd() -> None:
    """Datasets: name, image shape, classes, splits, source."""
    rows = [
        [s.name, "x".join(map(str, s.shape)), str(s.num_classes), ",".join(s.splits), s.source]
        for s in DATASETS.values()
    ]
    _print_table(["name", "image", "classes", "splits", "source"], rows)


@app.command("fetch")
@_cli.clean_errors
def fetch_cmd(
    names: Annotated[list[str], typer.Argument(help="model or dataset names")],
) -> None:
    """Download models' weights / datasets into the cache now (EVAX_CACHE)."""
    unknown = [n for n in names if n not in MODELS and n not in DATASETS]
    if unknown:
        raise InvalidInputError(
            f"unknown model or dataset {', '.join(map(repr, unknown))}; models: {', '.join(MODELS)}; "
            f"datasets: {', '.join(DATASETS)}"
        )
    for name in names:
        if name in MODELS:
            load_model(name)
        else:
            load_dataset(name)
            if "train" in DATASETS[name].splits:
                load_dataset(name, "train")
        typer.echo(f"{name}: ready (cache: {cache_dir()})")
