"""Time per EVA explanation and tightness (mean AO(x, B)) on the zoo's MNIST MLP (or a CIFAR-10 net).

The EVA paper's MNIST setting: dense 784-256-128-64-32-10 (``evax.zoo.load_model("mnist-mlp")``,
trained weights shipped with evax), eps 0.5, p = inf, 12x12 grid (145 boxes per image), no
domain clipping (as the paper). For each engine method and each batch of 1, 8 and 32 MNIST test
images explained in one ``EVA.explain`` call: the median wall time over ``--runs`` runs divided
by the number of images, and the mean AO(x, B) upper bound over the images (EVA Table 2's
"Tightness": lower is tighter). Next to it, the median time of the bare engine call
``evax.bound`` on exactly the same boxes and margin specification, so ``ratio`` is what EVA adds
beyond the bound computation (the issue's target: within 1.3x).

    python benchmarks/eva.py                 # the METHODS below; batches 1, 8, 32
    python benchmarks/eva.py --methods backward alpha-crown@intermediate,iters=20
    python benchmarks/eva.py --quick         # one run, batches 1 and 8
    python benchmarks/eva.py --model cifar-paper --methods crown-ibp backward --runs 1 --batches 1
        # the EVA paper's CIFAR-10 CNN (Conv 128-80-64, MaxPool, Dense 64-10, seeded weights as
        # in benchmarks/bounds.py) on shipped CIFAR-10 images; ``cifar10-cnn`` is the zoo's CNN

Writes ``benchmarks/results/eva.json``.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch

RESULTS = Path(__file__).parent / "results"
METHODS = ("ibp", "backward", "ibp+backward", "ibp+forward+backward", "alpha-crown", "alpha-crown@intermediate")


def split_method(spec: str) -> tuple[str, dict]:
    """``"alpha-crown@intermediate"`` -> ``("alpha-crown", {"alpha_intermediate": True})``;
    options after ``@``, comma-separated: ``intermediate``, ``iters=N``, ``lr=X``."""
    method, _, opts = spec.partition("@")
    options: dict = {}
    for opt in filter(None, opts.split(",")):
        key, _, value = opt.partition("=")
        if key == "intermediate":
            options["alpha_intermediate"] = True
        elif key == "iters":
            options["alpha_iterations"] = int(value)
        elif key == "lr":
            options["alpha_lr"] = float(value)
        else:
            raise SystemExit(f"unknown method option {opt!r} in {spec!r}")
    return method, options


def load_images(n: int) -> torch.Tensor:
    """``n`` MNIST test images (the full test set when the cache/package source is reachable,
    else the 20 digits shipped with evax, repeated)."""
    from evax.errors import DataSourceError
    from evax.zoo import load_dataset

    try:
        images = load_dataset("mnist").images[:n]
    except DataSourceError:
        images = load_dataset("mnist-samples").images
        images = images.repeat((n + len(images) - 1) // len(images), 1, 1, 1)[:n]
    return images


def load_cifar_images(n: int) -> torch.Tensor:
    from evax.zoo import load_dataset

    images = load_dataset("cifar10-samples").images
    return images.repeat((n + len(images) - 1) // len(images), 1, 1, 1)[:n]


def load(name: str, n: int):
    """The model and ``n`` images of a benchmark setting."""
    from evax.zoo import load_model

    if name == "mnist-mlp":
        return load_model("mnist-mlp"), load_images(n)
    if name == "cifar-paper":
        from bounds import cifar_net

        return cifar_net(), load_cifar_images(n)
    if name == "cifar10-cnn":
        return load_model("cifar10-cnn").eval(), load_cifar_images(n)
    raise SystemExit(f"unknown --model {name!r}")


def time_explanations(model, images: torch.Tensor, method: str, runs: int) -> tuple[float, float]:
    """Median seconds of one ``explain`` call on ``images`` and the mean AO(x, B) (one run:
    no warm-up, for the slow CIFAR cases)."""
    import evax

    method, options = split_method(method)
    explainer = evax.EVA(model, eps=0.5, method=method, bound_options=options)
    if runs > 1:
        explanation = explainer.explain(images)  # warm-up (allocator, thread pool)
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        explanation = explainer.explain(images)
        times.append(time.perf_counter() - start)
    return statistics.median(times), float(explanation.ao.mean())


def time_engine(model, images: torch.Tensor, method: str, runs: int) -> float:
    """Median seconds of ``evax.bound`` on the ``N (1 + G)`` boxes EVA builds for ``images``."""
    import evax
    from evax.attribution.eva import DEFAULT_GROUPS, fixed_masks, margin_spec

    method, options = split_method(method)
    n, c = images.shape[:2]
    masks = evax.groups.resolve(DEFAULT_GROUPS, images, False)
    g = masks.shape[1]
    center = images.unsqueeze(1).expand(n, 1 + g, *images.shape[1:]).reshape(-1, *images.shape[1:])
    ball = evax.Ball(center, 0.5, fixed=fixed_masks(masks, n, c))
    spec = margin_spec(model(images).argmax(1), 10).repeat_interleave(1 + g, dim=0)
    if runs > 1:
        evax.bound(model, ball, method, spec, side="upper", **options)
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        evax.bound(model, ball, method, spec, side="upper", **options)  # EVA reads upper bounds only
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def summarise(rows: list[dict]) -> list[str]:
    """The issue's ratios, per batch: each method's time and mean AO against ``backward``'s."""
    lines = []
    by = {(r["method"], r["batch"]): r for r in rows}
    for (method, batch), r in by.items():
        ref = by.get(("backward", batch))
        if ref is None or method == "backward":
            continue
        lines.append(f"batch {batch}: {method} takes {r['s_per_explanation'] / ref['s_per_explanation']:.2f}x "
                     f"backward's time; mean AO {r['mean_ao']:.3f} vs {ref['mean_ao']:.3f}")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--methods", nargs="+", default=list(METHODS))
    parser.add_argument("--quick", action="store_true", help="one run, batches 1 and 8")
    parser.add_argument("--model", default="mnist-mlp", choices=["mnist-mlp", "cifar-paper", "cifar10-cnn"])
    parser.add_argument("--no-engine", action="store_true", help="skip the bare engine timing")
    parser.add_argument("--out", type=Path, default=RESULTS / "eva.json")
    args = parser.parse_args()
    if args.quick:
        args.runs, args.batches = 1, [1, 8]

    torch.set_grad_enabled(False)
    model, images = load(args.model, max(args.batches))
    rows = []
    header = f"{'method':<26}{'batch':>6}{'s/explanation':>15}{'engine s/image':>16}{'ratio':>7}{'mean AO(B)':>12}"
    print(header)
    print("-" * len(header))
    for method in args.methods:
        for batch in args.batches:
            seconds, tightness = time_explanations(model, images[:batch], method, args.runs)
            per_image = seconds / batch
            ref = float("nan") if args.no_engine else time_engine(model, images[:batch], method, args.runs) / batch
            ratio = per_image / ref
            rows.append(
                {
                    "method": method,
                    "batch": batch,
                    "s_per_explanation": per_image,
                    "engine_s_per_image": ref,
                    "ratio_to_engine": ratio,
                    "mean_ao": tightness,
                }
            )
            print(f"{method:<26}{batch:>6}{per_image:15.4f}{ref:16.4f}{ratio:7.2f}{tightness:12.3f}")
    summary = summarise(rows)
    for line in summary:
        print(line)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    out = {
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor(),
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
        },
        "settings": {"model": args.model, "eps": 0.5, "p": "inf", "grid": 12, "runs": args.runs},
        "rows": rows,
        "summary": summary,
    }
    args.out.write_text(json.dumps(out, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
