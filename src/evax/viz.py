"""Figures: inputs, heatmap overlays and per-group scores (matplotlib, Agg backend)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch


def image_array(x: torch.Tensor):
    """``(C, H, W)`` in [0, 1] -> array for imshow (grey for one channel)."""
    x = x.detach().cpu().clamp(0, 1)
    return x[0].numpy() if x.shape[0] == 1 else x.permute(1, 2, 0).numpy()


def explanation_figure(
    images: torch.Tensor,
    maps: torch.Tensor,
    titles: Sequence[str] | None = None,
    cell_scores: torch.Tensor | None = None,
    n_side: int | tuple[int, int] | None = None,
    signed: bool = False,
    path: str | Path | None = None,
):
    """One row per image: the input, the heatmap overlaid on it, and (for a grid) the
    ``n_side x n_side`` (or ``(rows, cols)``) cell scores with their values.

    Args:
        images: ``(N, C, H, W)`` in ``[0, 1]``.
        maps: ``(N, H, W)`` attribution maps.
        titles: one caption per image.
        cell_scores: ``(N, G)`` group scores; drawn as a grid when ``G == rows * cols``.
        signed: diverging colours centred on 0 (targeted explanations).
        path: where to save the PNG (the figure is returned either way).
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    n = images.shape[0]
    rows, cols_ = (n_side, n_side) if isinstance(n_side, int) else (n_side or (0, 0))
    show_cells = cell_scores is not None and n_side is not None and cell_scores.shape[1] == rows * cols_
    cols = 3 if show_cells else 2
    fig, axes = plt.subplots(n, cols, figsize=(3.2 * cols, 3.0 * n), squeeze=False)
    cmap = "coolwarm" if signed else "inferno"
    for i in range(n):
        m = maps[i].detach().cpu()
        lim = float(m.abs().max()) or 1.0
        vmin, vmax = (-lim, lim) if signed else (0.0, lim)
        axes[i, 0].imshow(image_array(images[i]), cmap="gray", vmin=0, vmax=1)
        axes[i, 0].set_title(titles[i] if titles else f"input {i}", fontsize=9)
        axes[i, 1].imshow(image_array(images[i]), cmap="gray", vmin=0, vmax=1)
        im = axes[i, 1].imshow(m.numpy(), cmap=cmap, alpha=0.6, vmin=vmin, vmax=vmax)
        axes[i, 1].set_title("EVA heatmap", fontsize=9)
        fig.colorbar(im, ax=axes[i, 1], fraction=0.046, pad=0.04)
        if show_cells:
            cells = cell_scores[i].detach().cpu().view(rows, cols_).numpy()
            axes[i, 2].imshow(cells, cmap=cmap, vmin=vmin, vmax=vmax)
            axes[i, 2].set_title(f"{rows}x{cols_} cell scores", fontsize=9)
            if max(rows, cols_) <= 12:
                for (r, c), v in __import__("numpy").ndenumerate(cells):
                    axes[i, 2].text(c, r, f"{v:.2g}", ha="center", va="center", fontsize=4, color="w")
    return _finish(fig, axes, path)


def sufficient_figure(
    images: torch.Tensor,
    explanation,
    eva_maps: torch.Tensor | None = None,
    titles: Sequence[str] | None = None,
    path: str | Path | None = None,
):
    """One row per image: the input, its kept set (freed pixels dimmed, kept cells outlined)
    with the certificate in the caption, and optionally the EVA map next to it.

    Args:
        images: ``(N, C, H, W)`` in ``[0, 1]``.
        explanation: a :class:`evax.SufficientExplanation` of ``images``.
        eva_maps: optional ``(N, H, W)`` EVA heatmaps drawn in a third column.
        titles: one caption per image (default: ``input i (class c)``).
        path: where to save the PNG (the figure is returned either way).
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    import numpy as np

    n = images.shape[0]
    cols = 3 if eva_maps is not None else 2
    fig, axes = plt.subplots(n, cols, figsize=(3.2 * cols, 3.0 * n), squeeze=False)
    g = explanation.n_cells
    for i in range(n):
        img = image_array(images[i])
        kept = explanation.mask[i].detach().cpu().numpy().astype(float)
        cls = int(explanation.target[i])
        axes[i, 0].imshow(img, cmap="gray", vmin=0, vmax=1)
        axes[i, 0].set_title(titles[i] if titles else f"input {i} (class {cls})", fontsize=9)
        shown = img * (0.25 + 0.75 * (kept if img.ndim == 2 else kept[..., None]))
        axes[i, 1].imshow(shown, cmap="gray", vmin=0, vmax=1)
        axes[i, 1].imshow(np.ma.masked_where(kept == 0, kept), cmap="autumn", alpha=0.35, vmin=0, vmax=1)
        if kept.any() and not kept.all():
            axes[i, 1].contour(kept, levels=[0.5], colors="red", linewidths=0.8)
        ok = bool(explanation.certified[i])
        verdict = "certified" if ok else "NOT certified"
        n_w = int(explanation.witnessed[i].sum())
        axes[i, 1].set_title(
            f"kept {int(explanation.size[i])}/{g} cells, {verdict}\n"
            f"AO bound {float(explanation.ao[i]):.3g}, {n_w} with counterfactual",
            fontsize=8,
        )
        if eva_maps is not None:
            m = eva_maps[i].detach().cpu()
            axes[i, 2].imshow(img, cmap="gray", vmin=0, vmax=1)
            im = axes[i, 2].imshow(m.numpy(), cmap="inferno", alpha=0.6, vmin=0, vmax=float(m.abs().max()) or 1.0)
            axes[i, 2].set_title("EVA heatmap", fontsize=9)
            fig.colorbar(im, ax=axes[i, 2], fraction=0.046, pad=0.04)
    return _finish(fig, axes, path)


def _finish(fig, axes, path: str | Path | None):
    """Axes without ticks, a tight layout, saved to ``path`` (and closed) when given."""
    import matplotlib.pyplot as plt

    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.tight_layout()
    if path is not None:
        fig.savefig(path, dpi=120)
        plt.close(fig)
    return fig
