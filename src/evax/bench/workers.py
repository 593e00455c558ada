"""Spread independent cells over workers: Ray when asked for and available, in-process otherwise.

Every cell is computed by a module-level function from a picklable task (no shared state), with
its own seeds derived from the image index, so the result does not depend on which worker runs
it or in which order: a Ray run gives the same numbers as the in-process run for the same seeds
(bitwise when the per-cell thread count is the same -- ``threads`` below -- because torch's CPU
reductions may sum in another order with another number of threads).

* ``workers <= 1`` and no ``address``: in-process, one cell after the other.
* ``workers > 1``: a local Ray cluster with ``num_cpus=workers`` (started here and shut down
  at the end), or the existing cluster at ``address`` (``"auto"`` or ``"ray://host:port"``).
  Without Ray installed the run falls back to in-process with a warning.
"""

from __future__ import annotations

import os
import sys
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from tqdm.auto import tqdm


@contextmanager
def torch_threads(n: int | None) -> Iterator[None]:
    """Run with ``torch.set_num_threads(n)`` (unchanged when ``n`` is None), restoring it after."""
    if n is None:
        yield
        return
    old = torch.get_num_threads()
    torch.set_num_threads(int(n))
    try:
        yield
    finally:
        torch.set_num_threads(old)


def _bar(total: int, desc: str, progress: bool | None):
    disable = (not sys.stderr.isatty()) if progress is None else not progress
    return tqdm(total=total, desc=desc, unit="cell", disable=disable, leave=False)


def ray_available() -> bool:
    try:
        import ray  # noqa: F401
    except ImportError:
        return False
    return True


def run_tasks(
    fn: Callable[[Any], Any],
    tasks: Sequence[Any],
    workers: int = 1,
    address: str | None = None,
    progress: bool | None = None,
    desc: str = "cells",
) -> Iterator[tuple[int, Any]]:
    """Yield ``(i, fn(tasks[i]))`` for every task, as results arrive.

    ``fn`` must be a module-level function (Ray pickles it by reference) and must not raise:
    cells turn their errors into records. In-process the order is the task order.
    """
    use_ray = (workers > 1 or address is not None) and len(tasks) > 0
    if use_ray and not ray_available():
        warnings.warn("ray is not installed (pip install 'evax[bench]'): running in-process", stacklevel=2)
        use_ray = False
    if not use_ray:
        with _bar(len(tasks), desc, progress) as bar:
            for i, task in enumerate(tasks):
                yield i, fn(task)
                bar.update(1)
        return
    yield from _run_ray(fn, tasks, workers, address, progress, desc)


def _run_ray(fn, tasks, workers, address, progress, desc) -> Iterator[tuple[int, Any]]:
    import ray

    started = False
    if not ray.is_initialized():
        if address is not None:
            ray.init(address=address, log_to_driver=False, configure_logging=False)
        else:
            # workers import evax from this interpreter's environment; keep the repo's src first
            src = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
            # and the working directory, for user models given as package.module:factory
            env = {"env_vars": {"PYTHONPATH": os.pathsep.join([src, os.getcwd(), os.environ.get("PYTHONPATH", "")])}}
            ray.init(
                num_cpus=workers,
                include_dashboard=False,
                log_to_driver=False,
                configure_logging=False,
                runtime_env=env,
            )
        started = True
    try:
        remote = ray.remote(num_cpus=1, max_retries=0)(fn)
        pending = {remote.remote(t): i for i, t in enumerate(tasks)}
        with _bar(len(tasks), f"{desc} (ray)", progress) as bar:
            while pending:
                done, _ = ray.wait(list(pending), num_returns=1)
                for ref in done:
                    i = pending.pop(ref)
                    yield i, ray.get(ref)
                    bar.update(1)
    finally:
        if started:
            ray.shutdown()
