"""evax: explanations of image classifiers with guarantees, and faithfulness metrics."""

from evax import errors
from evax.bounds.api import Bounds, bound
from evax.perturbation import Ball

__all__ = ["Ball", "Bounds", "bound", "errors"]
__version__ = "0.1.0"
