"""INFD and SENS_MAX of the paper's explanations (Yeh et al. 2019, Table 1): time per image with
evax and with Captum's ``captum.metrics.infidelity`` / ``sensitivity_max`` on the same work.

Settings (DESIGN.md's reference settings, the paper's Sec. 5):

* local explanations, MNIST (Table 1a): Grad (signed gradient), IG (not multiplied by the
  input), GBP, each also smoothed (``-SG``: :class:`evax.attribution.Smoothed`, Gaussian kernel
  of radius 0.2, ``--smooth-samples`` points), and the optimal Noisy Baseline explanation.
  INFD with the noisy-baseline perturbation ``I = x - clip(x0 + eps, 0, 1)``, ``eps ~ N(0,
  0.2^2)``, ``x0 = 0`` (``--infd-samples`` draws); SENS_MAX with ``r = 0.2``;
* global explanations, MNIST and CIFAR-10 (Table 1b): Grad x input, IG, GBP x input,
  KernelSHAP (evax adapter, 12x12 grid), and the optimal Square explanation. INFD with every
  square of side 1..10 set to 0 (exhaustive); SENS_MAX with ``r = 0.1``.

Both metrics use the logit of the predicted class and normalise the explanation by the optimal
beta before scoring (INFD). The Captum side gets the same perturbation distributions through a
``perturb_func`` built on evax's samplers (seeded generators, fresh draws: the numbers agree
within Monte-Carlo error, the exhaustive square removal exactly), the same explainers and the
same number of samples; ``ratio = Captum time / evax time`` (> 1: evax is faster). evax scores
all the explanations of a table in ONE pass over the perturbed inputs (``evax 1-pass``); Captum
needs one pass per explanation.

    python benchmarks/infidelity.py                                # MNIST + CIFAR-10, 4 images
    python benchmarks/infidelity.py --datasets mnist --n-images 2  # quicker

Writes ``benchmarks/results/infidelity.json`` and ``.csv``. Timings are wall-clock on whatever
machine runs it (CPU unless ``--device cuda``); report the conditions next to the numbers.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from captum.attr import GuidedBackprop as CaptumGBP
from captum.attr import IntegratedGradients as CaptumIG
from captum.attr import Saliency as CaptumSaliency
from captum.metrics import infidelity as captum_infidelity
from captum.metrics import sensitivity_max as captum_sensitivity_max

from evax.attribution import KernelSHAP, OptimalNoisyBaseline, OptimalSquare, Smoothed
from evax.core.explainers import call_explainer
from evax.core.noise import NoiseDistribution
from evax.metrics import Infidelity, MaxSensitivity, SquareRemoval, UniformNoise
from evax.metrics import NoisyBaseline as NoisyBaselinePerturbation
from evax.zoo import load_dataset, load_model

RESULTS = Path(__file__).parent / "results"
Explainer = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


# ------------------------------------------------------------------------------ explainers


def _quiet(fn: Explainer) -> Explainer:
    def wrapped(inputs: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        with torch.enable_grad():
            return fn(inputs.detach().clone().requires_grad_(), target).detach()

    return wrapped


def local_explainers(model: torch.nn.Module, args: argparse.Namespace) -> dict[str, Any]:
    sal, ig, gbp = CaptumSaliency(model), CaptumIG(model, multiply_by_inputs=False), CaptumGBP(model)
    grad = _quiet(lambda x, t: sal.attribute(x, target=t, abs=False))
    igl = _quiet(lambda x, t: ig.attribute(x, target=t, baselines=0.0, n_steps=args.ig_steps))
    gbpl = _quiet(lambda x, t: gbp.attribute(x, target=t))

    def sg(fn: Explainer) -> Smoothed:
        return Smoothed(fn, kernel="gaussian", radius=0.2, n_samples=args.smooth_samples, model=model)

    return {
        "Grad": grad,
        "Grad-SG": sg(grad),
        "IG": igl,
        "IG-SG": sg(igl),
        "GBP": gbpl,
        "GBP-SG": sg(gbpl),
        "Noisy Baseline": OptimalNoisyBaseline(model, n_samples=args.nb_samples),
    }


def global_explainers(model: torch.nn.Module, args: argparse.Namespace) -> dict[str, Any]:
    sal, ig, gbp = CaptumSaliency(model), CaptumIG(model), CaptumGBP(model)
    return {
        "Grad": _quiet(lambda x, t: (x * sal.attribute(x, target=t, abs=False)).sum(1)),
        "IG": _quiet(lambda x, t: ig.attribute(x, target=t, baselines=0.0, n_steps=args.ig_steps).sum(1)),
        "GBP": _quiet(lambda x, t: (x * gbp.attribute(x, target=t)).sum(1)),
        "SHAP": KernelSHAP(model, n_samples=args.shap_samples),
        "Square": OptimalSquare(model),
    }


# ------------------------------------------------------------------------------ Captum side


def captum_perturb_func(pert: NoiseDistribution, n_inputs: int, seed: int, channels: int) -> Callable:
    """A Captum ``perturb_func`` drawing from ``pert`` (fresh, seeded draws; the enumeration of an
    exhaustive one). Captum hands it the inputs repeated ``c`` times each; a channel-shared mask
    is expanded over the ``channels`` (Captum needs I shaped like the input)."""
    gen = torch.Generator().manual_seed(seed)
    state = {"offset": 0}

    def perturb_func(expanded: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        c = expanded.shape[0] // n_inputs
        x = expanded.view(n_inputs, c, *expanded.shape[1:])[:, 0]
        if pert.exhaustive:
            i, y = pert.sample(x, c, offset=state["offset"])
            state["offset"] += c
        else:
            i, y = pert.sample(x, c, gen)
        i = i.expand(*i.shape[:2], channels, *i.shape[3:]) if i.ndim == 5 else i
        return i.reshape(-1, *expanded.shape[1:]), y.reshape(-1, *expanded.shape[1:])

    return perturb_func


def captum_attr(expl: torch.Tensor, x: torch.Tensor, indicator: bool) -> torch.Tensor:
    """An explanation in Captum's input shape: a channel-reduced map ``(N, H, W)`` scored
    against a channel-expanded mask is spread as ``Phi / C`` over the channels (same I^T Phi)."""
    if expl.ndim == x.ndim:
        return expl
    c = x.shape[1]
    spread = expl.unsqueeze(1).expand(-1, c, -1, -1)
    return spread / c if indicator else spread


# ------------------------------------------------------------------------------ timing


def _first(inputs: Any) -> torch.Tensor:
    """Captum hands ``explanation_func`` its inputs as a tuple of tensors (and wants a tuple back)."""
    return inputs[0] if isinstance(inputs, tuple) else inputs


def timed(fn: Callable[[], Any], repeats: int = 1) -> tuple[Any, float]:
    """``fn()`` and its median wall-clock time over ``repeats`` runs."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - start)
    return out, statistics.median(times)


def run_table(
    name: str,
    model: torch.nn.Module,
    x: torch.Tensor,
    explainers: dict[str, Any],
    pert: NoiseDistribution,
    radius: float,
    args: argparse.Namespace,
    skip_sens: set[str],
) -> list[dict[str, Any]]:
    n_img = x.shape[0]
    targets = model(x).argmax(1)
    n_infd = None if pert.exhaustive else args.infd_samples
    rows: list[dict[str, Any]] = []
    expls: dict[str, torch.Tensor] = {}
    for method, ex in explainers.items():
        expls[method], t = timed(lambda ex=ex: call_explainer(ex, x, targets))
        rows.append({"table": name, "method": method, "explain_s_per_image": t / n_img})
        print(f"  explained {method:15} {t / n_img:8.3f} s/image", flush=True)
    infd = Infidelity(model, x, targets, pert, n_samples=n_infd, seed=0)
    _, t_one_pass = timed(lambda: infd(expls), args.repeats)
    for row in rows:
        method = row["method"]
        e = expls[method]
        scores, t_ev = timed(lambda e=e: infd(e), args.repeats)
        n_cap = pert.size(x) if pert.exhaustive else args.infd_samples
        theirs, t_cap = timed(
            lambda e=e, n_cap=n_cap: captum_infidelity(
                model,
                captum_perturb_func(pert, n_img, 1, x.shape[1]),
                x,
                captum_attr(e, x, pert.indicator),
                target=targets,
                n_perturb_samples=n_cap,
                max_examples_per_batch=min(max(n_img, 1024), n_img * n_cap),
                normalize=True,
            ),
            args.repeats,
        )
        row.update(
            infd=float(scores.mean()),
            infd_captum=float(theirs.mean()),
            infd_s_per_image=t_ev / n_img,
            infd_captum_s_per_image=t_cap / n_img,
            infd_ratio=t_cap / t_ev,
            infd_one_pass_s_per_image=t_one_pass / n_img,
        )
        if method in skip_sens:
            row.update(
                sens=None,
                sens_captum=None,
                sens_s_per_image=None,
                sens_captum_s_per_image=None,
                sens_ratio=None,
            )
            print(
                f"  INFD {method:15} {row['infd']:9.4f} (Captum {row['infd_captum']:9.4f})  SENS_MAX skipped",
                flush=True,
            )
            continue
        ex = explainers[method]
        sens = MaxSensitivity(model, x, targets, radius=radius, n_samples=args.sens_samples, batch_size=256, seed=0)
        s_ev, t_sev = timed(lambda sens=sens, ex=ex, e=e: sens(ex, explanations=e))
        sampler = UniformNoise(radius)
        gen = torch.Generator().manual_seed(1)

        def perturb(expanded: torch.Tensor, r: float, sampler=sampler, gen=gen) -> torch.Tensor:
            return sampler.sample(expanded, 1, gen)[1][:, 0]

        s_cap, t_scap = timed(
            lambda ex=ex, perturb=perturb: captum_sensitivity_max(
                lambda inputs, target, ex=ex: (call_explainer(ex, _first(inputs), target),),
                x,
                perturb,
                radius,
                n_perturb_samples=args.sens_samples,
                max_examples_per_batch=min(max(n_img, 256), n_img * args.sens_samples),
                target=targets,
            )
        )
        row.update(
            sens=float(s_ev.mean()),
            sens_captum=float(s_cap.mean()),
            sens_s_per_image=t_sev / n_img,
            sens_captum_s_per_image=t_scap / n_img,
            sens_ratio=t_scap / t_sev,
        )
        print(
            f"  {method:15} INFD {row['infd']:9.4f} (Captum {row['infd_captum']:9.4f})  "
            f"SENS {row['sens']:7.4f} (Captum {row['sens_captum']:7.4f})",
            flush=True,
        )
    return rows


def _fmt(v: Any, spec: str) -> str:
    return "-" if v is None else format(v, spec)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--datasets", nargs="+", default=["mnist", "cifar10"], choices=["mnist", "cifar10"])
    parser.add_argument("--n-images", type=int, default=4)
    parser.add_argument("--infd-samples", type=int, default=1000)
    parser.add_argument("--sens-samples", type=int, default=50)
    parser.add_argument("--smooth-samples", type=int, default=50)
    parser.add_argument(
        "--nb-samples", type=int, default=4000, help="draws of the Noisy Baseline explanation"
    )
    parser.add_argument("--shap-samples", type=int, default=2000)
    parser.add_argument("--ig-steps", type=int, default=50)
    parser.add_argument("--repeats", type=int, default=3, help="INFD timings: median of this many runs")
    parser.add_argument(
        "--cifar-sens",
        choices=["cheap", "all"],
        default="cheap",
        help="'cheap': no SENS_MAX for SHAP and Square on CIFAR-10 (an explanation per ball point)",
    )
    parser.add_argument("--out", type=Path, default=RESULTS / "infidelity.json")
    args = parser.parse_args()
    torch.set_grad_enabled(False)

    rows: list[dict[str, Any]] = []
    for ds in args.datasets:
        model_name, data_name = (
            ("mnist-mlp", "mnist-samples") if ds == "mnist" else ("cifar10-cnn", "cifar10-samples")
        )
        model = load_model(model_name).eval()
        x = load_dataset(data_name).images[: args.n_images].float()
        if ds == "mnist":
            print(f"{ds}: local explanations (Table 1a)", flush=True)
            pert = NoisyBaselinePerturbation(0.2, baseline=0.0, clip=(0.0, 1.0))
            rows += [
                {"dataset": ds, **r}
                for r in run_table("local", model, x, local_explainers(model, args), pert, 0.2, args, set())
            ]
        print(f"{ds}: global explanations (Table 1b)", flush=True)
        skip = {"SHAP", "Square"} if ds == "cifar10" and args.cifar_sens == "cheap" else set()
        pert = SquareRemoval(range(1, 11), baseline=0.0, exhaustive=True)
        rows += [
            {"dataset": ds, **r}
            for r in run_table("global", model, x, global_explainers(model, args), pert, 0.1, args, skip)
        ]

    header = (
        f"{'data':8} {'table':6} {'method':15} {'INFD':>9} {'Captum':>9} {'SENS':>7} {'Captum':>7} "
        f"{'expl s/img':>10} {'INFD s/img':>10} {'1-pass':>8} {'Captum':>8} {'ratio':>6} "
        f"{'SENS s/img':>10} {'Captum':>8} {'ratio':>6}"
    )
    print()
    print(header)
    print("-" * len(header))
    for r in rows:
        print(
            f"{r['dataset']:8} {r['table']:6} {r['method']:15} {r['infd']:9.4f} {r['infd_captum']:9.4f} "
            f"{_fmt(r['sens'], '7.4f'):>7} {_fmt(r['sens_captum'], '7.4f'):>7} {r['explain_s_per_image']:10.3f} "
            f"{r['infd_s_per_image']:10.3f} {r['infd_one_pass_s_per_image']:8.3f} {r['infd_captum_s_per_image']:8.3f} "
            f"{r['infd_ratio']:6.2f} {_fmt(r['sens_s_per_image'], '10.3f'):>10} "
            f"{_fmt(r['sens_captum_s_per_image'], '8.3f'):>8} {_fmt(r['sens_ratio'], '6.2f'):>6}"
        )
    print("\nINFD of a whole table (every method of it): evax scores all in one pass, Captum one per method")
    totals = []
    for key in sorted({(r["dataset"], r["table"]) for r in rows}):
        sel = [r for r in rows if (r["dataset"], r["table"]) == key]
        one, cap = sel[0]["infd_one_pass_s_per_image"], sum(r["infd_captum_s_per_image"] for r in sel)
        sep = sum(r["infd_s_per_image"] for r in sel)
        totals.append(
            {
                "dataset": key[0],
                "table": key[1],
                "methods": len(sel),
                "evax_one_pass_s_per_image": one,
                "evax_separate_s_per_image": sep,
                "captum_s_per_image": cap,
                "ratio_one_pass": cap / one,
                "ratio_separate": cap / sep,
            }
        )
        print(
            f"{key[0]:8} {key[1]:6} {len(sel)} methods: evax 1-pass {one:.3f} s/img, evax separate {sep:.3f}, "
            f"Captum {cap:.3f} -> ratio {cap / one:.2f} (1-pass), {cap / sep:.2f} (separate)"
        )
    meta = {
        "machine": platform.platform(),
        "processor": platform.processor(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "args": {k: str(v) for k, v in vars(args).items()},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"meta": meta, "results": rows, "table_totals": totals}, indent=2))
    with args.out.with_suffix(".csv").open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0].keys()))
        writer.writeheader()
        writer.writerows(rows)
    print(f"wrote {args.out} and {args.out.with_suffix('.csv')}")


if __name__ == "__main__":
    main()
