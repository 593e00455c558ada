"""Output specifications of the bound engine shared by the explanations and the metrics."""

from __future__ import annotations

import torch

__all__ = ["margin_spec"]


def margin_spec(target: torch.Tensor, n_out: int, contrast: torch.Tensor | None = None) -> torch.Tensor:
    """Specification rows ``e_c' - e_c``: ``(N, n_out - 1, n_out)`` for every ``c' != c``, or
    ``(N, 1, n_out)`` for one contrast class per sample (``target``, ``contrast``: ``(N,)``)."""
    n = target.shape[0]
    eye = torch.eye(n_out, device=target.device)
    if contrast is not None:
        return (eye[contrast] - eye[target]).unsqueeze(1)
    others = torch.arange(n_out, device=target.device).expand(n, n_out)
    others = others[others != target.unsqueeze(1)].view(n, n_out - 1)
    return eye[others] - eye[target].unsqueeze(1)
