"""Train the zoo's own networks deterministically on the CPU.

Usage::

    python -m evax.zoo.train mnist-mlp      # ~25 s on 2 cores, writes zoo/data/mnist_mlp.pt
    python -m evax.zoo.train fashion-mlp    # writes zoo/data/fashion_mlp.pt
    python -m evax.zoo.train samples        # writes zoo/data/{mnist,fashion}_samples.npz
    python -m evax.zoo.train mnist-mlp-cert0.1   # certified training, zoo/data/mnist_mlp_cert0.1.pt

Recipe (normal): the EVA paper's dense 784-256-128-64-32-10 ReLU net, Adam (lr 1e-3,
cosine-annealed to 0), batch 128, cross-entropy, 15 epochs over the 60k training images.
Certified recipes (``*-cert<eps>``): IBP / CROWN-IBP training with evax's own differentiable
bounds, eps ramp-up and the clean / worst-case cross-entropy mix (:mod:`evax.zoo.certified`);
the script also prints the verified accuracy at ``eps`` (:func:`~evax.zoo.certified.verified_accuracy`)
on the test set and on the 20 shipped samples, which ``evax.zoo.registry`` records.
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
from evax.zoo.certified import CertifiedSchedule, fit_certified, verified_accuracy
from evax.zoo.datasets import default_samples, load_dataset
from evax.zoo.fetch import show_progress
from evax.zoo.models import (
    FASHION_MEAN,
    FASHION_STD,
    MNIST_MEAN,
    MNIST_STD,
    dense_mlp,
    init_with_generator,
    small_cnn,
)

DATA_DIR = Path(__file__).resolve().parent / "data"


@dataclass(frozen=True)
class Recipe:
    """What to train: dataset, normalisation constants, output weight file, architecture
    (``"mlp"``: :func:`~evax.zoo.models.dense_mlp`, ``"cnn"``:
    :func:`~evax.zoo.models.small_cnn`) and, for certified training, its schedule."""

    dataset: str
    mean: float
    std: float
    weights: str
    epochs: int = 15
    batch_size: int = 128
    lr: float = 1e-3
    arch: str = "mlp"
    certified: CertifiedSchedule | None = None

    def build(self) -> nn.Module:
        """The recipe's architecture with torch's default (random) init."""
        if self.arch == "cnn":
            return small_cnn(mean=self.mean, std=self.std)
        return dense_mlp(mean=self.mean, std=self.std)


# CROWN-IBP (beta 1 -> 0) for the MLPs; IBP for the CNN, whose CROWN-IBP pass costs ~10x its
# IBP pass on this CPU (0.5 s per batch of 128, one thread). Train at 1.1 eps (Gowal et al.).
_CROWN_IBP_01 = CertifiedSchedule(eps=0.1, warmup=1, ramp=4, eps_train_factor=1.1)
_IBP_01 = CertifiedSchedule(eps=0.1, warmup=1, ramp=4, beta_start=0.0, beta_end=0.0,
                            eps_train_factor=1.1)
_CROWN_IBP_03 = CertifiedSchedule(eps=0.3, warmup=1, ramp=6, eps_train_factor=1.1)
_IBP_03 = CertifiedSchedule(eps=0.3, warmup=1, ramp=6, beta_start=0.0, beta_end=0.0,
                            eps_train_factor=1.1)

RECIPES = {
    "mnist-mlp": Recipe("mnist", MNIST_MEAN, MNIST_STD, "mnist_mlp.pt"),
    "fashion-mlp": Recipe("fashion-mnist", FASHION_MEAN, FASHION_STD, "fashion_mlp.pt"),
    "mnist-mlp-cert0.1": Recipe("mnist", MNIST_MEAN, MNIST_STD, "mnist_mlp_cert0.1.pt",
                                epochs=8, certified=_CROWN_IBP_01),
    "mnist-cnn-cert0.1": Recipe("mnist", MNIST_MEAN, MNIST_STD, "mnist_cnn_cert0.1.pt",
                                epochs=8, arch="cnn", certified=_IBP_01),
    "mnist-mlp-cert0.3": Recipe("mnist", MNIST_MEAN, MNIST_STD, "mnist_mlp_cert0.3.pt",
                                epochs=10, certified=_CROWN_IBP_03),
    "mnist-cnn-cert0.3": Recipe("mnist", MNIST_MEAN, MNIST_STD, "mnist_cnn_cert0.3.pt",
                                epochs=10, arch="cnn", certified=_IBP_03),
    "fashion-mlp-cert0.1": Recipe("fashion-mnist", FASHION_MEAN, FASHION_STD,
                                  "fashion_mlp_cert0.1.pt", epochs=8, certified=_CROWN_IBP_01),
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
    model = init_with_generator(r.build(), g)
    n_epochs = epochs if epochs is not None else r.epochs
    if r.certified is not None:
        steps = n_epochs * ((len(ytr) + r.batch_size - 1) // r.batch_size)
        with tqdm(total=steps, desc=f"train {name}", disable=not show_progress(progress)) as bar:

            def tick(step: int, loss: float) -> None:
                bar.update(1)
                if step % 20 == 0:
                    bar.set_postfix(loss=f"{loss:.4f}")

            fit_certified(model, xtr, ytr, r.certified, n_epochs, g, r.batch_size, r.lr,
                          step_callback=tick)
        return model, accuracy(model, xte, yte)
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
    if RECIPES[args.name].certified is not None:
        report_certified(args.name, model, args.root)


def report_certified(name: str, model: nn.Module, root: str | None = None) -> None:
    """Print the verified accuracy of a certified recipe's model at its ``eps``: on the test set
    and on the 20 shipped samples (what :data:`evax.zoo.registry.MODELS` records)."""
    r = RECIPES[name]
    assert r.certified is not None
    eps = r.certified.eps
    xte, yte, _ = load_dataset(r.dataset, "test", root=root, progress=False)
    samples = default_samples("fashion" if r.dataset == "fashion-mnist" else "mnist")
    for method in ("ibp", "crown-ibp"):
        t0 = time.perf_counter()
        va = verified_accuracy(model, xte, yte, eps, method=method)
        vs = verified_accuracy(model, samples.images, samples.labels, eps, method=method)
        print(f"{name}: verified accuracy at eps {eps} by {method}: {va:.4f} on {len(yte)} test "
              f"images ({time.perf_counter() - t0:.0f} s), {vs:.4f} on the 20 shipped samples")


if __name__ == "__main__":
    main()
