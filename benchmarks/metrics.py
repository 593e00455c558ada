"""Time per image of the EVA paper's metrics (and optionally of the attribution methods).

On the zoo's MNIST MLP (``mnist-mlp`` with the shipped ``mnist-samples``) and, if it loads, the
CIFAR-10 CNN (``cifar10-cnn`` with ``cifar10-samples``), for ``--n`` images explained by
Saliency, the wall time of each metric divided by the number of images:

* Deletion, Insertion (pixels, one pixel per step, uniform baseline: the paper's setting);
* MuFidelity (pixels, subsets of 20 %, 200 subsets);
* RobustnessSr on the 144 cells of a 12x12 grid with the default budget (20 steps of 5 %,
  PGD 100 steps of 0.1 r with patience 10, 1 start, radius search from 10 to tol 1e-3, at most 40 search
  steps, domain [0, 1]); the budget is printed next to the time, with the number of capped
  (sample, step) pairs;
* Tightness (mean verified AO, eps 0.5, p=inf, with the paper's bound method for the network),
  on the whole ball and on the ball clipped to the domain [0, 1].

``--methods`` also times every method of ``evax.attribution.METHODS`` (with its defaults;
``n/a`` where it does not apply).

    python benchmarks/metrics.py                 # both models, 4 images, 1 torch thread
    python benchmarks/metrics.py --quick         # MNIST only, 2 images
    python benchmarks/metrics.py --methods       # + time of each attribution method

Writes ``benchmarks/results/metrics.json`` and ``metrics.csv`` (``--out`` changes the stem). Times depend on the machine and
its load: the load average is recorded next to them.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import time
import warnings
from pathlib import Path
from typing import Any

import torch

from evax.attribution import METHODS, Saliency
from evax.errors import EvaxError, NotApplicableError
from evax.groups import grid
from evax.metrics import Deletion, Insertion, MuFidelity, RobustnessSr, Tightness

RESULTS = Path(__file__).parent / "results"
BOUND_METHOD = {"mnist-mlp": "ibp+forward+backward", "cifar10-cnn": "ibp+forward"}  # the paper's choice


def load(name: str, n: int) -> tuple[torch.nn.Module, torch.Tensor] | None:
    from evax.zoo import load_dataset, load_model

    data_name = {"mnist-mlp": "mnist-samples", "cifar10-cnn": "cifar10-samples"}[name]
    try:
        model = load_model(name, progress=False).eval()
        images = load_dataset(data_name, progress=False).images[:n]
    except EvaxError as exc:
        print(f"{name}: could not load ({exc}); skipped")
        return None
    return model, images


def timed(fn: Any) -> tuple[Any, float]:
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def bench_metrics(name: str, model: torch.nn.Module, x: torch.Tensor) -> list[dict]:
    n = x.shape[0]
    expl = Saliency(model).attribute(x)
    rows = []
    for metric_name, build in [
        ("Deletion", lambda: Deletion(model, x, progress=False)),
        ("Insertion", lambda: Insertion(model, x, progress=False)),
        ("MuFidelity", lambda: MuFidelity(model, x, progress=False)),
        ("RobustnessSr", lambda: RobustnessSr(model, x, groups=grid(12), progress=False)),
    ]:

        def run(build: Any = build) -> dict:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                return build()(expl, detailed=True)

        out, seconds = timed(run)
        row = {"model": name, "metric": metric_name, "images": n, "s_per_image": seconds / n,
               "mean_score": float(out.mean)}  # fmt: skip
        print(f"  {metric_name:14s} {seconds / n:9.3f} s/image", flush=True)
        if metric_name == "RobustnessSr":
            row["budget"] = dict(out.budget)
            row["capped_pairs"] = int(out.capped.sum())
            row["pairs"] = int(out.capped.numel())
        rows.append(row)
    method = BOUND_METHOD[name]
    for domain in (None, (0.0, 1.0)):
        label = f"Tightness ({method}{', [0,1]' if domain else ''})"
        try:
            out, seconds = timed(lambda domain=domain: Tightness(model, x, domain=domain)(method, detailed=True))
            rows.append({"model": name, "metric": label, "images": n, "s_per_image": seconds / n,
                         "mean_score": float(out.mean)})  # fmt: skip
        except EvaxError as exc:
            rows.append({"model": name, "metric": label, "images": n, "s_per_image": None,
                         "mean_score": None, "error": str(exc)})  # fmt: skip
    return rows


def bench_methods(name: str, model: torch.nn.Module, x: torch.Tensor) -> list[dict]:
    rows = []
    for method_name, cls in METHODS.items():
        row: dict[str, Any] = {"model": name, "method": method_name, "images": x.shape[0]}
        try:
            method = cls(model)
            _, seconds = timed(lambda method=method: method.attribute(x))
            row["s_per_image"] = seconds / x.shape[0]
        except NotApplicableError as exc:
            row["s_per_image"], row["error"] = None, f"n/a: {exc}"
        except EvaxError as exc:
            row["s_per_image"], row["error"] = None, str(exc)
        rows.append(row)
        print(f"  {method_name:20s} {row['s_per_image'] if row['s_per_image'] is None else round(row['s_per_image'], 3)}")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["mnist-mlp", "cifar10-cnn"])
    parser.add_argument("--n", type=int, default=4, help="images per model")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (1: the PGD/bisection loops are many small ops that more "
                        "threads slow down on a busy machine)")
    parser.add_argument("--quick", action="store_true", help="MNIST only, 2 images")
    parser.add_argument("--methods", action="store_true", help="also time every attribution method")
    parser.add_argument("--out", default="metrics", help="stem of the result files in benchmarks/results/")
    args = parser.parse_args()
    if args.quick:
        args.models, args.n = ["mnist-mlp"], 2
    torch.set_num_threads(args.threads)
    env = {
        "threads": args.threads,
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "platform": platform.platform(),
        "load_average_start": os.getloadavg(),
    }
    metric_rows: list[dict] = []
    method_rows: list[dict] = []
    for name in args.models:
        loaded = load(name, args.n)
        if loaded is None:
            continue
        model, x = loaded
        print(f"{name}: {tuple(x.shape)}")
        metric_rows += bench_metrics(name, model, x)
        if args.methods:
            method_rows += bench_methods(name, model, x)
    env["load_average_end"] = os.getloadavg()
    print(f"\n{'model':12s} {'metric':40s} {'s/image':>9s} {'mean':>9s}  notes")
    for r in metric_rows:
        s = "n/a" if r["s_per_image"] is None else f"{r['s_per_image']:.3f}"
        m = "n/a" if r["mean_score"] is None else f"{r['mean_score']:.4f}"
        note = ""
        if "budget" in r:
            b = r["budget"]
            note = (f"144 cells, PGD {b['steps']} steps x {b['restarts']} start(s), step {b['step_size']} r, "
                    f"search from {b['start']} to tol {b['tol']}; capped {r['capped_pairs']}/{r['pairs']}")  # fmt: skip
        print(f"{r['model']:12s} {r['metric']:40s} {s:>9s} {m:>9s}  {note}{r.get('error', '')}")
    print(f"threads {args.threads}, load average {env['load_average_start']} -> {env['load_average_end']}")
    RESULTS.mkdir(exist_ok=True)
    json_path, csv_path = RESULTS / f"{args.out}.json", RESULTS / f"{args.out}.csv"
    json_path.write_text(
        json.dumps({"env": env, "metrics": metric_rows, "methods": method_rows}, indent=2, default=str)
    )
    with open(csv_path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["model", "metric", "images", "s_per_image", "mean_score"],
                                extrasaction="ignore")  # fmt: skip
        writer.writeheader()
        writer.writerows(metric_rows)
    print(f"wrote {json_path} and {csv_path}")


if __name__ == "__main__":
    main()
