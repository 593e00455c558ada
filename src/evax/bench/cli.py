"""``evax bench TABLE``: run a paper table, write CSV/JSON/PNG and ``OUT/report.md``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from evax.bench.registry import PAPER_TABLES, TABLES
from evax.core import cli_support as _cli
from evax.errors import InvalidInputError

CHOICES = (*TABLES, "all")


@_cli.clean_errors
def bench(
    table: Annotated[str, typer.Argument(help="one of: " + ", ".join(CHOICES) + " (all: the papers' six tables; 'report' to re-render)")],
    n: Annotated[int | None, typer.Option(help="images per setting (default: the table's stated n)")] = None,
    out: Annotated[Path, typer.Option(help="output folder (tables, figures, report.md, cache/)")] = Path("bench-out"),
    device: Annotated[str, typer.Option(help="cpu or cuda")] = "cpu",
    workers: Annotated[int, typer.Option(help="Ray workers (1: in-process)")] = 1,
    address: Annotated[str | None, typer.Option(help="existing Ray cluster address ('auto', 'ray://...')")] = None,
    setting: Annotated[list[str] | None, typer.Option(help="only these settings (repeat), e.g. mnist")] = None,
    method: Annotated[list[str] | None, typer.Option(help="only these rows (repeat), e.g. EVA")] = None,
    metric: Annotated[
        list[str] | None, typer.Option(help="only these metric columns (repeat), e.g. deletion")
    ] = None,
    seed: Annotated[int, typer.Option(help="base seed (image i uses seed + i)")] = 0,
    quick: Annotated[bool, typer.Option(help="reduced budgets (smoke test)")] = False,
    offline: Annotated[bool, typer.Option(help="MNIST from the 20 shipped digits (no download)")] = False,
) -> None:
    """Reproduce a table of the EVA / infidelity papers on the zoo's models and data.

    Resumable: finished cells are cached under OUT/cache and skipped by the next run.
    """
    from evax.bench.report import write_report
    from evax.bench.runner import run_table

    _cli.positive(n, "--n")
    _cli.positive(workers, "--workers")
    device = _cli.device(device)
    if table != "report" and table not in CHOICES:
        raise InvalidInputError(f"unknown table {table!r}; choose one of {', '.join(CHOICES)} or 'report'")
    _cli.output_dir(out)
    if table != "report":
        names = list(PAPER_TABLES) if table == "all" else [table]
        for name in names:
            df = run_table(name, n=n, out=out, settings=setting or None, workers=workers, address=address,
                           device=device, seed=seed, quick=quick, offline=offline,
                           methods=method or None, metrics=metric or None)
            typer.echo(f"== {name} ==")
            typer.echo(df.to_string(float_format=lambda v: f"{v:.4g}"))
            errs = df.attrs.get("errors", {})
            bad = {k: v for k, v in errs.items() if not str(v).startswith("n/a")}
            if bad:
                typer.echo(f"{len(bad)} cell(s) with errors (see report.md)")
    path = write_report(out)
    typer.echo(f"wrote {path}")
