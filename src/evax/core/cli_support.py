"""What every ``evax`` command shares: one ``error: ...`` line and exit code 2 on bad input,
checked output folders, devices and counts.

>>> @app.command()
... @clean_errors
... def explain(...): ...
"""

from __future__ import annotations

import functools
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import typer

from evax.errors import EvaxError, InvalidInputError

F = TypeVar("F", bound=Callable[..., Any])


def clean_errors(command: F) -> F:
    """Turn evax errors (bad input, missing data or dependency) and OS errors (a file that cannot
    be read or written) into one ``error: ...`` line on stderr and exit code 2."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except EvaxError as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(code=2) from exc
        except OSError as exc:
            where = f": {exc.filename}" if exc.filename else ""
            typer.echo(f"error: {exc.strerror or exc}{where}", err=True)
            raise typer.Exit(code=2) from exc

    return wrapper  # type: ignore[return-value]


def output_dir(path: Path, option: str = "--out") -> Path:
    """Create ``path`` (and parents) and check a file can be written in it.

    Raises :class:`InvalidInputError` when it is an existing file or not writable; nothing is
    left behind by the check."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise InvalidInputError(f"{option} {str(path)!r} is a file; pass a folder (it is created if missing)")
    try:
        path.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=path, prefix=".evax-write-check-")
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise InvalidInputError(
            f"{option} {str(path)!r} cannot be written ({exc.strerror or exc}); pass a writable folder"
        ) from None
    return path


def check_output_dir(path: Path, option: str = "--out") -> None:
    """Fail early (before any work, creating nothing) when ``path`` is a file, or when the
    existing folder nearest to it cannot be written."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise InvalidInputError(f"{option} {str(path)!r} is a file; pass a folder (it is created if missing)")
    probe = path
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir() or not os.access(probe, os.W_OK | os.X_OK):
        raise InvalidInputError(f"{option} {str(path)!r} cannot be written ({str(probe)!r} is not writable)")


def positive(value: int | None, option: str, minimum: int = 1) -> int | None:
    """``value`` unchanged when ``None`` or ``>= minimum``; else an error naming the option."""
    if value is not None and value < minimum:
        raise InvalidInputError(f"{option} must be >= {minimum}, got {value}")
    return value


def device(name: str) -> str:
    """Validate ``--device`` (``auto``, ``cpu``, ``cuda``, ``cuda:N``, ``mps``) and resolve ``auto``."""
    import torch

    key = name.strip().lower()
    if key == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if key == "cpu":
        return key
    if key == "cuda" or (key.startswith("cuda:") and key[5:].isdigit()):
        if not torch.cuda.is_available():
            raise InvalidInputError(f"--device {name} requested but no CUDA device is available")
        if ":" in key and int(key[5:]) >= torch.cuda.device_count():
            raise InvalidInputError(f"--device {name}: only {torch.cuda.device_count()} CUDA device(s)")
        return key
    if key == "mps":
        if not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
            raise InvalidInputError("--device mps requested but MPS is not available")
        return key
    raise InvalidInputError(f"unknown --device {name!r}: use auto, cpu, cuda, cuda:N or mps")
