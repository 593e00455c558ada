"""Faithfulness metrics of explanations and explainers.

The noise distributions of the infidelity measure (``GaussianNoise``, ``NoisyBaseline``,
``SquareRemoval``...) are defined in :mod:`evax.core.noise` and exported here.
"""

from evax.core.noise import DifferenceToBaseline as DifferenceToBaseline
from evax.core.noise import GaussianNoise as GaussianNoise
from evax.core.noise import NoiseDistribution as NoiseDistribution
from evax.core.noise import NoisyBaseline as NoisyBaseline
from evax.core.noise import ShapleyKernel as ShapleyKernel
from evax.core.noise import SquareRemoval as SquareRemoval
from evax.core.noise import SubsetRemoval as SubsetRemoval
from evax.core.noise import UniformNoise as UniformNoise
from evax.metrics.fidelity import Deletion as Deletion
from evax.metrics.fidelity import Insertion as Insertion
from evax.metrics.fidelity import MuFidelity as MuFidelity
from evax.metrics.infidelity import Infidelity as Infidelity
from evax.metrics.infidelity import MaxSensitivity as MaxSensitivity
from evax.metrics.robustness import RobustnessSr as RobustnessSr
from evax.metrics.sanity import RandomizationSanity as RandomizationSanity
from evax.metrics.tightness import Tightness as Tightness
