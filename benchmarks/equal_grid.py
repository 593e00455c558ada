"""EVA on the paper's 12 x 12 grid against a grid of equal cells, same metrics protocol.

On 28 x 28 MNIST digits the 12 x 12 grid has cell edges at ``round(i * 28 / 12)``: rows and
columns of 2 and 3 pixels, so cells of 4, 6 and 9 pixels. EVA's score of a cell is the drop of
the adversarial-overlap bound when that cell is fixed, which grows with the cell's area; the
maps then show the grid (brighter stripes where the cells are 3 pixels wide). ``grid(12,
equal=True)`` uses 14 x 14 cells of 2 x 2 pixels instead.

For each grouping, on the shipped MNIST digits and the zoo MLP (default bound method, eps 0.5,
no domain, as the paper): EVA maps, then Deletion and Insertion (pixel variables, 10 steps,
uniform baseline) and muFidelity (9 x 9 cells, 200 subsets) -- Xplique's default protocol,
which does not depend on the explainer's grid -- and the paper's protocol (every metric on the
12 x 12 cells, 20 steps). Also: the mean EVA cell score by cell area (4 / 6 / 9 pixels), and a
figure of the first digits' maps with both groupings.

    python benchmarks/equal_grid.py            # 20 digits
    python benchmarks/equal_grid.py --images 5 --quick

Writes ``benchmarks/results/equal_grid.json`` and ``equal_grid.png``.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch

RESULTS = Path(__file__).parent / "results"


def metric_scores(model, x, y, maps, protocol: str, quick: bool) -> dict[str, torch.Tensor]:
    """Per-image Deletion, Insertion, muFidelity of ``maps`` ``(N, H, W)``."""
    from evax.groups import grid
    from evax.metrics import Deletion, Insertion, MuFidelity

    if protocol == "xplique":
        cause = {"groups": None, "steps": 10}
        fid = {"groups": grid(9)}
    else:  # the EVA paper's: 12 x 12 cells everywhere
        cause = {"groups": grid(12), "steps": 20}
        fid = {"groups": grid(12)}
    subsets = 50 if quick else 200
    return {
        "deletion": Deletion(model, x, y, **cause, progress=False)(maps),
        "insertion": Insertion(model, x, y, **cause, progress=False)(maps),
        "mufidelity": MuFidelity(model, x, y, **fid, n_subsets=subsets, progress=False)(maps),
    }


def area_profile(ex, masks: torch.Tensor) -> dict[str, float]:
    """Mean EVA cell score by cell area (pixels)."""
    area = masks.flatten(2).sum(2)[0]  # (G,)
    out = {}
    for a in area.unique().tolist():
        out[str(int(a))] = float(ex.scores[:, area == a].mean())
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=20)
    parser.add_argument("--eps", type=float, default=0.5)
    parser.add_argument("--quick", action="store_true", help="50 muFidelity subsets")
    parser.add_argument("--out", default=str(RESULTS / "equal_grid.json"))
    args = parser.parse_args()

    import evax
    from evax.groups import grid
    from evax.zoo import load_dataset, load_model

    model = load_model("mnist-mlp", progress=False).eval()
    x = load_dataset("mnist-samples").images[: args.images]
    with torch.no_grad():
        y = model(x).argmax(1)
    rows, maps = [], {}
    for name, groups in (("grid12", grid(12)), ("equal", grid(12, equal=True))):
        masks = evax.groups.resolve(groups, x)
        start = time.perf_counter()
        ex = evax.EVA(model, eps=args.eps, groups=groups).explain(x, y)
        seconds = time.perf_counter() - start
        maps[name] = ex.map
        row = {"grouping": name, "cells": int(masks.shape[1]), "eva_seconds_per_image": seconds / len(x),
               "mean_score_by_area": area_profile(ex, masks), "mean_ao": float(ex.ao.mean())}
        for protocol in ("xplique", "paper"):
            for key, v in metric_scores(model, x, y, ex.map, protocol, args.quick).items():
                row[f"{protocol}_{key}"] = float(v.mean())
                row[f"{protocol}_{key}_per_image"] = v.tolist()
        rows.append(row)
        print(f"{name:<7} cells {row['cells']:>4}  {row['eva_seconds_per_image']:.2f} s/image  scores by area "
              f"{ {k: round(v, 2) for k, v in row['mean_score_by_area'].items()} }", flush=True)
    # paired differences (equal - grid12) with standard errors
    print(f"{'protocol':<9}{'metric':<12}{'grid12':>9}{'equal':>9}{'equal-grid12':>14}{'+-SE':>8}")
    diffs = {}
    for protocol in ("xplique", "paper"):
        for key in ("deletion", "insertion", "mufidelity"):
            a = torch.tensor(rows[0][f"{protocol}_{key}_per_image"])
            b = torch.tensor(rows[1][f"{protocol}_{key}_per_image"])
            d = b - a
            se = float(d.std() / len(d) ** 0.5) if len(d) > 1 else float("nan")
            diffs[f"{protocol}_{key}"] = {"mean": float(d.mean()), "se": se}
            print(f"{protocol:<9}{key:<12}{float(a.mean()):>9.3f}{float(b.mean()):>9.3f}{float(d.mean()):>14.3f}{se:>8.3f}")
    figure = Path(args.out).with_suffix(".png")
    _figure(x[:6], maps, figure)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({
        "machine": {"platform": platform.platform(), "threads": torch.get_num_threads(), "torch": torch.__version__},
        "settings": vars(args), "method": evax.bounds.DEFAULT_METHOD, "rows": rows, "paired_differences": diffs,
    }, indent=1))
    print(f"wrote {args.out} and {figure}")


def _figure(x: torch.Tensor, maps: dict[str, torch.Tensor], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = x.shape[0]
    fig, axes = plt.subplots(3, n, figsize=(1.6 * n, 5.0), squeeze=False)
    for j in range(n):
        axes[0, j].imshow(x[j, 0], cmap="gray")
        for i, name in enumerate(("grid12", "equal"), start=1):
            axes[i, j].imshow(maps[name][j], cmap="magma")
    for ax, label in zip(axes[:, 0], ("digit", "12 x 12 grid", "14 x 14 equal"), strict=True):
        ax.set_ylabel(label)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main()
