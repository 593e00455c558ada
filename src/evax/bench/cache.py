"""Resumable per-cell results of the reproduction harness.

A *cell* is one (table, setting, method, image) unit of work. Its record is a JSON-friendly dict
(metric values, seconds, errors, curves) and, optionally, tensors (the explanation map) stored
next to it with ``torch.save``::

    DIR/cache/<table>/<setting>/<method>/<image>.json
    DIR/cache/<table>/<setting>/<method>/<image>.pt      (tensors, optional)

Writes are atomic (temporary file + ``os.replace``), so an interrupted run never leaves a
half-written record; re-running a table reads the records back and computes only what is
missing. Each record holds a ``fingerprint`` of the cell's configuration: a record written under
another configuration (other eps, budget, seed...) is ignored and recomputed.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
from pathlib import Path
from typing import Any

import torch

_SAFE = re.compile(r"[^A-Za-z0-9_.+-]+")


def safe_name(name: str) -> str:
    """A file-system-safe version of ``name`` (anything odd becomes ``_``)."""
    return _SAFE.sub("_", str(name)).strip("_") or "_"


def fingerprint(config: Any) -> str:
    """Short stable hash of a JSON-serialisable configuration."""
    blob = json.dumps(config, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def _atomic_write(path: Path, write) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=path.suffix)
    try:
        with os.fdopen(fd, "wb") as fh:
            write(fh)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class ResultCache:
    """Per-cell records under ``root`` (see the module docstring).

    ``get(key, fp)`` returns the stored record (with its tensors under ``"tensors"``) when its
    fingerprint equals ``fp``, else ``None``; ``put(key, fp, record, tensors)`` stores it.
    ``key`` is a tuple ``(table, setting, method, image)``.
    """

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    def _paths(self, key: tuple[str, str, str, int | str]) -> tuple[Path, Path]:
        *dirs, leaf = (safe_name(str(k)) for k in key)
        base = self.root.joinpath(*dirs)
        return base / f"{leaf}.json", base / f"{leaf}.pt"

    def get(self, key: tuple, fp: str) -> dict | None:
        js, pt = self._paths(key)
        if not js.exists():
            return None
        try:
            record = json.loads(js.read_text())
        except (OSError, json.JSONDecodeError):
            return None  # unreadable: recompute
        if record.get("fingerprint") != fp:
            return None
        record["tensors"] = torch.load(pt, map_location="cpu", weights_only=True) if pt.exists() else {}
        return record

    def put(self, key: tuple, fp: str, record: dict, tensors: dict[str, torch.Tensor] | None = None) -> None:
        js, pt = self._paths(key)
        body = {k: v for k, v in record.items() if k != "tensors"}
        body["fingerprint"] = fp
        if tensors:
            _atomic_write(pt, lambda fh: torch.save({k: v.detach().cpu() for k, v in tensors.items()}, fh))
        text = json.dumps(body, indent=1, default=float).encode()
        _atomic_write(js, lambda fh: fh.write(text))

    def count(self) -> int:
        """Number of stored records (all tables)."""
        return sum(1 for _ in self.root.rglob("*.json")) if self.root.exists() else 0
