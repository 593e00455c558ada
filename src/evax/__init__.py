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

# Sub-packages loaded on first use (``evax.zoo.load_model(...)`` after a plain ``import evax``)
# so ``import evax`` stays as fast as the engine alone.
_LAZY_MODULES = ("attribution", "bench", "metrics", "viz", "zoo")
_LAZY_FUNCTIONS = {"load_model": "evax.zoo.loaders", "load_images": "evax.zoo.images"}


def __getattr__(name: str):  # PEP 562
    import importlib

    if name in _LAZY_MODULES:
        return importlib.import_module(f"evax.{name}")
    if name in _LAZY_FUNCTIONS:
        return getattr(importlib.import_module(_LAZY_FUNCTIONS[name]), name)
    raise AttributeError(f"module 'evax' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY_MODULES) | set(_LAZY_FUNCTIONS))
