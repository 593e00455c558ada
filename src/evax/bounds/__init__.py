"""The verified perturbation analysis engine (IBP, forward, backward/CROWN, exact MILP)."""

from evax.bounds.api import Bounds, bound
from evax.bounds.graph import SUPPORTED, build_graph

__all__ = ["SUPPORTED", "Bounds", "bound", "build_graph"]
