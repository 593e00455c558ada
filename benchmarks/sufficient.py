"""Verified sufficient explanations on MNIST: size, certified rate, engine calls and time.

For each zoo model (mnist-mlp with ``backward`` = CROWN, mnist-lenet5 with ``crown-ibp``: full
CROWN on LeNet5 takes about 14 s per box on this CPU, see docs/benchmarks.md), eps, cells
(pixels or a 12x12 grid) and order (eva, saliency, verix heuristic, random), the shipped MNIST
digits are explained in one ``Sufficient.explain`` call (greedy search, domain (0, 1), p = inf,
counterfactual witnesses on). Reported per configuration: mean kept size (and fraction of the
cells), certified rate, sequential engine calls of the batch, boxes per image, seconds per image
(the batch's wall time divided by the number of images, order computation included), the
witnessed fraction of the kept cells, and Deletion / Insertion AUCs of the order (20 steps,
uniform baseline). A separate *latency* table explains single images (batch of 1), wall time and the process's
CPU time (one torch thread: CPU time is what the explanation costs when the machine is not
shared).

    python benchmarks/sufficient.py                       # everything (long: LeNet5 pixels)
    python benchmarks/sufficient.py --models mnist-mlp --images 5
    python benchmarks/sufficient.py --lenet-pixel-images 3  # fewer digits for LeNet5 pixels
    python benchmarks/sufficient.py --only-gap --out benchmarks/results/sufficient_gap.json
    python benchmarks/sufficient.py --models mnist-mlp --cells grid12 --method alpha-crown \
        --gap-side 0 --latency-images 0 --out benchmarks/results/sufficient_alpha.json

The gap table compares the greedy set with the exhaustive smallest kept set (same engine
method, mnist-mlp, a 3x3 grid: 512 subsets per digit).

Writes ``benchmarks/results/sufficient.json`` (or ``--out``).
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch

RESULTS = Path(__file__).parent / "results"
METHODS = {"mnist-mlp": "backward", "mnist-lenet5": "crown-ibp"}
ORDERS = ("eva", "saliency", "verix", "random")


def _order(name: str, model):
    if name == "saliency":
        from evax.attribution import Saliency

        return Saliency(model)
    return name


def run_config(model, images, method: str, eps: float, groups, order: str, counterfactuals: bool = True) -> dict:
    import evax
    from evax.metrics.sufficiency import sufficiency_scores

    suff = evax.Sufficient(model, eps, method=method, groups=groups, order=_order(order, model),
                           domain=(0.0, 1.0), counterfactuals=counterfactuals)
    start = time.perf_counter()
    e = suff.explain(images)
    seconds = time.perf_counter() - start
    m = sufficiency_scores(model, images, e, steps=20)
    kept = int(e.kept.sum())
    return {
        "mean_size": m["mean_size"],
        "mean_fraction": m["mean_fraction"],
        "certified_rate": m["certified_rate"],
        "checks": e.checks,
        "boxes_per_image": e.boxes / images.shape[0],
        "seconds_per_image": seconds / images.shape[0],
        "witness_seconds_per_image": e.params["witness_seconds"] / images.shape[0],
        "witnessed_fraction": (int(e.witnessed.sum()) / kept) if kept else 0.0,
        "deletion": m["mean_deletion"],
        "insertion": m["mean_insertion"],
        "sizes": e.size.tolist(),
    }


def latency(model, images, method: str, eps: float, order: str) -> dict:
    """Seconds of single-image pixel-level explanations (batch of 1), one per image."""
    import evax

    suff = evax.Sufficient(model, eps, method=method, groups=None, order=_order(order, model), domain=(0.0, 1.0))
    times, cpu, sizes, cert = [], [], [], []
    for i in range(images.shape[0]):
        start, start_cpu = time.perf_counter(), time.process_time()
        e = suff.explain(images[i : i + 1])
        times.append(time.perf_counter() - start)
        cpu.append(time.process_time() - start_cpu)
        sizes.append(int(e.size[0]))
        cert.append(bool(e.certified[0]))
    return {"seconds": times, "cpu_seconds": cpu, "sizes": sizes, "certified": cert,
            "mean_seconds": sum(times) / len(times), "max_seconds": max(times),
            "mean_cpu_seconds": sum(cpu) / len(cpu), "max_cpu_seconds": max(cpu)}


def gap(model, images, method: str, eps: float, n_side: int) -> dict:
    """Greedy (eva / verix / random orders) against the exhaustive smallest kept set, same
    engine method, on an ``n_side x n_side`` grid (``2^G`` subsets: tiny ``G`` only)."""
    import evax

    groups = evax.groups.grid(n_side)
    common = {"method": method, "groups": groups, "domain": (0.0, 1.0), "counterfactuals": False}
    start = time.perf_counter()
    small = evax.Sufficient(model, eps, search="smallest", max_cells=n_side**2, **common).explain(images)
    out = {"cells": n_side**2, "smallest_mean": float(small.size.double().mean()),
           "smallest_certified": float(small.certified.double().mean()),
           "smallest_seconds_per_image": (time.perf_counter() - start) / images.shape[0]}
    for order in ("eva", "verix", "random"):
        e = evax.Sufficient(model, eps, order=order, **common).explain(images)
        out[f"{order}_mean"] = float(e.size.double().mean())
        out[f"{order}_equal_to_smallest"] = float((e.size == small.size).double().mean())
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=list(METHODS))
    parser.add_argument("--eps", nargs="+", type=float, default=[0.05, 0.1])
    parser.add_argument("--cells", nargs="+", default=["pixels", "grid12"])
    parser.add_argument("--orders", nargs="+", default=list(ORDERS))
    parser.add_argument("--images", type=int, default=20)
    parser.add_argument("--lenet-pixel-images", type=int, default=None,
                        help="digits for mnist-lenet5 at pixel level (default: --images)")
    parser.add_argument("--latency-images", type=int, default=5)
    parser.add_argument("--gap-side", type=int, default=3,
                        help="grid side of the greedy-vs-smallest comparison on mnist-mlp (0: skip)")
    parser.add_argument("--only-latency", action="store_true",
                        help="mnist-mlp single-digit latency only (no table, no gap)")
    parser.add_argument("--only-gap", action="store_true", help="run only the greedy-vs-smallest comparison")
    parser.add_argument("--method", default=None,
                        help="bound method for every model (default: backward on mnist-mlp, crown-ibp on LeNet5), "
                             "e.g. alpha-crown")
    parser.add_argument("--no-counterfactuals", action="store_true",
                        help="skip the PGD witness search (most of LeNet5's time; 'witn' is then 0 by construction)")
    parser.add_argument("--out", default=str(RESULTS / "sufficient.json"))
    args = parser.parse_args()

    import evax
    from evax.zoo import load_dataset, load_model

    torch.manual_seed(0)
    digits = load_dataset("mnist-samples").images[: args.images]
    rows, lat, gaps = [], [], []
    if args.only_latency:
        args.gap_side, args.orders, args.models = 0, [], ["mnist-mlp"]

    def save() -> None:  # after every configuration: a long run interrupted keeps what it measured
        out = {
            "machine": {"platform": platform.platform(), "threads": torch.get_num_threads(),
                        "torch": torch.__version__},
            "note": "other jobs shared the 2-core CPU during the run; times are indicative",
            "settings": vars(args),
            "rows": rows,
            "latency": lat,
            "gap": gaps,
        }
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(out, indent=1))

    if args.gap_side:
        mlp = load_model("mnist-mlp", progress=False)
        for eps in args.eps:
            gp = gap(mlp, digits, "backward", eps, args.gap_side)
            gp.update(model="mnist-mlp", method="backward", eps=eps)
            gaps.append(gp)
            print(f"gap mnist-mlp eps={eps} {args.gap_side}x{args.gap_side} grid: smallest {gp['smallest_mean']:.2f}, "
                  f"greedy eva {gp['eva_mean']:.2f} / verix {gp['verix_mean']:.2f} / random {gp['random_mean']:.2f} "
                  f"(equal to smallest: {gp['eva_equal_to_smallest']:.2f} / {gp['verix_equal_to_smallest']:.2f} / "
                  f"{gp['random_equal_to_smallest']:.2f})", flush=True)
    if args.only_gap:
        args.models = []
    print(f"{'model':<13}{'eps':>5} {'cells':<7}{'order':<9}{'size':>7}{'frac':>6}{'cert':>6}"
          f"{'calls':>6}{'boxes/im':>9}{'s/im':>7}{'witn':>6}{'del':>6}{'ins':>6}")
    for name in args.models:
        model = load_model(name, progress=False)
        method = args.method or METHODS.get(name, "backward")
        for eps in args.eps:
            for cells in args.cells:
                groups = None if cells == "pixels" else evax.groups.grid(12)
                imgs = digits
                if name == "mnist-lenet5" and cells == "pixels" and args.lenet_pixel_images:
                    imgs = digits[: args.lenet_pixel_images]
                for order in args.orders:
                    r = run_config(model, imgs, method, eps, groups, order, not args.no_counterfactuals)
                    r.update(model=name, method=method, eps=eps, cells=cells, order=order, images=imgs.shape[0])
                    rows.append(r)
                    save()
                    print(f"{name:<13}{eps:>5} {cells:<7}{order:<9}{r['mean_size']:>7.1f}{r['mean_fraction']:>6.2f}"
                          f"{r['certified_rate']:>6.2f}{r['checks']:>6}{r['boxes_per_image']:>9.0f}"
                          f"{r['seconds_per_image']:>7.2f}{r['witnessed_fraction']:>6.2f}"
                          f"{r['deletion']:>6.3f}{r['insertion']:>6.3f}", flush=True)
        if name == "mnist-mlp" and args.latency_images:
            for eps in args.eps:
                for order in ("verix", "eva"):
                    lr = latency(model, digits[: args.latency_images], method, eps, order)
                    lr.update(model=name, method=method, eps=eps, order=order)
                    lat.append(lr)
                    save()
                    print(f"latency {name} eps={eps} pixels order={order}: mean {lr['mean_seconds']:.2f} s, "
                          f"max {lr['max_seconds']:.2f} s per digit (batch of 1); CPU time mean "
                          f"{lr['mean_cpu_seconds']:.2f} s, max {lr['max_cpu_seconds']:.2f} s", flush=True)
    save()
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
