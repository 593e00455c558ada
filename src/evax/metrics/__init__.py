"""Faithfulness metrics of explanations and explainers: one contract (see :mod:`evax.metrics.base`).

Every metric is built as ``Metric(model, inputs, targets=None, **hyper)`` and called once per
thing it scores:

* metrics of explanations (:class:`ExplanationMetric`): ``metric(explanations,
  detailed=False)`` -- :class:`Deletion`, :class:`Insertion`, :class:`MuFidelity`,
  :class:`RobustnessSr`, :class:`Infidelity`; ``explanations`` is a tensor or an explainer
  (called once on the inputs);
* metrics of explainers (:class:`ExplainerMetric`): ``metric(explainer, detailed=False)`` --
  :class:`MaxSensitivity`, :class:`RandomizationSanity`, :class:`Tightness` (an
  :class:`evax.EVA` or a bound method name).

Each returns per-sample scores ``(N,)``; ``detailed=True`` returns the family's frozen result
dataclass (a :class:`MetricResult`: ``scores``, ``mean`` and the details).

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
from evax.metrics.base import ExplainerMetric as ExplainerMetric
from evax.metrics.base import ExplanationMetric as ExplanationMetric
from evax.metrics.base import Metric as Metric
from evax.metrics.base import MetricResult as MetricResult
from evax.metrics.fidelity import CurveResult as CurveResult
from evax.metrics.fidelity import Deletion as Deletion
from evax.metrics.fidelity import Insertion as Insertion
from evax.metrics.fidelity import MuFidelity as MuFidelity
from evax.metrics.fidelity import MuFidelityResult as MuFidelityResult
from evax.metrics.infidelity import Infidelity as Infidelity
from evax.metrics.infidelity import InfidelityResult as InfidelityResult
from evax.metrics.infidelity import MaxSensitivity as MaxSensitivity
from evax.metrics.infidelity import SensitivityResult as SensitivityResult
from evax.metrics.robustness import RobustnessResult as RobustnessResult
from evax.metrics.robustness import RobustnessSr as RobustnessSr
from evax.metrics.sanity import RandomizationSanity as RandomizationSanity
from evax.metrics.sanity import SanityResult as SanityResult
from evax.metrics.tightness import Tightness as Tightness
from evax.metrics.tightness import TightnessResult as TightnessResult
