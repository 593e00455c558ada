"""Time ``evax.bound`` on the first ``N`` of one EVA explanation's 145 boxes of the EVA paper's
CIFAR-10 net (margins, upper side, as EVA reads them), for A/B comparisons of engine versions in
one sitting (best of ``RUNS``, wall and process CPU time)::

    git worktree add /tmp/old-evax <commit>
    PYTHONPATH=/tmp/old-evax/src python benchmarks/cifar_ab.py crown-ibp 145 3
    python benchmarks/cifar_ab.py crown-ibp 145 3
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))

from bounds import cifar_net  # noqa: E402


def main() -> None:
    import evax
    from evax.attribution.eva import DEFAULT_GROUPS, fixed_masks, margin_spec
    from evax.zoo import load_dataset

    method, n_boxes, runs = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    model = cifar_net().eval()
    images = load_dataset("cifar10-samples").images[:1]
    n, c = images.shape[:2]
    masks = evax.groups.resolve(DEFAULT_GROUPS, images, False)
    g = masks.shape[1]
    centre = images.unsqueeze(1).expand(n, 1 + g, *images.shape[1:]).reshape(-1, *images.shape[1:])
    ball = evax.Ball(centre[:n_boxes], 0.5, fixed=fixed_masks(masks, n, c)[:n_boxes])
    with torch.no_grad():
        spec = margin_spec(model(images).argmax(1), 10).repeat_interleave(1 + g, dim=0)[:n_boxes]
    wall, cpu = float("inf"), float("inf")
    for _ in range(runs):
        start, start_cpu = time.perf_counter(), time.process_time()
        b = evax.bound(model, ball, method, spec, side="upper")
        wall, cpu = min(wall, time.perf_counter() - start), min(cpu, time.process_time() - start_cpu)
    print(f"evax from {evax.__file__}\n{method}, {n_boxes} boxes: wall {wall:.2f} s, CPU {cpu:.2f} s, "
          f"mean AO {b.upper.amax(1).mean().item():.6g}")


if __name__ == "__main__":
    main()
