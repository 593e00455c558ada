"""evax: explanations of image classifiers with guarantees, and faithfulness metrics.

>>> import evax
>>> bounds = evax.bound(model, evax.Ball(x, eps=0.5), method="ibp+forward+backward")
>>> explanation = evax.EVA(model, eps=0.5).explain(x)
>>> kept = evax.Sufficient(model, eps=0.1, domain=(0, 1)).explain(x)  # provably enough
"""

from evax import errors, groups
from evax.attribution.empirical import EmpiricalEVA, HybridEVA
from evax.attribution.eva import EVA, Explanation
from evax.attribution.sufficient import Sufficient, SufficientExplanation
from evax.bounds.api import Bounds, bound
from evax.perturbation import Ball, Box

__all__ = [
    "EVA",
    "Ball",
    "Bounds",
    "Box",
    "EmpiricalEVA",
    "Explanation",
    "Sufficient",
    "SufficientExplanation",
    "HybridEVA",
    "bound",
    "errors",
    "groups",
]
__version__ = "0.1.0"
