"""Grad-CAM++: the App. E closed form on a conv net that is linear after the layer, shapes,
determinism and ranges on the zoo's CIFAR-10 CNN, and errors."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from evax.attribution.gradcampp import GradCAMPlusPlus
from evax.errors import InvalidInputError, NotApplicableError
from evax.zoo.fetch import SourceUnreachableError

pytestmark = pytest.mark.usefixtures("one_thread")


def _cnn(seed=0, k=3):
    g = torch.Generator().manual_seed(seed)
    net = nn.Sequential(nn.Conv2d(2, k, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(k * 6 * 6, 4))
    for p in net.parameters():
        p.data = torch.randn(p.shape, generator=g)
    return net.eval()


def _expected(net, x, t):
    """alpha = g^2 / (2 g^2 + sum_ab A_ab g^3) with g = df/dA (constant: linear after the ReLU),
    w_k = sum_ij alpha relu(g), map = relu(sum_k w_k A^k)."""
    a = net[1](net[0](x)).detach()  # (N, K, 6, 6)
    g = net[3].weight.detach()[t].view(x.shape[0], -1, 6, 6)
    denom = 2 * g**2 + a.sum((2, 3), keepdim=True) * g**3
    alpha = torch.where(denom != 0, g**2 / denom, torch.zeros_like(g))
    w = (alpha * torch.relu(g)).sum((2, 3), keepdim=True)
    return torch.relu((w * a).sum(1))


def test_closed_form():
    net = _cnn()
    x = torch.rand(3, 2, 6, 6, generator=torch.Generator().manual_seed(1))
    t = torch.tensor([0, 3, 1])
    method = GradCAMPlusPlus(net)
    assert method.layer is net[1]
    torch.testing.assert_close(method.cam(x, t), _expected(net, x, t), rtol=1e-5, atol=1e-6)
    # same layer resolution as the input here: the bilinear upsampling is the identity
    torch.testing.assert_close(method.attribute(x, t), _expected(net, x, t), rtol=1e-5, atol=1e-6)
    assert method.attribute_raw(x, t).shape == (3, 2, 6, 6)


def test_upsampling_and_layer_by_name():
    g = torch.Generator().manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(2 * 4 * 4, 3))
    for p in net.parameters():
        p.data = torch.randn(p.shape, generator=g)
    x = torch.rand(2, 1, 8, 8, generator=g)
    m = GradCAMPlusPlus(net, layer="2")  # after the pooling: 4x4 maps
    low = m.cam(x)
    assert low.shape == (2, 4, 4)
    up = F.interpolate(low.unsqueeze(1), size=(8, 8), mode="bilinear", align_corners=False)[:, 0]
    torch.testing.assert_close(m.attribute(x), up)


def test_errors_and_model_state():
    dense = nn.Sequential(nn.Flatten(), nn.Linear(16, 3))
    with pytest.raises(NotApplicableError, match="dense"):
        GradCAMPlusPlus(dense)
    net = _cnn().train()
    with pytest.raises(NotApplicableError, match="image"):
        GradCAMPlusPlus(net).attribute(torch.rand(2, 72))
    with pytest.raises(InvalidInputError, match="NaN"):
        GradCAMPlusPlus(net).attribute(torch.full((1, 2, 6, 6), float("nan")))
    x = torch.rand(2, 2, 6, 6)
    GradCAMPlusPlus(net).attribute(x)
    assert net.training
    assert not net[1]._forward_hooks  # the hook is removed


def test_zoo_cifar_cnn_shapes_determinism_ranges():
    from evax.zoo import load_dataset, load_model

    try:
        model = load_model("cifar10-cnn", progress=False)
        data = load_dataset("cifar10-samples", progress=False)
    except SourceUnreachableError as exc:
        pytest.skip(f"zoo source unreachable: {exc}")
    x = data.images[:3]
    method = GradCAMPlusPlus(model)
    a = method.attribute(x)
    assert a.shape == (3, 32, 32) and torch.isfinite(a).all() and (a >= 0).all()
    assert (a.flatten(1).amax(1) > 0).all()  # not a blank map
    torch.testing.assert_close(method.attribute(x), a)
    torch.testing.assert_close(method.attribute(x[1:2]), a[1:2], rtol=1e-4, atol=1e-5)  # batch independent
    with torch.no_grad():
        other = (model(x).argmax(1) + 1) % 10
    assert not torch.allclose(method.attribute(x, other), a)  # class-specific


@pytest.mark.parametrize("method", ["gradcam", "gradcam++"])
def test_a_one_by_one_cam_layer_warns_that_the_map_is_flat(method):
    import warnings

    from evax.attribution import GradCAM

    torch.manual_seed(0)
    flat = nn.Sequential(nn.Conv2d(2, 3, 6), nn.ReLU(), nn.Flatten(), nn.Linear(3, 4)).eval()
    spatial = _cnn()
    cls = GradCAM if method == "gradcam" else GradCAMPlusPlus
    x = torch.rand(2, 2, 6, 6)
    with pytest.warns(UserWarning, match="1 x 1"):
        cls(flat).attribute(x)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        cls(spatial).attribute(x)
