"""Grad-CAM++ (Chattopadhyay et al. 2018; EVA paper App. E).

With ``A^k`` the activations of a conv layer (``(N, K, h, w)``) and ``f`` the logit of the
explained class, Grad-CAM++ weights each feature map by

    w_k = sum_ij alpha^k_ij * relu(df/dA^k_ij),

    alpha^k_ij = (d^2 Y / (dA^k_ij)^2)
                 / (2 d^2 Y / (dA^k_ij)^2 + sum_ab A^k_ab d^3 Y / (dA^k_ij)^3)

and the map is ``relu(sum_k w_k A^k)``, bilinearly upsampled to the input size. As in the
original paper the class score is passed through an exponential, ``Y = exp(f)``; for a network
that is piecewise linear after the layer (ReLU, max-pool, linear), the higher derivatives are
then powers of the gradient ``g = df/dA``: ``d^2Y/dA^2 = Y g^2``, ``d^3Y/dA^3 = Y g^3``, so

    alpha^k_ij = g^2 / (2 g^2 + sum_ab A^k_ab g^3)    (0 where the denominator is 0)

(the common factor ``Y`` only scales the map). The App. E formula shows ``alpha`` alone; the
``relu(df/dA)`` factor of the weights is the original method's.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from evax.attribution.base import Attribution, TargetLike, check_inputs, resolve_target
from evax.attribution.captum_methods import _need_images, cam_layer, warn_if_flat
from evax.core.modes import eval_mode
from evax.errors import NotApplicableError


class GradCAMPlusPlus(Attribution):
    """Grad-CAM++ map ``(N, H, W)`` (``>= 0``).

    Args:
        model: a CNN.
        layer: ``None`` (the last conv layer's activation, see
            :func:`evax.attribution.captum_methods.cam_layer`), a module name or a module.

    Raises :class:`NotApplicableError` for dense networks and flat inputs.
    """

    name = "gradcampp"

    def __init__(self, model: nn.Module, layer: nn.Module | str | None = None) -> None:
        super().__init__(model)
        self.layer = cam_layer(model, layer, "Grad-CAM++")

    def cam(self, inputs: torch.Tensor, target: TargetLike = None) -> torch.Tensor:
        """The map at the layer's resolution ``(N, h, w)``."""
        check_inputs(inputs)
        _need_images(inputs, "Grad-CAM++")
        captured: list[torch.Tensor] = []
        handle = self.layer.register_forward_hook(lambda _m, _i, out: captured.append(out))
        try:
            with eval_mode(self.model), torch.enable_grad():
                x = inputs.detach().clone()
                tgt = resolve_target(self.model, x, target)
                captured.clear()
                logits = self.model(x)
                acts = captured[-1]
                if acts.ndim != 4:
                    raise NotApplicableError(
                        f"Grad-CAM++ needs a layer with (N, K, h, w) outputs, got {tuple(acts.shape)}"
                    )
                warn_if_flat(tuple(acts.shape), "Grad-CAM++")
                score = logits.gather(1, tgt.view(-1, 1)).sum()
                (g,) = torch.autograd.grad(score, acts)
        finally:
            handle.remove()
        a = acts.detach()
        g2, g3 = g.pow(2), g.pow(3)
        denom = 2 * g2 + a.sum(dim=(2, 3), keepdim=True) * g3
        alpha = torch.where(
            denom != 0, g2 / torch.where(denom != 0, denom, torch.ones_like(denom)), torch.zeros_like(g)
        )
        weights = (alpha * F.relu(g)).sum(dim=(2, 3), keepdim=True)  # (N, K, 1, 1)
        return F.relu((weights * a).sum(dim=1))

    def attribute(self, inputs: torch.Tensor, target: TargetLike = None) -> torch.Tensor:
        """The map ``(N, H, W)``, bilinearly upsampled."""
        cam = self.cam(inputs, target).unsqueeze(1)
        return F.interpolate(cam, size=inputs.shape[2:], mode="bilinear", align_corners=False)[:, 0]

    def attribute_raw(self, inputs: torch.Tensor, target: TargetLike = None) -> torch.Tensor:
        """The map repeated over channels ``(N, C, H, W)``."""
        return self.attribute(inputs, target).unsqueeze(1).expand(-1, inputs.shape[1], -1, -1)
