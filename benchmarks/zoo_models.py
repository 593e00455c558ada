"""The zoo's models: measured accuracy, load time (cold cache read + build) and inference speed.

For each registry model: top-1 accuracy on its evaluation set (re-measured, next to the value
the registry records), the time ``load_model`` takes with the weights already cached, and
images per second of a forward pass at batch 256 (batch 20 for EfficientNet-Lite0) on this
machine's CPU threads.

    python benchmarks/zoo_models.py                 # every model (fetches sources once)
    python benchmarks/zoo_models.py mnist-mlp       # some models

Writes ``benchmarks/results/zoo_models.json``.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch

from evax.zoo import list_models, load_dataset, load_model, model_info
from evax.zoo.train import accuracy

RESULTS = Path(__file__).parent / "results"


def bench(name: str) -> dict[str, object]:
    """Accuracy, load time and throughput of one zoo model."""
    spec = model_info(name)
    images, labels, _ = load_dataset(spec.eval_dataset, "test", progress=False)
    load_model(name, progress=False)  # make sure the weights are cached
    t0 = time.perf_counter()
    model = load_model(name, progress=False)
    load_s = time.perf_counter() - t0
    acc = accuracy(model, images, labels, batch=256)
    batch = images[: 20 if spec.input_shape[1] > 64 else 256]
    with torch.no_grad():
        model(batch)
        runs, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < 1.0:
            model(batch)
            runs += 1
    ips = runs * len(batch) / (time.perf_counter() - t0)
    return {
        "model": name,
        "eval_set": f"{spec.eval_dataset} ({len(labels)})",
        "accuracy": acc,
        "recorded": spec.accuracy,
        "load_s": load_s,
        "images_per_s": ips,
        "params": sum(p.numel() for p in model.parameters()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", default=list_models())
    args = parser.parse_args()
    rows = [bench(n) for n in args.names]
    print(f"{'model':30s} {'eval set':24s} {'acc':>7s} {'recorded':>8s} {'load s':>7s} "
          f"{'img/s':>9s} {'params':>10s}")
    for r in rows:
        print(f"{r['model']:30s} {r['eval_set']:24s} {r['accuracy']:7.4f} {r['recorded']:8.4f} "
              f"{r['load_s']:7.3f} {r['images_per_s']:9.0f} {r['params']:10d}")
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / "zoo_models.json"
    meta = {"torch": torch.__version__, "threads": torch.get_num_threads(),
            "machine": platform.platform()}
    out.write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
    print(f"-> {out}")


if __name__ == "__main__":
    main()
