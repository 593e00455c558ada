"""Load the ``cifar-10-model`` Keras (2.9, HDF5) weights into :func:`evax.zoo.models.cifar10_cnn`.

Keras stores ``Conv2D`` kernels as ``(kh, kw, in, out)`` (channels-last) and ``Dense`` kernels
as ``(in, out)``; torch wants ``(out, in, kh, kw)`` and ``(out, in)``. Keras'
``BatchNormalization`` (gamma, beta, moving_mean, moving_variance, eps 1e-3) maps to
``BatchNorm2d`` (weight, bias, running_mean, running_var). The Keras ``Flatten`` sees a
``1 x 1 x 64`` map, so NHWC and NCHW flattening agree and no row permutation is needed.
Channel order is RGB in both (Keras' ``cifar10.load_data``), input scaling is handled by the
model's :class:`~evax.zoo.layers.Normalize` (``x * 255``).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from torch import nn

from evax.errors import DataSourceError
from evax.zoo.deps import require

# Keras layer name -> our module name, in network order.
_CONVS = [("conv2d" + ("" if i == 0 else f"_{i}"), f"conv{i}") for i in range(6)]
_BNS = [("batch_normalization" + ("" if i == 0 else f"_{i}"), f"bn{i}") for i in range(6)]
_DENSES = [("dense" + ("" if i == 0 else f"_{i}"), f"dense{i}") for i in range(3)]


def keras_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Read the Keras HDF5 file at ``path`` into a state dict for ``cifar10_cnn()``."""
    h5py = require("h5py", "reading the cifar10-cnn Keras weights")
    state: dict[str, torch.Tensor] = {}
    with h5py.File(path, "r") as f:
        config = json.loads(f.attrs["model_config"])
        kinds = [layer["class_name"] for layer in config["config"]["layers"]]
        if kinds.count("Conv2D") != 6 or kinds.count("Dense") != 3:
            raise DataSourceError(f"{path} is not the expected cifar-10-model network: {kinds}")
        w = f["model_weights"]

        def get(layer: str, name: str) -> np.ndarray:
            return np.asarray(w[layer][layer][f"{name}:0"], dtype=np.float32)

        for keras, ours in _CONVS:
            kernel = get(keras, "kernel").transpose(3, 2, 0, 1)  # (kh,kw,in,out) -> (out,in,kh,kw)
            state[f"{ours}.weight"] = torch.from_numpy(kernel.copy())
            state[f"{ours}.bias"] = torch.from_numpy(get(keras, "bias"))
        for keras, ours in _BNS:
            state[f"{ours}.weight"] = torch.from_numpy(get(keras, "gamma"))
            state[f"{ours}.bias"] = torch.from_numpy(get(keras, "beta"))
            state[f"{ours}.running_mean"] = torch.from_numpy(get(keras, "moving_mean"))
            state[f"{ours}.running_var"] = torch.from_numpy(get(keras, "moving_variance"))
            state[f"{ours}.num_batches_tracked"] = torch.tensor(0)
        for keras, ours in _DENSES:
            state[f"{ours}.weight"] = torch.from_numpy(get(keras, "kernel").T.copy())
            state[f"{ours}.bias"] = torch.from_numpy(get(keras, "bias"))
    return state


def load_keras_weights(model: nn.Module, path: Path) -> nn.Module:
    """Load the Keras weights at ``path`` into ``model`` (a ``cifar10_cnn()``), strictly."""
    state = keras_state_dict(path)
    own = model.state_dict()
    state.update({k: v for k, v in own.items() if k.startswith("norm.")})
    model.load_state_dict(state, strict=True)
    return model
