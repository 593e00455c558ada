"""The verified perturbation analysis engine (IBP, forward, backward/CROWN, exact MILP)."""

from evax.bounds.api import DEFAULT_METHOD, Bounds, bound
from evax.bounds.graph import build_graph
from evax.bounds.ops.registry import registered_ops, supported_layers

__all__ = ["DEFAULT_METHOD", "Bounds", "bound", "build_graph", "registered_ops", "supported_layers"]
