"""Train the zoo's own networks deterministically on the CPU.

Usage::

    python -m evax.zoo.train mnist-mlp      # ~25 s on 2 cores, writes zoo/data/mnist_mlp.pt
    python -m evax.zoo.train fashion-mlp    # writes zoo/data/fashion_mlp.pt
    python -m evax.zoo.train samples        # writes zoo/data/{mnist,fashion}_samples.npz

Recipe (both): the EVA paper's dense 784-256-128-64-32-10 ReLU net, Adam (lr 1e-3,
cosine-annealed to 0), batch 128, cross-entropy, 15 epochs over the 60k training images.
Randomness comes only from ``torch.Generator(seed)`` (initial weights, batch order), so a run
is reproducible on the same machine and thread count. The script prints the test accuracy,
which is what ``evax.zoo.registry`` records.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from tqdm.auto import tqdm

from evax.errors import InvalidInputError
from evax.zoo.datasets import load_dataset
from evax.zoo.fetch import show_progress
from evax.zoo.models import (
    FASHION_MEAN,
    FASHION_STD,
    MNIST_MEAN,
    MNIST_STD,
    dense_mlp,
    init_with_generator,
)

DATA_DIR = Path(__file__).resolve().parent / "data"


@dataclass(frozen=True)
class Recipe:
    """What to train: dataset, normalisation constants, output weight file."""

    dataset: str
    mean: float
    std: float
    weights: str
    epochs: int = 15
    batch_size: int = 128
    lr: float = 1e-3


RECIPES = {
    "mnist-mlp": Recipe("mnist", MNIST_MEAN, MNIST_STD, "mnist_mlp.pt"),
    "fashion-mlp": Recipe("fashion-mnist", FASHION_MEAN, FASHION_STD, "fashion_mlp.pt"),
}


@torch.no_grad()
def accuracy(
    model: nn.Module, images: torch.Tensor, labels: torch.Tensor, batch: int = 1000
) -> float:
    """Top-1 accuracy of ``model`` on ``images (N, C, H, W)`` / ``labels (N,)``, in [0, 1]."""
    was_training = model.training
    model.eval()
    correct = 0
    for i in range(0, len(labels), batch):
        correct += int((model(images[i : i + batch]).argmax(1) == labels[i : i + batch]).sum())
    model.train(was_training)
    return correct / len(labels)


def train(name: str, seed: int = 0, epochs: int | None = None, root: str | None = None,
          progress: bool = True) -> tuple[nn.Module, float]:
    """Train model ``name`` (a key of :data:`RECIPES`); return ``(model, test accuracy)``."""
    if name not in RECIPES:
        raise InvalidInputError(f"no training recipe for {name!r}; known: {list(RECIPES)}")
    r = RECIPES[name]
    xtr, ytr, _ = load_dataset(r.dataset, "train", root=root, progress=progress)
    xte, yte, _ = load_dataset(r.dataset, "test", root=root, progress=progress)
    g = torch.Generator().manual_seed(seed)
    model = init_with_generator(dense_mlp(mean=r.mean, std=r.std), g)
    n_epochs = epochs if epochs is not None else r.epochs
    steps = n_epochs * ((len(ytr) + r.batch_size - 1) // r.batch_size)
    opt = torch.optim.Adam(model.parameters(), lr=r.lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps)
    loss_fn = nn.CrossEntropyLoss()
    model.train()
    with tqdm(total=steps, desc=f"train {name}", disable=not show_progress(progress)) as bar:
        for _ in range(n_epochs):
            order = torch.randperm(len(ytr), generator=g)
            for i in range(0, len(order), r.batch_size):
                idx = order[i : i + r.batch_size]
                loss = loss_fn(model(xtr[idx]), ytr[idx])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
                bar.update(1)
            bar.set_postfix(loss=f"{loss.item():.4f}")
    model.eval()
    return model, accuracy(model, xte, yte)


def export_samples(n: int = 20, root: str | None = None, out_dir: Path = DATA_DIR) -> None:
    """Write the first ``n`` test images of MNIST and Fashion-MNIST as uint8 ``.npz`` files.

    Each file holds ``images (n, 28, 28) uint8`` and ``labels (n,) int64``; these are the
    samples :func:`evax.zoo.default_samples` ships (foolbox ships the same 20 images).
    """
    import numpy as np

    targets = (("mnist", "mnist_samples.npz"), ("fashion-mnist", "fashion_samples.npz"))
    for dataset, fname in targets:
        x, y, _ = load_dataset(dataset, "test", root=root)
        images = (x[:n, 0] * 255).round().to(torch.uint8).numpy()
        np.savez_compressed(out_dir / fname, images=images, labels=y[:n].numpy())
        print(f"{dataset}: {n} test samples -> {out_dir / fname}")


def main(argv: list[str] | None = None) -> None:
    """Command-line entry point: ``python -m evax.zoo.train NAME [--seed S] [--out PATH]``."""
    parser = argparse.ArgumentParser(prog="python -m evax.zoo.train", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("name", choices=[*sorted(RECIPES), "samples"])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--epochs", type=int, default=None)
    parser.add_argument("--root", default=None, help="folder with the dataset's IDX files")
    parser.add_argument("--out", type=Path, default=None,
                        help="weight file (default: the package's zoo/data/<name>.pt)")
    args = parser.parse_args(argv)
    if args.name == "samples":
        export_samples(root=args.root)
        return
    t0 = time.perf_counter()
    model, acc = train(args.name, seed=args.seed, epochs=args.epochs, root=args.root)
    out = args.out or DATA_DIR / RECIPES[args.name].weights
    out.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}
    torch.save(state, out)
    n = len(load_dataset(RECIPES[args.name].dataset, "test", root=args.root, progress=False)[1])
    print(f"{args.name}: test accuracy {acc:.4f} on {n} images "
          f"({time.perf_counter() - t0:.0f} s, seed {args.seed}) -> {out}")


if __name__ == "__main__":
    main()
