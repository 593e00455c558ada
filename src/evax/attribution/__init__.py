"""Attribution methods: EVA and the baselines it is compared with (EVA paper, App. E).

``METHODS`` maps a method's name to its class; every class is built as
``Method(model, **hyper)`` and called as ``.attribute(inputs, target=None) -> (N, H, W)``.
Methods that do not apply to a model (Grad-CAM on a dense net) raise
:class:`evax.errors.NotApplicableError` at construction or at attribute time.
"""

from evax.attribution.captum_methods import (
    GradCAM,
    GradientInput,
    GuidedBackprop,
    IntegratedGradients,
    KernelSHAP,
    Occlusion,
    Saliency,
    SmoothGrad,
    VarGrad,
)
from evax.attribution.eva import EVA
from evax.attribution.gradcampp import GradCAMPlusPlus
from evax.attribution.greedy import GreedyAO, GreedyAS
from evax.attribution.optimal import OptimalExplanation as OptimalExplanation
from evax.attribution.optimal import OptimalNoisyBaseline as OptimalNoisyBaseline
from evax.attribution.optimal import OptimalSquare as OptimalSquare
from evax.attribution.rise import RISE
from evax.attribution.smoothing import Smoothed as Smoothed

# The old names of the infidelity-optimal presets (aliases; prefer the Optimal* names, which
# cannot be mistaken for the noise distributions evax.metrics.NoisyBaseline / SquareRemoval).
NoisyBaseline = OptimalNoisyBaseline
Square = OptimalSquare

METHODS: dict[str, type] = {
    "Saliency": Saliency,
    "GradientInput": GradientInput,
    "IntegratedGradients": IntegratedGradients,
    "SmoothGrad": SmoothGrad,
    "VarGrad": VarGrad,
    "Occlusion": Occlusion,
    "GradCAM": GradCAM,
    "GradCAMPlusPlus": GradCAMPlusPlus,
    "GuidedBackprop": GuidedBackprop,
    "KernelSHAP": KernelSHAP,
    "RISE": RISE,
    "GreedyAS": GreedyAS,
    "GreedyAO": GreedyAO,
    "EVA": EVA,
}
