"""RISE (Petsiuk et al. 2018; EVA paper App. E): randomized input sampling.

``n_masks`` random masks ``m_i`` are drawn: an ``s x s`` grid of Bernoulli(``p``) cells,
bilinearly upsampled to ``(s + 1) * ceil(H / s)`` and cropped at a random shift (Petsiuk's
construction, so mask edges do not align with a fixed grid). The importance is

    g(x) = 1 / (E[M] * n_masks) * sum_i f(x * m_i + x0 * (1 - m_i)) m_i,     E[M] = p

with ``f`` the softmax probability of the explained class (``activation=None``: the logit) and
``x0 = 0`` by default. The paper: ``n_masks = 6000``, ``s = 7``, ``p = 0.5``.

Masks come from a ``torch.Generator`` seeded by ``seed`` at every call, in fixed blocks of
``_BLOCK`` masks, so the map depends neither on the batch size nor on the other images of the
batch (the same masks serve every image).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from evax.attribution.base import Attribution, TargetLike, check_inputs, resolve_target
from evax.core.modes import eval_mode
from evax.core.progress import progress_bar
from evax.core.scores import score_function
from evax.errors import InvalidInputError, NotApplicableError

_BLOCK = 250


def rise_masks(
    n: int, size: tuple[int, int], grid: int, p: float, generator: torch.Generator
) -> torch.Tensor:
    """``n`` RISE masks ``(n, H, W)`` in ``[0, 1]`` (see the module docstring)."""
    h, w = size
    ch, cw = math.ceil(h / grid), math.ceil(w / grid)
    cells = (torch.rand(n, 1, grid, grid, generator=generator) < p).float()
    up = F.interpolate(cells, size=((grid + 1) * ch, (grid + 1) * cw), mode="bilinear", align_corners=False)[
        :, 0
    ]
    dy = torch.randint(0, ch, (n,), generator=generator)
    dx = torch.randint(0, cw, (n,), generator=generator)
    rows = (dy.view(-1, 1) + torch.arange(h)).unsqueeze(2).expand(n, h, up.shape[2])
    up = up.gather(1, rows)
    cols = (dx.view(-1, 1) + torch.arange(w)).unsqueeze(1).expand(n, h, w)
    return up.gather(2, cols)


class RISE(Attribution):
    """RISE saliency ``(N, H, W)``; see the module docstring.

    Args:
        model: any image classifier (black box).
        n_masks: number of masks (paper: 6000).
        grid: side ``s`` of the mask grid (paper: 7).
        p: probability that a cell is kept (paper: 0.5).
        activation: ``"softmax"`` (default), ``None`` (logit), ``"sigmoid"``, or a callable.
        baseline: value of masked pixels (default 0).
        batch_size: masked images per forward pass.
        seed: seed of the masks' generator.
        progress: tqdm bar (``None``: when stderr is a TTY).
    """

    name = "rise"

    def __init__(
        self,
        model: nn.Module,
        n_masks: int = 6000,
        grid: int = 7,
        p: float = 0.5,
        activation: str | None = "softmax",
        baseline: float = 0.0,
        batch_size: int = 256,
        seed: int = 0,
        progress: bool | None = None,
    ) -> None:
        super().__init__(model)
        if isinstance(n_masks, bool) or not isinstance(n_masks, int) or n_masks < 1:
            raise InvalidInputError(f"n_masks must be a positive int, got {n_masks!r}")
        if isinstance(grid, bool) or not isinstance(grid, int) or grid < 1:
            raise InvalidInputError(f"grid must be a positive int, got {grid!r}")
        if not 0.0 < float(p) < 1.0:
            raise InvalidInputError(f"p must be in (0, 1), got {p!r}")
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise InvalidInputError(f"batch_size must be a positive int, got {batch_size!r}")
        self.n_masks, self.grid, self.p = n_masks, grid, float(p)
        self.score = score_function(activation)
        self.baseline, self.batch_size, self.seed, self.progress = float(baseline), batch_size, seed, progress

    @torch.no_grad()
    def attribute(self, inputs: torch.Tensor, target: TargetLike = None) -> torch.Tensor:
        """The saliency map ``(N, H, W)``."""
        check_inputs(inputs)
        if inputs.ndim != 4:
            raise NotApplicableError(f"RISE needs image inputs (N, C, H, W), got {tuple(inputs.shape)}")
        n, _, h, w = inputs.shape
        x = inputs.detach()
        gen = torch.Generator().manual_seed(self.seed)
        sal = torch.zeros(n, h * w, dtype=torch.float64, device=x.device)
        per_batch = max(1, self.batch_size // n)
        with eval_mode(self.model):
            tgt = resolve_target(self.model, x, target)
            blocks = range(0, self.n_masks, _BLOCK)
            for start in progress_bar(blocks, self.progress, desc="RISE", leave=False):
                masks = rise_masks(min(_BLOCK, self.n_masks - start), (h, w), self.grid, self.p, gen)
                masks = masks.to(x.device, x.dtype)
                for m in masks.split(per_batch):
                    b = m.shape[0]
                    mm = m.unsqueeze(1)  # (b, 1, H, W)
                    batch = (x.unsqueeze(1) * mm + self.baseline * (1 - mm)).reshape(n * b, *x.shape[1:])
                    s = self.score(self.model(batch), tgt.repeat_interleave(b)).view(n, b)
                    sal += s.double() @ m.reshape(b, h * w).double()
        return (sal / (self.n_masks * self.p)).to(x.dtype).view(n, h, w)

    def attribute_raw(self, inputs: torch.Tensor, target: TargetLike = None) -> torch.Tensor:
        """The map repeated over channels ``(N, C, H, W)``."""
        return self.attribute(inputs, target).unsqueeze(1).expand(-1, inputs.shape[1], -1, -1)
