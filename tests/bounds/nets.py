"""Random networks covering every layer type the bound engine supports (seeded)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from evax.zoo.layers import Normalize


class Residual(nn.Module):
    """Conv block with a residual add and input normalisation written as arithmetic."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor([0.4, 0.5]).view(2, 1, 1))
        self.register_buffer("std", torch.tensor([0.3, 0.2]).view(2, 1, 1))
        self.conv1 = nn.Conv2d(2, 4, 3, padding=1)
        self.conv2 = nn.Conv2d(4, 4, 3, padding=1)
        self.skip = nn.Conv2d(2, 4, 1)
        self.head = nn.Linear(4 * 6 * 6, 5)

    def forward(self, x):
        x = (x - self.mean) / self.std
        h = F.relu(self.conv1(x))
        h = self.conv2(h) + self.skip(x)
        h = torch.relu(h)
        h = h - 0.1 * h  # scalar arithmetic
        return self.head(torch.flatten(h, 1))


class ViewNet(nn.Module):
    """Functional ops: x.view, F.leaky_relu, torch.sigmoid, tanh method, negation."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(2 * 6 * 6, 12)
        self.fc2 = nn.Linear(12, 12)
        self.fc3 = nn.Linear(12, 4)

    def forward(self, x):
        h = x.view(x.size(0), -1)
        h = F.leaky_relu(self.fc1(h), 0.1)
        h = torch.sigmoid(self.fc2(h)) + (-h)
        return self.fc3(h.tanh())


class ExportedOps(nn.Module):
    """What ONNX exports look like once converted: NHWC permute, reshape with a constant shape,
    MatMul + bias add, F.linear, an in-place ReLU."""

    def __init__(self) -> None:
        super().__init__()
        gen = torch.Generator().manual_seed(3)
        self.w1 = nn.Parameter(torch.randn(72, 16, generator=gen) * 0.2)
        self.b1 = nn.Parameter(torch.randn(16, generator=gen) * 0.1)
        self.w2 = nn.Parameter(torch.randn(5, 16, generator=gen) * 0.3)

    def forward(self, x):
        h = torch.reshape(x.permute(0, 2, 3, 1), (-1, 72))
        h = torch.matmul(h, self.w1) + self.b1
        h = F.relu(h, inplace=True)
        return F.linear(h, self.w2)


class BranchesCatPad(nn.Module):
    """Two functional conv branches, constant padding, concatenation, mean pooling."""

    def __init__(self) -> None:
        super().__init__()
        gen = torch.Generator().manual_seed(4)
        self.k1 = nn.Parameter(torch.randn(3, 2, 3, 3, generator=gen) * 0.3)
        self.k2 = nn.Parameter(torch.randn(2, 2, 3, 3, generator=gen) * 0.5)
        self.head = nn.Linear(5 * 2 * 2 + 5, 4)

    def forward(self, x):
        a = F.conv2d(x, self.k1, padding=1)  # (3, 6, 6)
        b = F.conv2d(F.pad(x, (1, 1, 1, 1), value=0.5), self.k2)  # (2, 6, 6)
        h = torch.relu(torch.cat([a, b], dim=1))  # (5, 6, 6)
        pooled = F.avg_pool2d(h, 3)  # (5, 2, 2)
        return self.head(torch.cat([pooled.flatten(1), h.mean(dim=(2, 3))], dim=1))


class TwoLinearBranches(nn.Module):
    """Two affine layers straight on the input, summed later (the backward pass must carry
    both branches' multipliers to the input)."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(72, 10), nn.Linear(72, 10)
        self.head = nn.Linear(10, 4)

    def forward(self, x):
        h = x.flatten(1)
        return self.head(torch.add(self.a(h), torch.relu(self.b(h)), alpha=-2.0))


class Gain(nn.Module):
    """``x * gain``: brings pre-activations to the kinks of ReLU6."""

    def __init__(self, gain: float) -> None:
        super().__init__()
        self.gain = gain

    def forward(self, x):
        return x * self.gain


def _randomise_bn(model: nn.Module, gen: torch.Generator) -> nn.Module:
    for m in model.modules():
        if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
            n = m.num_features
            m.running_mean.copy_(torch.randn(n, generator=gen) * 0.3)
            m.running_var.copy_(torch.rand(n, generator=gen) + 0.5)
            m.weight.data.copy_(torch.randn(n, generator=gen))
            m.bias.data.copy_(torch.randn(n, generator=gen) * 0.2)
    return model


def make(name: str, seed: int = 0) -> nn.Module:
    """A seeded random network taking ``(N, 2, 6, 6)`` inputs in eval mode."""
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    c = 2
    builders = {
        "mlp_relu": lambda: nn.Sequential(
            nn.Flatten(),
            nn.Linear(c * 36, 24),
            nn.ReLU(),
            nn.Linear(24, 16),
            nn.ReLU(),
            nn.Linear(16, 5),
        ),
        "mlp_mixed": lambda: nn.Sequential(
            nn.Flatten(),
            nn.Linear(c * 36, 20),
            nn.BatchNorm1d(20),
            nn.LeakyReLU(0.2),
            nn.Dropout(0.3),
            nn.Linear(20, 16),
            nn.Sigmoid(),
            nn.Linear(16, 12),
            nn.Tanh(),
            nn.Identity(),
            nn.Linear(12, 4),
        ),
        "conv_maxpool": lambda: nn.Sequential(
            nn.Conv2d(c, 4, 3, stride=1, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(4, 6, 2, stride=1, dilation=1),
            nn.ReLU(),
            nn.Flatten(),
            nn.Linear(6 * 2 * 2, 5),
        ),
        "conv_overlap_pool": lambda: nn.Sequential(
            nn.Conv2d(c, 4, 3, stride=2, padding=1, dilation=1),
            nn.BatchNorm2d(4),
            nn.ReLU(),
            nn.MaxPool2d(3, stride=1, padding=1),
            nn.Flatten(),
            nn.Linear(4 * 3 * 3, 5),
        ),
        "conv_groups_avg": lambda: nn.Sequential(
            nn.Conv2d(c, 4, 3, padding=2, dilation=2, groups=2),
            nn.ReLU(),
            nn.AvgPool2d(2),
            nn.Conv2d(4, 4, 1, groups=4),
            nn.Tanh(),
            nn.AdaptiveAvgPool2d((2, 2)),
            nn.Flatten(),
            nn.Linear(16, 5),
        ),
        "conv_sigmoid_adaptive": lambda: nn.Sequential(
            nn.Conv2d(c, 3, 3), nn.Sigmoid(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(3, 4)
        ),
        "mlp_normalized": lambda: nn.Sequential(
            Normalize([0.3, 0.6], [0.2, 0.5]),
            nn.Flatten(),
            nn.Linear(c * 36, 16),
            nn.ReLU(),
            nn.Linear(16, 5),
        ),
        "pool_output": lambda: nn.Sequential(nn.MaxPool2d(3, stride=2, padding=1), nn.Flatten()),
        "pool_first": lambda: nn.Sequential(nn.MaxPool2d(2), nn.Flatten(), nn.Linear(c * 9, 3)),
        "residual": Residual,
        "functional": ViewNet,
        "leaky_extremes": lambda: nn.Sequential(
            nn.Flatten(), nn.Linear(c * 36, 12), nn.LeakyReLU(3.0), nn.Linear(12, 10), nn.LeakyReLU(-0.5),
            nn.Linear(10, 4),
        ),
        "exported_ops": ExportedOps,
        "branches_cat_pad": BranchesCatPad,
        "two_linear_branches": TwoLinearBranches,
        "smooth_acts": lambda: nn.Sequential(
            nn.Flatten(), nn.Linear(c * 36, 16), nn.GELU(), nn.Linear(16, 12), nn.SiLU(), nn.Linear(12, 10),
            nn.Softplus(2.0, 3.0), nn.Linear(10, 4),
        ),
        "clamp_acts": lambda: nn.Sequential(
            nn.Conv2d(c, 4, 3, padding=1), nn.Hardtanh(-0.2, 0.3), nn.Conv2d(4, 4, 3, stride=2),
            Gain(8.0), nn.ReLU6(), nn.Flatten(), nn.Linear(4 * 2 * 2, 5),
        ),
    }
    model = builders[name]()
    return _randomise_bn(model, gen).eval()


ALL = [
    "mlp_relu",
    "mlp_mixed",
    "conv_maxpool",
    "conv_overlap_pool",
    "conv_groups_avg",
    "conv_sigmoid_adaptive",
    "pool_output",
    "pool_first",
    "residual",
    "functional",
    "leaky_extremes",
    "exported_ops",
    "branches_cat_pad",
    "two_linear_branches",
    "smooth_acts",
    "clamp_acts",
]
METHODS = [
    "ibp",
    "forward",
    "backward",
    "ibp+forward",
    "ibp+backward",
    "forward+backward",
    "ibp+forward+backward",
    "crown-ibp",
    "forward+crown-ibp",
    "alpha-crown",
]
# Methods with options, attacked like METHODS: (method, bound() keyword arguments).
METHOD_OPTIONS = [
    ("alpha-crown", {"alpha_intermediate": True, "alpha_iterations": 5}),
]
