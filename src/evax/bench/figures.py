"""PNG figures of the harness (matplotlib, Agg backend).

* :func:`method_grid` -- the papers' qualitative figures (EVA Fig. 5, Yeh et al. Fig. 1-2):
  rows = images, columns = the input then every method's heatmap on that image.
* :func:`curves_figure` -- mean Deletion / Insertion curves per method (score of the explained
  class vs fraction of grid cells removed / inserted).
* :func:`targeted_figure` -- EVA Fig. 7: digits x 10 classes of targeted explanations.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch


def _plt():
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def _show_image(ax, x: torch.Tensor) -> None:
    x = x.detach().cpu().clamp(0, 1)
    if x.shape[0] == 1:
        ax.imshow(x[0].numpy(), cmap="gray", vmin=0, vmax=1)
    else:
        ax.imshow(x.permute(1, 2, 0).numpy())


def _clip(m: torch.Tensor, q: float = 0.98) -> torch.Tensor:
    """Clip a map at its ``q`` quantile of |values| (EVA Fig. 5 clips gradient maps at 2 %)."""
    lim = torch.quantile(m.abs().flatten().float(), q)
    return m.clamp(-lim, lim) if lim > 0 else m


def method_grid(
    images: torch.Tensor, maps: dict[str, list[torch.Tensor | None]], path: str | Path, titles: Sequence[str] = ()
) -> Path:
    """``images (N, C, H, W)``; ``maps[method][i]`` a ``(H, W)`` map or None (n/a / error)."""
    plt = _plt()
    methods = list(maps)
    n = images.shape[0]
    fig, axes = plt.subplots(n, 1 + len(methods), figsize=(1.6 * (1 + len(methods)), 1.7 * n), squeeze=False)
    for i in range(n):
        _show_image(axes[i, 0], images[i])
        axes[i, 0].set_title(titles[i] if i < len(titles) else "input", fontsize=7)
        for j, name in enumerate(methods, start=1):
            ax = axes[i, j]
            m = maps[name][i] if i < len(maps[name]) else None
            if m is None:
                ax.text(0.5, 0.5, "n/a", ha="center", va="center", fontsize=9)
            else:
                m = _clip(m.detach().cpu().float())
                signed = bool((m < 0).any())
                lim = float(m.abs().max()) or 1.0
                ax.imshow(m.numpy(), cmap="coolwarm" if signed else "inferno",
                          vmin=-lim if signed else 0.0, vmax=lim)
            if i == 0:
                ax.set_title(name, fontsize=7)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def curves_figure(curves: dict[str, dict[str, tuple[list[float], list[float]]]], path: str | Path, title: str = "") -> Path:
    """``curves[metric][method] = (fractions, mean curve)`` for ``metric`` in deletion/insertion."""
    plt = _plt()
    metrics = list(curves)
    fig, axes = plt.subplots(1, len(metrics), figsize=(5 * len(metrics), 3.6), squeeze=False)
    for ax, metric in zip(axes[0], metrics, strict=True):
        for method, (fr, cv) in curves[metric].items():
            ax.plot(fr, cv, label=method, lw=1.5 if method.startswith("EVA") else 1.0)
        ax.set_xlabel("fraction of grid cells " + ("removed" if metric == "deletion" else "inserted"))
        ax.set_ylabel("softmax score of the explained class")
        ax.set_title(f"{title} {metric}".strip(), fontsize=9)
        ax.grid(alpha=0.3)
    axes[0, -1].legend(fontsize=6, loc="best")
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def targeted_figure(images: torch.Tensor, maps: torch.Tensor, predicted: Sequence[int], path: str | Path) -> Path:
    """``images (N, 1, H, W)``, ``maps (N, 10, H, W)``: column 0 the digit, then one targeted map
    per class (diagonal = the predicted class's plain EVA map, in orange). Red: adding ink raises
    the overlap with that class; blue: removing ink does (EVA Fig. 7)."""
    plt = _plt()
    n, k = maps.shape[:2]
    fig, axes = plt.subplots(n, 1 + k, figsize=(1.3 * (1 + k), 1.4 * n), squeeze=False)
    for i in range(n):
        _show_image(axes[i, 0], images[i])
        axes[i, 0].set_title(f"pred {predicted[i]}", fontsize=7)
        for c in range(k):
            ax = axes[i, c + 1]
            m = maps[i, c].float()
            _show_image(ax, images[i])
            if c == predicted[i]:
                ax.imshow(m.numpy(), cmap="Oranges", alpha=0.6, vmin=0, vmax=float(m.max()) or 1.0)
            else:
                lim = float(m.abs().max()) or 1.0
                ax.imshow(m.numpy(), cmap="bwr", alpha=0.6, vmin=-lim, vmax=lim)
            if i == n - 1:
                ax.set_xlabel(f"class {c}", fontsize=7)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
