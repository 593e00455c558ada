"""EVA against the Table-1 baselines on normally vs certifiably trained models (issue 18).

A thin wrapper over the bench table ``certified-study`` (:func:`evax.bench.registry.certified_study`,
run by :func:`evax.bench.runner.run_table`; ``evax bench certified-study`` runs the same cells):
for each (model, eps) setting -- default: the zoo's MNIST MLP and its CROWN-IBP-trained twin
``mnist-mlp-cert0.1``, the Fashion-MNIST pair, the IBP-trained small MNIST CNN, at the certified
models' training radius 0.1 and at the EVA paper's 0.5 -- every method on the first ``--n`` test
images, Deletion / Insertion / muFidelity on the 12 x 12 cells (App. F), the paired difference of
every baseline against EVA on the same images (mean +- standard error), EVA's Tightness (mean
AO(x, B) upper bound, default bound method) and the share of images certified robust (AO < 0).
Next to it (``--tiny-images``, slow: minutes per MILP) EVA's bound against the exact AO on a tiny
MLP trained normally and with IBP.

    python benchmarks/certified_study.py                          # n = 50, the default settings
    python benchmarks/certified_study.py --n 2 --quick --settings mnist-mlp-eps0.1 mnist-mlp-cert0.1-eps0.1

Writes ``benchmarks/results/certified_study.json`` and ``certified_study.md``; the bench's
output folder (cache, CSV, figures) is ``--bench-out`` (default
``benchmarks/results/certified_study_cache/bench``, not committed): a rerun resumes.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import torch

RESULTS = Path(__file__).parent / "results"
METRICS = ("deletion", "insertion", "mufidelity")
LOWER_IS_BETTER = {"deletion": True, "insertion": False, "mufidelity": False}


def run_setting(key: str, args) -> dict:
    """One setting of the bench table: its rows (with paired differences), Tightness, certified
    share and wall time."""
    from evax.bench import run_table

    start = time.perf_counter()
    df = run_table("certified-study", n=args.n, out=args.bench_out, settings=[key], methods=args.methods,
                   quick=args.quick, workers=args.workers, threads=args.threads, progress=False)
    seconds = time.perf_counter() - start
    meta = df.attrs["meta"]
    rows = [r for r in df.attrs["rows"] if r["setting"] == key]
    eva = {r["metric"]: r for r in rows if r["method"] == "EVA"}
    s = meta["settings"][key]
    return {"setting": key, "model": s["model"], "eps": s["eps"], "n": meta["n_images"][key], "seconds": seconds,
            "cells": meta["cells"], "rows": rows,
            "mean_ao": eva["tightness"]["mean"], "certified_robust": eva["certified"]["mean"]}


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


def summary(settings: list[dict]) -> str:
    """One row per setting (the table of docs/REPRODUCTION.md): EVA's Tightness, certified share
    and scores, Saliency's paired difference to EVA, and how many baselines are better / worse
    than EVA by more than 2 SE on each metric."""
    lines = ["| model | eps | n | wall s (cells computed) | EVA Tightness | certified | EVA Del.↓ | EVA Ins.↑ | "
             "EVA μFid.↑ | Saliency − EVA: Del. | Ins. | μFid. | baselines better / worse than EVA (> 2 SE), "
             "Del./Ins./μFid. |", "|---" * 13 + "|"]
    for s in settings:
        by = {(r["method"], r["metric"]): r for r in s["rows"]}
        counts = []
        for k in METRICS:
            significant = [r for (m, kk), r in by.items() if kk == k and m != "EVA" and r["diff"] is not None
                           and abs(r["diff"]) > 2 * r["diff_se"]]
            better = sum((r["diff"] < 0) == LOWER_IS_BETTER[k] for r in significant)
            counts.append(f"{better}/{len(significant) - better}")
        lines.append(
            f"| {s['model']} | {s['eps']} | {s['n']} | {s['seconds']:.0f} ({s.get('cells', {}).get('computed', '?')}) | "
            f"{s['mean_ao']:.4g} | {s['certified_robust']:.2f} | "
            + " | ".join(f"{by[('EVA', k)]['mean']:.3f} ± {by[('EVA', k)]['se']:.3f}" for k in METRICS) + " | "
            + " | ".join(f"{by[('Saliency', k)]['diff']:+.3f} ± {by[('Saliency', k)]['diff_se']:.3f}" for k in METRICS)
            + " | " + " · ".join(counts) + " |")
    return "\n".join(lines)


def markdown(settings: list[dict]) -> str:
    """One table per (model, eps): method rows, metric columns; in brackets the paired difference
    method - EVA (``better``: the baseline beats EVA on that metric)."""
    lines = []
    for s in settings:
        lines += [f"### {s['model']}, eps {s['eps']} (n = {s['n']}; EVA mean AO {s['mean_ao']:.4g}, "
                  f"certified robust {s['certified_robust']:.2f}; wall {s['seconds']:.0f} s"
                  + (f", cells {s['cells']}" if s.get("cells") else "") + ")", "",
                  "| method | " + " | ".join(METRICS) + " |", "|---" * (len(METRICS) + 1) + "|"]
        by = {(r["method"], r["metric"]): r for r in s["rows"] if r["metric"] in METRICS}
        methods = list(dict.fromkeys(r["method"] for r in s["rows"] if r["metric"] in METRICS))
        for m in methods:
            lines.append(f"| {m} | " + " | ".join(_cell(by[(m, k)], k) for k in METRICS) + " |")
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    from evax.bench.registry import CERTIFIED_METHODS, certified_study

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--settings", nargs="+", default=list(certified_study().default_settings),
                        help="(model, eps) settings of the bench table, e.g. mnist-mlp-eps0.1")
    parser.add_argument("--methods", nargs="+", default=[m for m in CERTIFIED_METHODS if m != "Greedy-AS"],
                        help="Greedy-AS is left out by default: about 120 s per MNIST digit on this CPU")
    parser.add_argument("--n", type=int, default=50)
    parser.add_argument("--quick", action="store_true", help="reduced budgets (smoke test)")
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--threads", type=int, default=None, help="torch threads per cell (default: unchanged)")
    parser.add_argument("--tiny-images", type=int, default=0,
                        help="images of the exact-AO (MILP) comparison (0: skip, keep the last run's block)")
    parser.add_argument("--tiny-epochs", type=int, default=6)
    parser.add_argument("--bench-out", default=str(RESULTS / "certified_study_cache" / "bench"))
    parser.add_argument("--out", default=str(RESULTS / "certified_study.json"))
    parser.add_argument("--merge", nargs="+", default=None, metavar="JSON",
                        help="run nothing: collect the --settings from these outputs of earlier runs (their "
                             "measured wall times kept) into --out")
    args = parser.parse_args()
    if "EVA" not in args.methods:
        raise SystemExit("the study compares every method with EVA: keep EVA in --methods")

    out = Path(args.out)
    previous = json.loads(out.read_text()) if out.exists() else {}
    tiny, tiny_source = previous.get("exact_tiny", []), previous.get(
        "exact_tiny_source", "commit 422a535 (python benchmarks/certified_study.py --tiny-images 3)")
    if args.tiny_images:
        tiny, tiny_source = exact_tiny(0.1, args.tiny_images, args.tiny_epochs), "this run"
    settings = []
    merged = {}
    for path in args.merge or []:
        part = json.loads(Path(path).read_text())
        for r in part["results"]:  # (results of the script before it ran the bench table: no "setting")
            key = r.get("setting") or f"{r['model']}-eps{r['eps']:g}"
            merged[key] = {"setting": key, "command": part.get("command"), "source": path, **r}
    for key in args.settings:
        s = merged[key] if args.merge else run_setting(key, args)
        settings.append(s)
        eva = {r["metric"]: r for r in s["rows"] if r["method"] == "EVA"}
        print(f"{key:<28} n {s['n']:<4} {s['seconds']:7.0f} s  mean AO {s['mean_ao']:10.4g}  "
              f"robust {s['certified_robust']:.2f}  EVA " + "  ".join(
                  f"{k} {eva[k]['mean']:.3f}" for k in METRICS if eva[k]["mean"] is not None), flush=True)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.with_suffix(".md").write_text(summary(settings) + "\n\n" + markdown(settings))
        out.write_text(json.dumps({
            "machine": {"platform": platform.platform(), "threads": torch.get_num_threads(),
                        "torch": torch.__version__},
            "command": " ".join(["python benchmarks/certified_study.py", *sys.argv[1:]]),
            "settings": vars(args), "results": settings, "exact_tiny": tiny, "exact_tiny_source": tiny_source},
            indent=1, default=str))
    print(markdown(settings))
    print(summary(settings))
    print(f"wrote {out} and {out.with_suffix('.md')}")


if __name__ == "__main__":
    main()
