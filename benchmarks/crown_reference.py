"""evax's CROWN against a straightforward dense PyTorch CROWN, on the same machine.

Issue 2 states its MNIST target (CROWN bounds of one EVA explanation, 145 boxes, in <= 250 ms)
next to a reference measured on the same kind of 2-core machine ("a straightforward PyTorch
CROWN takes about 530 ms"). Absolute times move with the machine (GEMM peaks of 68-193 GFLOP/s
were measured on machines of that kind, depending on their load), so this script runs evax and a
plain implementation in the same process, alternating them run by run, and reports their ratio:
what evax's fused concretisation and stable-neuron skipping buy over the textbook version.

The reference (:func:`dense_crown`) is the textbook algorithm, written plainly: for every layer,
the lower and the upper bound of every neuron are back-substituted separately to the input with
dense ``(N, neurons, width)`` multipliers, the full ``(N, neurons, 784)`` input coefficients are
materialised, then concretised over the box. It uses the same relaxation as evax (CROWN:
chord above, adaptive slope 0/1 below), so the two must give the same bounds: the script checks
that too (an independent cross-check of the engine on this net).

    python benchmarks/crown_reference.py            # 9 alternating runs each

Writes ``benchmarks/results/crown_reference.json``.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch
from torch import nn

from bounds import RESULTS, eva_boxes, gemm_peak, mnist_net


def dense_crown(
    model: nn.Sequential, center: torch.Tensor, radius: torch.Tensor, with_ibp: bool = False, keep_stable: bool = False
):
    """CROWN bounds of an MLP ``Flatten, (Linear, ReLU)*, Linear`` over the boxes
    ``center +- radius`` ``(N, d)``: ``(lower, upper)`` of the logits, ``(N, K)`` each.

    ``with_ibp``: intersect every intermediate bound with interval arithmetic from the
    previous layer's bounds, as evax does (the IBP chain is nearly free; auto_LiRPA's
    ``compare_crown_with_ibp``). On the benchmark's MNIST case it changes nothing.
    ``keep_stable`` (with ``with_ibp``): a neuron that interval arithmetic already proves stable
    in a box keeps those bounds in that box (its relaxation is exact either way), as evax's
    ``backward`` does -- it skips CROWN's rows for such neurons.
    """
    linears = [m for m in model if isinstance(m, nn.Linear)]
    n = center.shape[0]
    lows: list[torch.Tensor] = []
    ups: list[torch.Tensor] = []

    def lower_bound(k: int, sign: float) -> torch.Tensor:
        """Lower bound of ``sign * z_k`` (pre-activation of layer ``k``), ``(N, m_k)``."""
        lam = (sign * linears[k].weight).expand(n, -1, -1)  # (N, m_k, d_k)
        const = (sign * linears[k].bias).expand(n, -1)
        for j in range(k - 1, -1, -1):
            lo, up = lows[j], ups[j]
            active, dead = lo >= 0, up <= 0
            unstable = ~(active | dead)
            chord = up / (up - lo).clamp_min(1e-12)
            a_u = torch.where(active, 1.0, torch.where(dead, 0.0, chord))
            b_u = torch.where(unstable, -chord * lo, 0.0)
            a_l = torch.where(active, 1.0, torch.where(dead, 0.0, (up >= -lo).float()))
            pos, neg = lam.clamp(min=0), lam.clamp(max=0)
            const = const + torch.einsum("nkd,nd->nk", neg, b_u)
            lam = pos * a_l.unsqueeze(1) + neg * a_u.unsqueeze(1)
            const = const + lam @ linears[j].bias
            lam = lam @ linears[j].weight
        coeffs = lam  # (N, m_k, d): the input coefficients, materialised
        return (
            torch.einsum("nkd,nd->nk", coeffs, center)
            - torch.einsum("nkd,nd->nk", coeffs.abs(), radius)
            + const
        )

    for k in range(len(linears)):
        lo, up = lower_bound(k, 1.0), -lower_bound(k, -1.0)
        if with_ibp and 0 < k < len(linears) - 1:
            h_lo, h_up = lows[-1].clamp_min(0), ups[-1].clamp_min(0)
            mid = (h_lo + h_up) / 2 @ linears[k].weight.T + linears[k].bias
            rad = (h_up - h_lo) / 2 @ linears[k].weight.abs().T
            stable = (mid - rad >= 0) | (mid + rad <= 0)
            lo, up = torch.maximum(lo, mid - rad), torch.minimum(up, mid + rad)
            if keep_stable:
                lo, up = torch.where(stable, mid - rad, lo), torch.where(stable, mid + rad, up)
        lows.append(lo)
        ups.append(up)
    return lows[-1], ups[-1]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=9)
    parser.add_argument("--out", type=Path, default=RESULTS / "crown_reference.json")
    args = parser.parse_args()
    import evax

    torch.set_grad_enabled(False)
    model = mnist_net()
    ball = eva_boxes((1, 28, 28))
    lo, hi = ball.interval()
    center, radius = ((hi + lo) / 2).flatten(1), ((hi - lo) / 2).flatten(1)

    ours = evax.bound(model, ball, "backward")
    ref_lo, ref_hi = dense_crown(model, center, radius)
    diff = max((ours.lower - ref_lo).abs().max().item(), (ours.upper - ref_hi).abs().max().item())
    scale = ours.width.abs().max().item()

    times: dict[str, list[float]] = {"evax": [], "reference": []}
    for _ in range(args.runs):
        t0 = time.perf_counter()
        evax.bound(model, ball, "backward")
        times["evax"].append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        dense_crown(model, center, radius)
        times["reference"].append(time.perf_counter() - t0)
    med = {k: statistics.median(v) for k, v in times.items()}
    ratios = [a / b for a, b in zip(times["evax"], times["reference"], strict=True)]
    peak = gemm_peak()
    result = {
        "meta": {
            "machine": platform.processor() or platform.machine(),
            "threads": torch.get_num_threads(),
            "torch": torch.__version__,
            "gemm_peak_flops": peak,
            "runs": args.runs,
        },
        "boxes": 145,
        "evax_median_s": med["evax"],
        "reference_median_s": med["reference"],
        "ratio_of_medians": med["evax"] / med["reference"],
        "median_paired_ratio": statistics.median(ratios),
        "max_abs_bound_difference": diff,
        "max_width": scale,
        "mean_width_evax": ours.width.mean().item(),
        "mean_width_reference": (ref_hi - ref_lo).mean().item(),
    }
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, matmul peak {peak / 1e9:.0f} GFLOP/s"
    )
    print(f"{'implementation':16} {'median':>9} {'min':>9} {'mean width':>11}")
    for k, w in (("evax", result["mean_width_evax"]), ("reference", result["mean_width_reference"])):
        print(f"{k:16} {med[k] * 1e3:7.1f}ms {min(times[k]) * 1e3:7.1f}ms {w:11.3f}")
    print(
        f"evax / reference: {result['median_paired_ratio']:.3f} (median of paired runs); "
        f"max |bound difference| {diff:.2e} (widths up to {scale:.1f})"
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
