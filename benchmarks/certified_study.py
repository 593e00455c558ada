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
# Greedy-AS is left out by default: about 120 s per MNIST digit on this CPU (n = 50 x 4 settings
# would be hours); pass --methods ... Greedy-AS EVA to include it
METHODS = ("Saliency", "GradInput", "InteGrad", "SmoothGrad", "VarGrad", "Occlusion", "RISE", "EVA")
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


def tiny_net(seed: int) -> torch.nn.Module:
    from torch import nn

    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(49, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 10))


def exact_tiny(eps: float, n_images: int, epochs: int) -> list[dict]:
    """EVA's bound against the exact AO (MILP) on a tiny MLP (7 x 7 MNIST, 49-16-16-10), trained
    normally and certifiably (IBP at ``eps``) on the same data and seed: mean AO(x, B) of the
    default method and of the MILP, the mean gap, and how often the two EVA maps rank the 49
    pixels alike (Spearman) -- how much of EVA's signal is the relaxation's looseness."""
    import torch.nn.functional as F

    import evax
    from evax.zoo import load_dataset
    from evax.zoo.certified import CertifiedSchedule, fit_certified

    train, test = load_dataset("mnist", "train"), load_dataset("mnist")
    fit_x, fit_y = F.avg_pool2d(train.images[:20000], 4), train.labels[:20000]  # (N, 1, 7, 7) in [0, 1]
    x_all, y_all = F.avg_pool2d(test.images[:1000], 4), test.labels[:1000]
    x = x_all[:n_images]
    out = []
    for name, schedule in (("normal", CertifiedSchedule(eps=0.0, warmup=epochs, ramp=0)),
                           (f"IBP eps {eps}", CertifiedSchedule(eps=eps, warmup=1, ramp=max(1, epochs // 2),
                                                                 beta_start=0.0, beta_end=0.0))):
        net = fit_certified(tiny_net(0), fit_x, fit_y, schedule, epochs, torch.Generator().manual_seed(0))
        with torch.no_grad():
            acc = float((net(x_all).argmax(1) == y_all).double().mean())
        groups = evax.groups.grid(7)  # one cell per pixel
        start = time.perf_counter()
        approx = evax.EVA(net, eps=eps, groups=groups).explain(x)
        exact = evax.EVA(net, eps=eps, method="exact", groups=groups).explain(x)
        seconds = time.perf_counter() - start

        def ranks(t: torch.Tensor) -> torch.Tensor:
            return t.argsort(1).argsort(1).double()

        ra, re = ranks(approx.scores), ranks(exact.scores)
        ra, re = ra - ra.mean(1, keepdim=True), re - re.mean(1, keepdim=True)
        spearman = (ra * re).sum(1) / (ra.norm(dim=1) * re.norm(dim=1)).clamp_min(1e-12)
        out.append({"model": name, "clean_accuracy_test_1000": acc, "eps": eps, "n": n_images,
                    "mean_ao_bound": float(approx.ao.mean()), "mean_ao_exact": float(exact.ao.mean()),
                    "mean_gap": float((approx.ao - exact.ao).mean()),
                    "certified_robust_bound": float((approx.ao < 0).double().mean()),
                    "robust_exact": float((exact.ao < 0).double().mean()),
                    "spearman_bound_vs_exact_maps": float(spearman.mean()), "seconds": seconds})
        r = out[-1]
        print(f"tiny {name:<12} acc {acc:.3f}  AO bound {r['mean_ao_bound']:.3f}  exact {r['mean_ao_exact']:.3f}  "
              f"robust bound/exact {r['certified_robust_bound']:.2f}/{r['robust_exact']:.2f}  "
              f"Spearman {r['spearman_bound_vs_exact_maps']:.2f}  ({seconds:.0f} s)", flush=True)
    return out


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
    parser.add_argument("--tiny-images", type=int, default=10, help="images of the exact-AO comparison (0: skip)")
    parser.add_argument("--tiny-epochs", type=int, default=6)
    parser.add_argument("--cache", default=str(RESULTS / "certified_study_cache"))
    parser.add_argument("--out", default=str(RESULTS / "certified_study.json"))
    args = parser.parse_args()
    if "EVA" not in args.methods:
        raise SystemExit("the study compares every method with EVA: keep EVA in --methods")

    settings, tiny = [], []
    if args.tiny_images:
        tiny = exact_tiny(0.1, args.tiny_images, args.tiny_epochs)
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
                "settings": vars(args), "results": settings, "exact_tiny": tiny}, indent=1, default=str))
    print(markdown(settings))
    print(f"wrote {args.out} and {Path(args.out).with_suffix('.md')}")


if __name__ == "__main__":
    main()
