"""EVA against the Table-1 baselines on normally vs certifiably trained models (issue 18).

For each model (default: the zoo's MNIST MLP and its CROWN-IBP/IBP-trained twin
``mnist-mlp-cert0.1``, the Fashion-MNIST pair, the certified small MNIST CNN) and each EVA
radius (default: the certified models' training radius 0.1 and the EVA paper's 0.5), every
method on the first ``--n`` test images through ``evax evaluate``'s cells (same specs, same
cache: a rerun resumes), Deletion / Insertion / muFidelity on the 12 x 12 cells (the paper's
protocol), and the paired difference of every baseline against EVA on the same images
(mean +- standard error). Next to it EVA's Tightness (mean AO(x, B) upper bound of the default
method) and the fraction of images certified robust at that radius.

    python benchmarks/certified_study.py                          # n = 50, the default models
    python benchmarks/certified_study.py --n 5 --quick --models mnist-mlp mnist-mlp-cert0.1

Writes ``benchmarks/results/certified_study.json`` and ``certified_study.md`` (the table);
the cells are cached under ``--cache`` (default ``benchmarks/results/certified_study_cache``,
not committed).
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch

RESULTS = Path(__file__).parent / "results"
MODELS = ("mnist-mlp", "mnist-mlp-cert0.1", "fashion-mlp", "fashion-mlp-cert0.1", "mnist-cnn-cert0.1")
METHODS = ("Saliency", "GradInput", "InteGrad", "SmoothGrad", "VarGrad", "Occlusion", "RISE", "Greedy-AS", "EVA")
METRICS = ("deletion", "insertion", "mufidelity")
LOWER_IS_BETTER = {"deletion": True, "insertion": False, "mufidelity": False}


def dataset_of(model: str) -> str:
    return "fashion-mnist" if model.startswith("fashion") else "mnist"


def tightness(model, x: torch.Tensor, eps: float) -> dict[str, float]:
    """Mean AO(x, B) upper bound (default method, p = inf, no domain, as EVA) and the certified
    robust fraction (AO < 0)."""
    import evax
    from evax.attribution.eva import margin_spec

    with torch.no_grad():
        y = model(x).argmax(1)
    b = evax.bound(model, evax.Ball(x, eps), evax.bounds.DEFAULT_METHOD, margin_spec(y, 10), side="upper")
    ao = b.upper.amax(1)
    return {"mean_ao": float(ao.mean()), "certified_robust": float((ao < 0).double().mean())}


def run_setting(name: str, eps: float, args) -> dict:
    import numpy as np

    from evax.bench import evaluate as ev
    from evax.bench import evaluate_report as rep
    from evax.zoo import load_dataset, load_model

    data = load_dataset(dataset_of(name))
    x = data.images[: args.n]
    out = Path(args.cache) / f"{name}_eps{eps}"
    out.mkdir(parents=True, exist_ok=True)
    path = out / "images.npz"
    np.savez(path, images=x.numpy(), labels=data.labels[: args.n].numpy())
    model = load_model(name, progress=False).eval()
    cfg = ev.EvaluateConfig(methods=list(args.methods), metrics=list(METRICS), reference="EVA", eps=eps,
                            quick=args.quick)
    model_spec = {"path_or_name": name, "input_shape": list(x.shape[1:]), "weights": None, "mean": None,
                  "std": None, "classes": None, "layout": "auto"}
    images_spec = {"spec": str(path.resolve()), "input_shape": list(x.shape[1:]), "labels": None, "limit": None}
    start = time.perf_counter()
    cells, records, _ = ev.run(model_spec, images_spec, x.shape[0], cfg, out, workers=args.workers, progress=False)
    rows = rep.summarize(cells, records, cfg.methods, cfg.metrics, cfg.reference)
    return {"model": name, "eps": eps, "n": int(x.shape[0]), "seconds": time.perf_counter() - start,
            "rows": rows, **tightness(model, x, eps)}


def _cell(row: dict, metric: str) -> str:
    if row["mean"] is None:
        return row.get("error") or "-"
    text = f"{row['mean']:.3f} +- {row['se']:.3f}"
    if row["diff"] is not None:
        better = (row["diff"] < 0) == LOWER_IS_BETTER[metric]
        text += f" ({row['diff']:+.3f} +- {row['diff_se']:.3f}{' better' if better else ''})"
    return text


def markdown(settings: list[dict]) -> str:
    """One table per (model, eps): method rows, metric columns; in brackets the paired difference
    method - EVA (``better``: the baseline beats EVA on that metric)."""
    lines = []
    for s in settings:
        lines += [f"### {s['model']}, eps {s['eps']} (n = {s['n']}; EVA mean AO {s['mean_ao']:.4g}, "
                  f"certified robust {s['certified_robust']:.2f})", "",
                  "| method | " + " | ".join(METRICS) + " |", "|---" * (len(METRICS) + 1) + "|"]
        by = {(r["method"], r["metric"]): r for r in s["rows"]}
        methods = list(dict.fromkeys(r["method"] for r in s["rows"]))
        for m in methods:
            lines.append(f"| {m} | " + " | ".join(_cell(by[(m, k)], k) for k in METRICS) + " |")
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=list(MODELS))
    parser.add_argument("--eps", nargs="+", type=float, default=[0.1, 0.5])
    parser.add_argument("--methods", nargs="+", default=list(METHODS))
    parser.add_argument("--n", type=int, default=50)
    parser.add_argument("--quick", action="store_true", help="reduced budgets (smoke test)")
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--cache", default=str(RESULTS / "certified_study_cache"))
    parser.add_argument("--out", default=str(RESULTS / "certified_study.json"))
    args = parser.parse_args()
    if "EVA" not in args.methods:
        raise SystemExit("the study compares every method with EVA: keep EVA in --methods")

    settings = []
    for name in args.models:
        for eps in args.eps:
            s = run_setting(name, eps, args)
            settings.append(s)
            eva = {r["metric"]: r for r in s["rows"] if r["method"] == "EVA"}
            print(f"{name:<22} eps {eps:<5} n {s['n']:<4} {s['seconds']:7.0f} s  mean AO {s['mean_ao']:10.4g}  "
                  f"robust {s['certified_robust']:.2f}  EVA " + "  ".join(
                      f"{k} {eva[k]['mean']:.3f}" for k in METRICS if eva[k]["mean"] is not None), flush=True)
            table = markdown(settings)
            Path(args.out).parent.mkdir(parents=True, exist_ok=True)
            Path(args.out).with_suffix(".md").write_text(table)
            Path(args.out).write_text(json.dumps({
                "machine": {"platform": platform.platform(), "threads": torch.get_num_threads(),
                            "torch": torch.__version__},
                "settings": vars(args), "results": settings}, indent=1, default=str))
    print(markdown(settings))
    print(f"wrote {args.out} and {Path(args.out).with_suffix('.md')}")


if __name__ == "__main__":
    main()
