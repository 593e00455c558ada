"""Speed, memory and tightness of the bound engine on one EVA explanation (145 boxes).

The EVA paper's MNIST network (dense 784-256-128-64-32-10, ReLU) and CIFAR-10 network
(Conv 128, 80, 64 filters 3x3, MaxPool 2x2, Dense 64, 10) with seeded weights; a batch of 145
boxes (eps 0.5, p=inf, one box free and 144 with a different cell of a 12x12 grid fixed), i.e.
exactly the boxes of one EVA explanation. For each method: median time over ``--runs`` runs,
peak resident memory (each method runs in a fresh process), mean bound width, the GEMM FLOPs
the engine performed (torch's FlopCounterMode) and the time those FLOPs take at the machine's
measured matmul peak (the roofline), so ``efficiency = roofline time / measured time``.

    python benchmarks/bounds.py                  # everything (CIFAR CROWN is slow on a CPU)
    python benchmarks/bounds.py --net mnist      # one network
    python benchmarks/bounds.py --quick          # 1 run per method, MNIST only

Writes ``benchmarks/results/bounds.json``.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import platform
import resource
import statistics
import time
from pathlib import Path

import torch
from torch import nn

RESULTS = Path(__file__).parent / "results"


def mnist_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Flatten(),
        nn.Linear(784, 256),
        nn.ReLU(),
        nn.Linear(256, 128),
        nn.ReLU(),
        nn.Linear(128, 64),
        nn.ReLU(),
        nn.Linear(64, 32),
        nn.ReLU(),
        nn.Linear(32, 10),
    ).eval()


def cifar_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 128, 3),
        nn.ReLU(),
        nn.Conv2d(128, 80, 3),
        nn.ReLU(),
        nn.Conv2d(80, 64, 3),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(64 * 13 * 13, 64),
        nn.ReLU(),
        nn.Linear(64, 10),
    ).eval()


NETS = {"mnist": (mnist_net, (1, 28, 28)), "cifar": (cifar_net, (3, 32, 32))}


def eva_boxes(shape, n_side=12, eps=0.5, seed=0):
    """1 + n_side**2 boxes around one seeded image: all free, then each grid cell fixed."""
    import evax

    gen = torch.Generator().manual_seed(seed)
    x = torch.rand((1, *shape), generator=gen)
    _, h, w = shape
    rows = [round(i * h / n_side) for i in range(n_side + 1)]
    cols = [round(j * w / n_side) for j in range(n_side + 1)]
    cell = torch.zeros(h, w, dtype=torch.long)
    for i in range(n_side):
        for j in range(n_side):
            cell[rows[i] : rows[i + 1], cols[j] : cols[j + 1]] = i * n_side + j
    fixed = torch.zeros((1 + n_side**2, *shape), dtype=torch.bool)
    fixed[1:] = (cell.unsqueeze(0) == torch.arange(n_side**2).view(-1, 1, 1)).unsqueeze(1)
    return evax.Ball(x.expand(1 + n_side**2, *shape), eps, fixed=fixed)


def gemm_peak(seconds: float = 1.0) -> float:
    """Measured float32 matmul throughput (FLOP/s): best of square GEMMs of a few sizes."""
    best = 0.0
    for n in (1024, 2048):
        a, b = torch.randn(n, n), torch.randn(n, n)
        a @ b
        reps, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < seconds / 2:
            a @ b
            reps += 1
        best = max(best, 2 * n**3 * reps / (time.perf_counter() - t0))
    return best


def _measure(net_name: str, method: str, runs: int, batch_size, queue) -> None:
    from torch.utils.flop_counter import FlopCounterMode

    import evax

    build, shape = NETS[net_name]
    model = build()
    ball = eva_boxes(shape)
    times = []
    if runs == 1:  # slow cases (CIFAR): one timed run (no warm-up), FLOPs counted in another
        t0 = time.perf_counter()
        b = evax.bound(model, ball, method, batch_size=batch_size)
        times.append(time.perf_counter() - t0)
        # Not in the timed run: the counter's dispatch overhead inflated CIFAR CROWN's time 1.6x.
        with FlopCounterMode(display=False) as counter:
            evax.bound(model, ball, method, batch_size=batch_size)
    else:
        # Warm-up (tracing, allocator, thread pool): at least 3 calls and half a second, so that
        # millisecond methods are timed in the steady state a loop over images sees.
        t0, calls = time.perf_counter(), 0
        while calls < 3 or time.perf_counter() - t0 < 0.5:
            b = evax.bound(model, ball, method, batch_size=batch_size)
            calls += 1
        for _ in range(runs):
            t0 = time.perf_counter()
            b = evax.bound(model, ball, method, batch_size=batch_size)
            times.append(time.perf_counter() - t0)
        with FlopCounterMode(display=False) as counter:
            evax.bound(model, ball, method, batch_size=batch_size)
    queue.put(
        {
            "median_s": statistics.median(times),
            "min_s": min(times),
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "mean_width": b.width.mean().item(),
            "gemm_flop": counter.get_total_flops(),
        }
    )


def measure(net_name, method, runs, batch_size=None):
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_measure, args=(net_name, method, runs, batch_size, queue))
    proc.start()
    proc.join()
    if proc.exitcode != 0:
        return {"error": f"exit code {proc.exitcode}"}
    return queue.get()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--net", choices=[*NETS, "all"], default="all")
    parser.add_argument(
        "--methods", default="ibp,crown-ibp,forward,backward,alpha-crown,ibp+forward,ibp+forward+backward"
    )
    parser.add_argument("--cifar-methods", default="ibp,crown-ibp,ibp+forward,backward")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--cifar-runs", type=int, default=1, help="runs per CIFAR method (slow on a CPU)")
    parser.add_argument("--batch-size", type=int, default=None, help="boxes per chunk (default: auto)")
    parser.add_argument("--quick", action="store_true", help="MNIST only, 1 run per method")
    parser.add_argument("--out", type=Path, default=RESULTS / "bounds.json")
    args = parser.parse_args()
    if args.quick:
        args.net, args.runs = "mnist", 1
    nets = list(NETS) if args.net == "all" else [args.net]
    peak = gemm_peak()
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, matmul peak {peak / 1e9:.0f} GFLOP/s"
    )
    rows = []
    header = f"{'net':6} {'method':22} {'median':>10} {'peak RSS':>9} {'mean width':>11} {'GFLOP':>7} {'roofline':>9} {'eff.':>5}"
    print(header)
    print("-" * len(header))
    for net in nets:
        methods = args.methods if net == "mnist" else args.cifar_methods
        for method in methods.split(","):
            runs = args.runs if net == "mnist" else args.cifar_runs
            r = measure(net, method, runs, args.batch_size)
            row = {"net": net, "method": method, "boxes": 145, "runs": runs, **r}
            if "error" not in r:
                row["roofline_s"] = r["gemm_flop"] / peak
                row["efficiency"] = row["roofline_s"] / r["median_s"]
                print(
                    f"{net:6} {method:22} {r['median_s'] * 1e3:8.1f}ms {r['peak_rss_mb']:7.0f}MB "
                    f"{r['mean_width']:11.3f} {r['gemm_flop'] / 1e9:7.1f} {row['roofline_s'] * 1e3:7.1f}ms "
                    f"{row['efficiency']:5.0%}"
                )
            else:
                print(f"{net:6} {method:22} {r['error']}")
            rows.append(row)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    meta = {
        "machine": platform.processor() or platform.machine(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "gemm_peak_flops": peak,
        "runs": args.runs,
    }
    args.out.write_text(json.dumps({"meta": meta, "results": rows}, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
