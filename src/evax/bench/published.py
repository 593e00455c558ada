"""The papers' published numbers, transcribed from their tables for the side-by-side report.

Sources (the Markdown renderings under ``shared/papers``):

* ``EVA_TABLE1``: Fel et al., "Don't Lie to Me! Robust and Efficient Explainability with
  Verified Perturbation Analysis", **Table 1** (Deletion, Insertion, muFidelity,
  Robustness-S_r, time in seconds for 500 MNIST/CIFAR-10 and 100 ImageNet explanations on an
  Nvidia P100). ``None`` = "n/a" in the paper (Grad-CAM/Grad-CAM++ on the dense MNIST net).
* ``EVA_TABLE2``: same paper, **Table 2** (Tightness, Del., Ins., Fid., Rob. of EVA with each
  verified perturbation analysis method, MNIST).
* ``EVA_TABLE3``: same paper, **Table 3** (ablations: Greedy-AS, Greedy-AO, EVA_emp, EVA; time
  for 100 explanations). EVA's ImageNet cells are empty in Table 3 (``None``).
* ``INFD_TABLE1``: Yeh et al., "On the (In)fidelity and Sensitivity of Explanations",
  **Table 1** (a) local explanations on MNIST and (b) global explanations on MNIST, CIFAR-10
  and ImageNet: SENS_MAX and INFD. "--" in the paper is ``None``.
* ``INFD_TABLE2``: same paper, **Table 2** (randomization sanity check, ResNet-50 on ImageNet:
  rank correlation between the explanations of the original and the randomized model).

Keys: ``{setting: {method: {metric: value}}}`` with the harness's method and metric names.
"""

from __future__ import annotations

_T1_COLS = ("deletion", "insertion", "mufidelity", "robustness", "time")


def _rows(table: dict[str, tuple]) -> dict[str, dict[str, float | None]]:
    return {m: dict(zip(_T1_COLS, vals, strict=True)) for m, vals in table.items()}


NA = (None, None, None, None, None)

EVA_TABLE1: dict[str, dict[str, dict[str, float | None]]] = {
    "mnist": _rows(
        {
            "Saliency": (0.193, 0.633, 0.378, 0.071, 0.04),
            "GradInput": (0.222, 0.611, 0.107, 0.074, 0.04),
            "SmoothGrad": (0.185, 0.621, 0.331, 0.070, 1.91),
            "VarGrad": (0.207, 0.555, 0.216, 0.077, 1.76),
            "InteGrad": (0.209, 0.615, 0.108, 0.074, 1.77),
            "Occlusion": (0.247, 0.545, 0.137, 0.082, 0.04),
            "GradCAM": NA,
            "GradCAM++": NA,
            "RISE": (0.248, 0.558, 0.133, 0.093, 2.26),
            "Greedy-AS": (0.260, 0.497, 0.110, 0.061, 335),
            "EVA": (0.089, 0.736, 0.428, 0.069, 1.29),
        }
    ),
    "cifar10": _rows(
        {
            "Saliency": (0.171, 0.172, -0.021, 0.026, 0.16),
            "GradInput": (0.200, 0.143, -0.018, 0.095, 0.17),
            "SmoothGrad": (0.174, 0.181, 0.092, 0.048, 9.07),
            "VarGrad": (0.183, 0.211, -0.012, 0.193, 9.07),
            "InteGrad": (0.194, 0.171, -0.016, 0.154, 7.19),
            "Occlusion": (0.217, 0.290, 0.105, 0.232, 1.13),
            "GradCAM": (0.297, 0.282, 0.056, 0.195, 0.39),
            "GradCAM++": (0.270, 0.326, 0.102, 0.094, 0.39),
            "RISE": (0.196, 0.273, 0.157, 0.385, 20.5),
            "Greedy-AS": (0.205, 0.264, -0.003, 0.013, 4618),
            "EVA": (0.164, 0.290, 0.352, 0.025, 12.7),
        }
    ),
    "imagenet": _rows(
        {
            "Saliency": (0.057, 0.126, 0.035, 0.769, 0.36),
            "GradInput": (0.057, 0.050, 0.023, 0.814, 0.36),
            "SmoothGrad": (0.051, 0.069, 0.019, 0.809, 9.63),
            "VarGrad": (0.098, 0.201, 0.021, 0.787, 9.62),
            "InteGrad": (0.058, 0.052, 0.023, 0.813, 8.39),
            "Occlusion": (0.100, 0.266, 0.026, 0.821, 4.97),
            "GradCAM": (0.073, 0.232, 0.036, 0.817, 0.18),
            "GradCAM++": (0.074, 0.285, 0.054, 0.800, 0.19),
            "RISE": (0.074, 0.276, 0.154, 0.818, 1215),
            "Greedy-AS": (0.088, 0.047, 0.023, 0.612, 180056),
            "EVA": (0.070, 0.289, 0.048, 0.758, 6454),
        }
    ),
}
EVA_TABLE1_IMAGES = {"mnist": 500, "cifar10": 500, "imagenet": 100}

EVA_TABLE2: dict[str, dict[str, dict[str, float | None]]] = {
    "mnist": {
        m: dict(zip(("tightness", "deletion", "insertion", "mufidelity", "robustness"), v, strict=True))
        for m, v in {
            "ibp": (4.58, 0.148, 0.588, 0.222, 0.077),
            "forward": (2.66, 0.150, 0.580, 0.209, 0.078),
            "backward": (2.36, 0.115, 0.607, 0.274, 0.074),
            "ibp+forward+backward": (1.55, 0.089, 0.736, 0.428, 0.069),
        }.items()
    }
}

EVA_TABLE3: dict[str, dict[str, dict[str, float | None]]] = {
    "mnist": _rows(
        {
            "Greedy-AS": (0.260, 0.497, 0.110, 0.061, 335),
            "Greedy-AO": (0.237, 0.572, 0.244, 0.063, 290),
            "EVA_emp": (0.101, 0.621, 0.378, 0.067, 14.4),
            "EVA": (0.089, 0.736, 0.428, 0.069, 1.29),
        }
    ),
    "cifar10": _rows(
        {
            "Greedy-AS": (0.205, 0.264, -0.003, 0.013, 4618),
            "Greedy-AO": (0.162, 0.283, 0.041, 0.024, 2874),
            "EVA_emp": (0.184, 0.270, 0.397, 0.022, 186.6),
            "EVA": (0.164, 0.290, 0.352, 0.025, 12.7),
        }
    ),
    "imagenet": _rows(
        {
            "Greedy-AS": (0.088, 0.047, 0.023, 0.612, 180056),
            "Greedy-AO": (0.086, 0.050, 0.023, 0.752, 26762),
            "EVA_emp": (0.070, 0.289, 0.048, 0.758, 6454),
            "EVA": NA,
        }
    ),
}


def _infd(rows: dict[str, tuple]) -> dict[str, dict[str, float | None]]:
    return {m: {"sens_max": s, "infd": i} for m, (s, i) in rows.items()}


INFD_TABLE1: dict[str, dict[str, dict[str, float | None]]] = {
    "mnist-local": _infd(
        {
            "Grad": (0.86, 4.12),
            "Grad-SG": (0.23, 1.84),
            "IG": (0.77, 2.75),
            "IG-SG": (0.22, 1.52),
            "GBP": (0.85, 4.13),
            "GBP-SG": (0.23, 1.84),
            "Noisy Baseline": (0.35, 0.51),
        }
    ),
    "mnist-global": _infd(
        {
            "Grad": (0.56, 2.38),
            "Grad-SG": (0.28, 1.89),
            "IG": (0.47, 1.88),
            "IG-SG": (0.26, 1.72),
            "GBP": (0.58, 2.38),
            "GBP-SG": (0.29, 1.88),
            "SHAP": (0.35, 1.20),
            "Square": (0.24, 0.46),
        }
    ),
    "cifar10-global": _infd(
        {
            "Grad": (1.15, 15.99),
            "Grad-SG": (1.15, 13.94),
            "IG": (1.08, 16.03),
            "IG-SG": (0.90, 15.90),
            "GBP": (1.18, 15.99),
            "GBP-SG": (1.15, 13.93),
            "SHAP": (0.93, 5.78),
            "Square": (0.99, 2.27),
        }
    ),
    "imagenet-global": _infd(
        {
            "Grad": (1.16, 0.25),
            "Grad-SG": (0.59, 0.24),
            "IG": (0.93, 0.24),
            "IG-SG": (0.48, 0.23),
            "GBP": (1.09, 0.15),
            "GBP-SG": (0.41, 0.15),
            "SHAP": (None, None),
            "Square": (1.33, 0.04),
        }
    ),
}

INFD_TABLE2: dict[str, dict[str, dict[str, float | None]]] = {
    "imagenet-resnet50": {
        m: {"spearman": c, "spearman_abs": a}
        for m, (c, a) in {
            "Grad": (0.17, 0.57),
            "Grad-SG": (0.10, 0.62),
            "IG": (0.18, 0.61),
            "IG-SG": (0.16, 0.62),
            "Square": (0.13, 0.28),
        }.items()
    }
}

PUBLISHED = {
    "eva-table1": EVA_TABLE1,
    "eva-table2": EVA_TABLE2,
    "eva-table3": EVA_TABLE3,
    "infidelity-table1": INFD_TABLE1,
    "infidelity-table2": INFD_TABLE2,
}
