"""The shared layer beneath :mod:`evax.attribution` and :mod:`evax.metrics`.

Every module here imports only :mod:`evax.errors`, :mod:`evax.groups` and other core modules,
so the explanations, the metrics, the bench and the CLI can all use it without import cycles
(``tests/test_layering.py`` enforces the layers; see ``docs/ARCHITECTURE.md``).

===========================  ==================================================================
module                       owns
===========================  ==================================================================
:mod:`~evax.core.checks`     argument checks (tensors, class indices, numbers, domains)
:mod:`~evax.core.targets`    ``TargetLike`` and :func:`resolve_target` (``None`` = predicted)
:mod:`~evax.core.explainers` :func:`call_explainer` (evax, Captum, callables), :func:`find_model`
:mod:`~evax.core.variables`  :class:`Variables` (pixels / features / groups), channel reduction
:mod:`~evax.core.baselines`  :func:`make_baseline`: the one set of accepted baselines
:mod:`~evax.core.random`     seeded random streams: :func:`~evax.core.random.generator`
:mod:`~evax.core.noise`      the noise distributions ``mu_I`` (:class:`NoiseDistribution`)
:mod:`~evax.core.streaming`  the block-streaming Monte-Carlo loop, chunk-independent draws
:mod:`~evax.core.scores`     score functions (softmax / logit / sigmoid of the explained class)
:mod:`~evax.core.specs`      output specifications (:func:`margin_spec`)
:mod:`~evax.core.attacks`    masked L2 PGD and the minimal adversarial distance search
:mod:`~evax.core.modes`      :func:`eval_mode`; :mod:`~evax.core.progress`: tqdm bars
:mod:`~evax.core.cli_support` the CLIs' error handling and option checks
===========================  ==================================================================

Nothing here is re-exported from :mod:`evax`: the public names stay where users import them
(``evax.metrics.GaussianNoise``, ``evax.attribution.base.reduce_channels``...).
"""
