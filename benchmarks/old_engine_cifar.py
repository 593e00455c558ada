"""Any engine version on 8 of the 145 EVA boxes of the EVA paper's CIFAR-10 net, to compare
versions on the same machine in the same hour.

Engines before the conv-stem sharing (session 7) bound ``backward`` and ``ibp+forward`` one box per
chunk on this net, so their time for 145 boxes is 145/8 times the time printed here. Run an
older version from a git worktree::

    git worktree add /tmp/old-evax 157e4f2
    PYTHONPATH=/tmp/old-evax/src python benchmarks/old_engine_cifar.py old.json backward,ibp+forward

Writes the seconds and mean bound widths to the JSON file given.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))

from bounds import cifar_net, eva_boxes  # noqa: E402


def main() -> None:
    import evax

    out_path, methods = Path(sys.argv[1]), sys.argv[2].split(",")
    torch.set_num_threads(2)
    print(f"evax from {evax.__file__}")
    model = cifar_net()
    ball = eva_boxes((3, 32, 32)).select(slice(0, 8))
    out = {}
    for method in methods:
        start = time.perf_counter()
        b = evax.bound(model, ball, method)
        seconds = time.perf_counter() - start
        out[method] = {"seconds_8_boxes": seconds, "mean_width": b.width.mean().item()}
        print(f"{method:24} {seconds:8.2f} s  mean width {out[method]['mean_width']:.3f}", flush=True)
    out_path.write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
