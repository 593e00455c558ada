"""Measure the zoo models' accuracies: ``python -m evax.zoo.evaluate [NAME ...]``.

Prints, per model, the accuracy measured now on its evaluation set next to the one the
registry records. This is the command that produced the registry's numbers.
"""

from __future__ import annotations

import argparse
import time

from evax.zoo.datasets import load_dataset
from evax.zoo.registry import list_models, load_model, model_info
from evax.zoo.train import accuracy


def evaluate(name: str, progress: bool = True, batch: int = 500) -> tuple[float, int]:
    """Top-1 accuracy of zoo model ``name`` on its ``eval_dataset``: ``(accuracy, N)``."""
    spec = model_info(name)
    images, labels, _ = load_dataset(spec.eval_dataset, "test", progress=progress)
    model = load_model(name, progress=progress)
    return accuracy(model, images, labels, batch=batch), len(labels)


def main(argv: list[str] | None = None) -> None:
    """Print measured vs recorded accuracy for the given (default: all) models."""
    parser = argparse.ArgumentParser(prog="python -m evax.zoo.evaluate", description=__doc__)
    parser.add_argument("names", nargs="*", default=list_models())
    args = parser.parse_args(argv)
    for name in args.names:
        t0 = time.perf_counter()
        acc, n = evaluate(name)
        spec = model_info(name)
        print(f"{name:30s} measured {acc:.4f} on {spec.eval_dataset} ({n})  "
              f"recorded {spec.accuracy:.4f}  [{time.perf_counter() - t0:.1f} s]", flush=True)


if __name__ == "__main__":
    main()
