"""Architectures of the zoo's networks, as plain ``nn.Sequential`` stacks.

Every network takes pixels in ``[0, 1]``, shape ``(N, C, H, W)``, starts with its own
:class:`~evax.zoo.layers.Normalize` and uses only layers the bound engine relaxes (Linear,
Conv2d, ReLU, MaxPool2d, Flatten, BatchNorm2d, Dropout), so every model here is
torch.fx-traceable and can be bounded. Modules are named (``fc1``, ``conv2``...) so error
messages and state dicts read well.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Sequence

import torch
from torch import nn

from evax.zoo.layers import Normalize

MNIST_MEAN, MNIST_STD = 0.1307, 0.3081
FASHION_MEAN, FASHION_STD = 0.2860, 0.3530


def dense_mlp(
    in_shape: Sequence[int] = (1, 28, 28),
    hidden: Sequence[int] = (256, 128, 64, 32),
    num_classes: int = 10,
    mean: float = MNIST_MEAN,
    std: float = MNIST_STD,
) -> nn.Sequential:
    """The EVA paper's dense ReLU network (default 784-256-128-64-32-10).

    ``Normalize -> Flatten -> [Linear -> ReLU] x len(hidden) -> Linear``.
    Input ``(N, *in_shape)`` in ``[0, 1]``; output logits ``(N, num_classes)``.
    """
    channels = in_shape[0]
    layers: OrderedDict[str, nn.Module] = OrderedDict(
        norm=Normalize([mean] * channels, [std] * channels), flatten=nn.Flatten()
    )
    width = math.prod(in_shape)
    for i, h in enumerate(hidden, start=1):
        layers[f"fc{i}"] = nn.Linear(width, h)
        layers[f"relu{i}"] = nn.ReLU()
        width = h
    layers[f"fc{len(hidden) + 1}"] = nn.Linear(width, num_classes)
    return nn.Sequential(layers)


def lenet5() -> nn.Sequential:
    """advertorch's ``test_utils.LeNet5`` (the net of its MNIST tutorial), as a Sequential.

    ``conv(1->32, 3x3, pad 1) -> ReLU -> maxpool 2 -> conv(32->64, 3x3, pad 1) -> ReLU ->
    maxpool 2 -> flatten (3136) -> Linear 200 -> ReLU -> Linear 10``. It was trained on raw
    ``[0, 1]`` pixels, so its :class:`Normalize` is the identity (mean 0, std 1); the
    adversarially trained weights used PGD with L-inf eps 0.3 (40 steps of 0.01).
    Input ``(N, 1, 28, 28)``; output logits ``(N, 10)``.
    """
    return nn.Sequential(
        OrderedDict(
            norm=Normalize([0.0], [1.0]),
            conv1=nn.Conv2d(1, 32, 3, padding=1),
            relu1=nn.ReLU(),
            maxpool1=nn.MaxPool2d(2),
            conv2=nn.Conv2d(32, 64, 3, padding=1),
            relu2=nn.ReLU(),
            maxpool2=nn.MaxPool2d(2),
            flatten=nn.Flatten(),
            linear1=nn.Linear(7 * 7 * 64, 200),
            relu3=nn.ReLU(),
            linear2=nn.Linear(200, 10),
        )
    )


def cifar10_cnn() -> nn.Sequential:
    """The ``cifar-10-model`` 7.4.0 Keras network, rebuilt in torch (weights: keras_h5).

    Keras order is kept: each 3x3 'valid' conv has a ReLU *before* its BatchNorm
    (eps 1e-3); the last Dense also has a ReLU (the Keras model was trained with
    ``from_logits=True`` on ReLU'd logits, so we keep it to match its outputs).
    The Keras net reads raw 0..255 RGB, so :class:`Normalize` is ``x / (1/255)``.
    Input ``(N, 3, 32, 32)`` in ``[0, 1]``; output ``(N, 10)`` non-negative logits.
    """
    layers: OrderedDict[str, nn.Module] = OrderedDict(
        norm=Normalize([0.0] * 3, [1.0 / 255.0] * 3)
    )
    widths = [(3, 64), (64, 64), (64, 128), (128, 128), (128, 64), (64, 64)]
    for i, (cin, cout) in enumerate(widths):
        layers[f"conv{i}"] = nn.Conv2d(cin, cout, 3)
        layers[f"relu{i}"] = nn.ReLU()
        layers[f"bn{i}"] = nn.BatchNorm2d(cout, eps=1e-3)
        if i in (1, 3):
            layers[f"maxpool{i // 2}"] = nn.MaxPool2d(2)
    layers["flatten"] = nn.Flatten()  # (N, 64, 1, 1): NCHW and NHWC orders coincide
    layers["dense0"] = nn.Linear(64, 1024)
    layers["relu_d0"] = nn.ReLU()
    layers["dropout0"] = nn.Dropout(0.2)
    layers["dense1"] = nn.Linear(1024, 512)
    layers["relu_d1"] = nn.ReLU()
    layers["dropout1"] = nn.Dropout(0.2)
    layers["dense2"] = nn.Linear(512, 10)
    layers["relu_d2"] = nn.ReLU()
    return nn.Sequential(layers)


def init_with_generator(model: nn.Module, generator: torch.Generator) -> nn.Module:
    """Re-draw Linear/Conv parameters with torch's default init, from ``generator`` only.

    Same distribution as ``reset_parameters`` (Kaiming-uniform with ``a = sqrt(5)``, bias
    ``U(-1/sqrt(fan_in), 1/sqrt(fan_in))``) without touching the global RNG.
    """
    for m in model.modules():
        if isinstance(m, (nn.Linear, nn.Conv2d)):
            nn.init.kaiming_uniform_(m.weight, a=math.sqrt(5), generator=generator)
            if m.bias is not None:
                fan_in = m.weight[0].numel()
                bound = 1.0 / math.sqrt(fan_in)
                nn.init.uniform_(m.bias, -bound, bound, generator=generator)
    return model


def small_cnn(mean: float = MNIST_MEAN, std: float = MNIST_STD) -> nn.Sequential:
    """A small MNIST CNN (Wong & Kolter 2018's, the "small" net of certified-training papers).

    ``Normalize -> conv(1->16, 4x4, stride 2, pad 1) -> ReLU -> conv(16->32, 4x4, stride 2,
    pad 1) -> ReLU -> flatten (1568) -> Linear 100 -> ReLU -> Linear 10``.
    Input ``(N, 1, 28, 28)`` in ``[0, 1]``; output logits ``(N, 10)``.
    """
    return nn.Sequential(
        OrderedDict(
            norm=Normalize([mean], [std]),
            conv1=nn.Conv2d(1, 16, 4, stride=2, padding=1),
            relu1=nn.ReLU(),
            conv2=nn.Conv2d(16, 32, 4, stride=2, padding=1),
            relu2=nn.ReLU(),
            flatten=nn.Flatten(),
            fc1=nn.Linear(32 * 7 * 7, 100),
            relu3=nn.ReLU(),
            fc2=nn.Linear(100, 10),
        )
    )
