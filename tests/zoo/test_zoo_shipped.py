"""The zoo parts that need no download: shipped weights and samples, registry, errors, layers."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from evax.errors import InvalidInputError
from evax.zoo import (
    Normalize,
    default_samples,
    list_datasets,
    list_models,
    load_dataset,
    load_model,
    model_info,
    registry_table,
)

# Layers the bound engine supports (DESIGN.md); EfficientNet-Lite0 is exempt (hybrid EVA).
ENGINE_LAYERS = (
    nn.Linear, nn.Conv2d, nn.ReLU, nn.LeakyReLU, nn.MaxPool2d, nn.AvgPool2d,
    nn.AdaptiveAvgPool2d, nn.Flatten, nn.BatchNorm1d, nn.BatchNorm2d, nn.Dropout, nn.Identity,
    nn.Sigmoid, nn.Tanh, Normalize, nn.Sequential,
)
ENGINE_MODELS = [n for n in list_models() if n != "imagenet-efficientnet-lite0"]


def binomial_slack(p: float, n: int) -> float:
    """3 standard deviations of an accuracy measured on n samples, plus one sample."""
    return 3 * math.sqrt(p * (1 - p) / n) + 1 / n


# ----------------------------------------------------------------------------- Normalize


def test_normalize_is_per_channel_affine_with_named_buffers() -> None:
    norm = Normalize([0.5, 0.25], [2.0, 0.5])
    assert norm.mean.shape == (2, 1, 1) and norm.std.shape == (2, 1, 1)
    assert {name for name, _ in norm.named_buffers()} == {"mean", "std"}
    x = torch.rand(3, 2, 4, 4)
    expected = torch.stack([(x[:, 0] - 0.5) / 2.0, (x[:, 1] - 0.25) / 0.5], dim=1)
    torch.testing.assert_close(norm(x), expected)
    flat = Normalize([1.0, 2.0, 3.0], [1.0, 1.0, 2.0], image=False)
    assert flat.mean.shape == (3,)
    torch.testing.assert_close(flat(torch.ones(2, 3)), torch.tensor([[0.0, -1.0, -1.0]] * 2))


@pytest.mark.parametrize("mean,std", [([0.0], [0.0]), ([0.0, 1.0], [1.0]), ([], [])])
def test_normalize_rejects_bad_constants(mean: list[float], std: list[float]) -> None:
    with pytest.raises(InvalidInputError):
        Normalize(mean, std)


# ----------------------------------------------------------------------------- shipped data


@pytest.mark.parametrize("name", ["mnist-samples", "fashion-mnist-samples"])
def test_shipped_samples_shapes_ranges_dtypes(name: str) -> None:
    images, labels, classes = load_dataset(name)
    assert images.shape == (20, 1, 28, 28) and images.dtype == torch.float32
    assert labels.shape == (20,) and labels.dtype == torch.int64
    assert 0.0 <= float(images.min()) and float(images.max()) <= 1.0
    assert float(images.max()) > 0.9  # real images, not an all-dark placeholder
    assert len(classes) == 10 and int(labels.min()) >= 0 and int(labels.max()) < 10
    # stored as exact 8-bit values
    torch.testing.assert_close(images * 255, (images * 255).round(), atol=1e-4, rtol=0)


def test_shipped_mnist_samples_are_the_first_test_digits() -> None:
    # the first 20 labels of the MNIST test set (the same images foolbox ships)
    expected = [7, 2, 1, 0, 4, 1, 4, 9, 5, 9, 0, 6, 9, 0, 1, 5, 9, 7, 3, 4]
    assert default_samples().labels.tolist() == expected
    assert default_samples("fashion").labels[:5].tolist() == [9, 2, 1, 1, 6]


def test_default_samples_rejects_unknown_name() -> None:
    with pytest.raises(InvalidInputError, match="mnist"):
        default_samples("svhn")


# ----------------------------------------------------------------------------- shipped models


def test_mnist_mlp_is_the_eva_dense_net() -> None:
    model = load_model("mnist-mlp")
    assert isinstance(model, nn.Sequential) and not model.training
    assert isinstance(model[0], Normalize) and isinstance(model[1], nn.Flatten)
    widths = [(m.in_features, m.out_features) for m in model if isinstance(m, nn.Linear)]
    assert widths == [(784, 256), (256, 128), (128, 64), (64, 32), (32, 10)]
    assert sum(isinstance(m, nn.ReLU) for m in model) == 4


@pytest.mark.parametrize(
    "name,samples", [("mnist-mlp", "mnist-samples"), ("fashion-mlp", "fashion-mnist-samples")]
)
def test_shipped_model_accuracy_on_shipped_samples(name: str, samples: str) -> None:
    images, labels, _ = load_dataset(samples)
    model = load_model(name)
    with torch.no_grad():
        acc = float((model(images).argmax(1) == labels).float().mean())
    recorded = model_info(name).accuracy
    assert abs(acc - recorded) <= binomial_slack(recorded, len(labels)), (acc, recorded)


def test_shipped_weights_differ_from_random_init() -> None:
    trained = load_model("mnist-mlp")
    images, labels, _ = default_samples()
    with torch.no_grad():
        random_acc = float((load_model("mnist-mlp", pretrained=False)(images).argmax(1) == labels)
                           .float().mean())
        trained_acc = float((trained(images).argmax(1) == labels).float().mean())
    assert trained_acc >= 0.9 > random_acc


@pytest.mark.parametrize("name", ENGINE_MODELS)
def test_models_use_only_engine_layers_and_trace(name: str) -> None:
    spec = model_info(name)
    model = load_model(name, pretrained=False)
    assert isinstance(model[0], Normalize)
    bad = [(n, type(m).__name__) for n, m in model.named_modules() if not isinstance(m, ENGINE_LAYERS)]
    assert bad == []
    traced = torch.fx.symbolic_trace(model)
    x = torch.rand(2, *spec.input_shape)
    with torch.no_grad():
        out = model(x)
        torch.testing.assert_close(traced(x), out)
    assert out.shape == (2, spec.num_classes)


def test_efficientnet_architecture_without_weights() -> None:
    model = load_model("imagenet-efficientnet-lite0", pretrained=False)
    assert isinstance(model[0], Normalize)
    assert sum(p.numel() for p in model.parameters()) == 4_652_008
    with torch.no_grad():
        feats = model[:-3](torch.rand(1, 3, 224, 224))
    assert feats.shape == (1, 1280, 1, 1)


# ----------------------------------------------------------------------------- registry


def test_registry_table_rows() -> None:
    rows = registry_table()
    assert [r["name"] for r in rows] == list_models()
    for r in rows:
        assert set(r) >= {"name", "input_shape", "classes", "accuracy", "source", "dataset"}
        assert 0.0 < r["accuracy"] <= 1.0
        assert r["dataset"] in list_datasets() or r["dataset"] == "imagenet"
        assert r["accuracy"] == model_info(r["name"]).accuracy
    assert model_info("mnist-mlp").accuracy > 0.98  # the EVA paper's bar


def test_zoo_cli_list_prints_every_model() -> None:
    from typer.testing import CliRunner

    from evax.zoo.cli import app

    result = CliRunner().invoke(app, ["list"])
    assert result.exit_code == 0, result.output
    for r in registry_table():
        assert r["name"] in result.output
    assert "98.37%" in result.output


# ----------------------------------------------------------------------------- bad input


def test_unknown_model_lists_known_ones() -> None:
    with pytest.raises(InvalidInputError) as info:
        load_model("resnet50")
    assert "resnet50" in str(info.value)
    for name in list_models():
        assert name in str(info.value)


def test_unknown_dataset_lists_known_ones() -> None:
    with pytest.raises(InvalidInputError) as info:
        load_dataset("svhn")
    for name in list_datasets():
        assert name in str(info.value)


def test_bad_split_and_root_on_packaged_set() -> None:
    with pytest.raises(InvalidInputError, match="splits"):
        load_dataset("mnist", split="validation")
    with pytest.raises(InvalidInputError, match="root"):
        load_dataset("mnist-samples", root=".")
