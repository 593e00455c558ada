"""The graph builder understands every argument of a traced call or refuses it.

Each test of the first block reproduces a way in which an earlier version gave false bounds
(and false ``certified_robust``) on an ordinary PyTorch idiom.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import evax
from bounds.nets import METHODS
from evax.bounds.ops.base import ElementwiseOp
from evax.bounds.ops.registry import registered_ops, supported_layers
from evax.errors import UnsupportedLayerError


def _x(n: int = 3, d: int = 6, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, d, generator=torch.Generator().manual_seed(seed))


def assert_contains(model: nn.Module, ball: evax.Ball, methods=METHODS, certify: bool = False) -> None:
    """Sampled outputs (corners included) lie inside the bounds of every method."""
    pts = ball.sample(400, generator=torch.Generator().manual_seed(1))
    dtype = torch.float64 if certify else torch.float32
    with torch.no_grad():
        out = model.to(dtype)(pts.reshape(-1, *ball.shape).to(dtype)).reshape(400, ball.batch_size, -1)
    model.float()
    for method in methods:
        b = evax.bound(model, ball, method, certify=certify)
        tol = 1e-4 * (1 + out.abs())
        assert (b.lower <= b.upper).all(), method
        assert ((out >= b.lower - tol) & (out <= b.upper + tol)).all(), method


class SubAlpha(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(6, 3)

    def forward(self, x):
        return torch.sub(self.fc(x), 1.0, alpha=100.0)


class AddAlphaNodes(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(6, 3), nn.Linear(6, 3)

    def forward(self, x):
        return torch.add(self.a(x), torch.relu(self.b(x)), alpha=-3.0)


@pytest.mark.parametrize("model_cls", [SubAlpha, AddAlphaNodes])
def test_alpha_of_add_and_sub_is_applied(model_cls):
    torch.manual_seed(0)
    model = model_cls().eval()
    assert_contains(model, evax.Ball(_x(), 0.05))


def test_alpha_sub_does_not_certify_a_changing_class():
    torch.manual_seed(0)
    model = SubAlpha().eval()
    x = _x(1)
    b = evax.bound(model, evax.Ball(x, 1e-6), "backward")
    with torch.no_grad():
        y = model(x)
    torch.testing.assert_close(b.upper, y, atol=1e-3, rtol=1e-3)  # about -100, not -1


class FunctionalLeaky(nn.Module):
    def __init__(self, slope: float) -> None:
        super().__init__()
        self.slope = slope
        self.fc1, self.fc2 = nn.Linear(6, 8), nn.Linear(8, 3)

    def forward(self, x):
        return self.fc2(F.leaky_relu(self.fc1(x), self.slope))


@pytest.mark.parametrize("slope", [4.0, 1.5, 1.0, -0.5, -2.0, 0.01])
def test_leaky_relu_of_any_slope_is_sound(slope):
    torch.manual_seed(1)
    model = FunctionalLeaky(slope).eval()
    assert_contains(model, evax.Ball(_x(), 0.3))
    assert_contains(model, evax.Ball(_x(), 0.3), ["exact"])


@pytest.mark.parametrize("slope", [4.0, -0.5])
def test_leaky_relu_module_of_any_slope_is_sound(slope):
    torch.manual_seed(2)
    model = nn.Sequential(nn.Linear(6, 8), nn.LeakyReLU(slope), nn.Linear(8, 3)).eval()
    assert_contains(model, evax.Ball(_x(), 0.3))


def test_replaced_submodule_is_seen():
    torch.manual_seed(3)
    model = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3)).eval()
    ball = evax.Ball(_x(), 0.2)
    evax.bound(model, ball, "backward")
    model[1] = nn.Tanh()
    assert_contains(model, ball)


class Scaled(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(6, 3)
        self.gain = 1.0

    def forward(self, x):
        return self.fc(x) * self.gain


def test_python_attribute_read_in_forward_is_seen():
    torch.manual_seed(4)
    model = Scaled().eval()
    ball = evax.Ball(_x(), 0.1)
    evax.bound(model, ball, "ibp")
    model.gain = -7.0
    assert_contains(model, ball)


def test_weights_changed_through_data_are_seen_in_certify_mode():
    torch.manual_seed(5)
    model = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3)).eval()
    ball = evax.Ball(_x(), 0.1)
    evax.bound(model, ball, "ibp+forward+backward", certify=True)
    model[0].weight.data.mul_(10)
    model[2].bias.data.add_(5)
    assert_contains(model, ball, ["ibp", "backward", "ibp+forward+backward"], certify=True)


class TrainingDropout(nn.Module):
    def __init__(self, training) -> None:
        super().__init__()
        self.fc = nn.Linear(6, 3)
        self.flag = training

    def forward(self, x):
        if self.flag == "default":
            return F.dropout(self.fc(x), 0.5)  # training=True by default
        if self.flag == "module":
            return F.dropout(self.fc(x), 0.5, training=self.training)
        return F.dropout(self.fc(x), 0.5, training=self.flag)


@pytest.mark.parametrize("flag", [True, "default"])
def test_dropout_in_training_form_is_rejected(flag):
    with pytest.raises(UnsupportedLayerError, match="dropout"):
        evax.bound(TrainingDropout(flag).eval(), evax.Ball(_x(), 0.1), "ibp")


@pytest.mark.parametrize("flag", [False, "module"])
def test_dropout_in_eval_form_is_the_identity(flag):
    torch.manual_seed(6)
    model = TrainingDropout(flag).eval()
    x = _x()
    b = evax.bound(model, evax.Ball(x, 1e-6), "ibp")
    torch.testing.assert_close(b.lower, model.fc(x).detach(), atol=1e-4, rtol=1e-4)


# -- arguments the engine does not understand ---------------------------------------------------
class Lambda(nn.Module):
    def __init__(self, fn) -> None:
        super().__init__()
        self.fc = nn.Linear(6, 4)
        self.fn = fn

    def forward(self, x):
        return self.fn(self.fc(x))


@pytest.mark.parametrize(
    ("fn", "match"),
    [
        (lambda h: torch.div(h, 2.0, rounding_mode="floor"), "rounding_mode"),
        (lambda h: h + torch.randn(4), "random|reproduce"),  # drawn at trace time: caught by the self-check
        (lambda h: h * torch.rand_like(h), "random"),
        (lambda h: h.reshape(2, -1), "batch"),
        (lambda h: h * h, "two input-dependent"),
        (lambda h: h / torch.zeros(4), "zero"),
        (lambda h: torch.cat([h, torch.ones(2, 4)], dim=1), "depend on the input"),
        (lambda h: h.view(torch.int32), "dtype"),
        (lambda h: torch.mean(h, dim=0, keepdim=True).expand(h.shape[0], -1), "batch"),
        (lambda h: torch.sigmoid(h).exp(), "exp"),
    ],
)
def test_not_understood_calls_are_refused_with_the_argument_named(fn, match):
    with pytest.raises(UnsupportedLayerError, match=match):
        evax.bound(Lambda(fn).eval(), evax.Ball(_x(), 0.1), "ibp")


class InplaceAliased(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc, self.head = nn.Linear(6, 4), nn.Linear(4, 2)

    def forward(self, x):
        h = self.fc(x)
        y = h.relu_()  # h is overwritten: h + y == 2 relu(h)
        return self.head(h + y)


class InplaceViewAliased(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc, self.head = nn.Linear(6, 4), nn.Linear(4, 2)

    def forward(self, x):
        h = self.fc(x)
        v = h.view(h.shape[0], 2, 2)
        F.relu(v, inplace=True)  # writes through the view into h
        return self.head(h)


@pytest.mark.parametrize("model_cls", [InplaceAliased, InplaceViewAliased])
def test_inplace_op_on_a_tensor_read_elsewhere_is_refused(model_cls):
    with pytest.raises(UnsupportedLayerError, match="in-place"):
        evax.bound(model_cls().eval(), evax.Ball(_x(), 0.1), "ibp")


def test_inplace_relu_on_a_single_use_tensor_is_accepted():
    torch.manual_seed(7)
    model = nn.Sequential(nn.Linear(6, 8), nn.ReLU(inplace=True), nn.Linear(8, 3)).eval()
    assert_contains(model, evax.Ball(_x(), 0.2))


class SubclassedReLU(nn.ReLU):
    """A user subclass that changes forward: torch.fx traces into it (not a torch.nn leaf)."""

    def forward(self, x):
        return torch.relu(x) * 3.0 - 1.0


def test_user_subclass_of_a_registered_module_follows_its_own_forward():
    torch.manual_seed(8)
    model = nn.Sequential(nn.Linear(6, 8), SubclassedReLU(), nn.Linear(8, 3)).eval()
    assert_contains(model, evax.Ball(_x(), 0.2))


def test_unsupported_module_message_lists_the_registry():
    model = nn.Sequential(nn.Linear(6, 4), nn.Softsign()).eval()
    with pytest.raises(UnsupportedLayerError, match=r"'1'.*Softsign.*ReLU"):
        evax.bound(model, evax.Ball(_x(), 0.1), "ibp")


# -- the registry ---------------------------------------------------------------------------------
def test_supported_layers_lists_every_registered_op():
    text = supported_layers()
    for cls in registered_ops():
        assert cls.registry_doc in text
    for name in ("nn.ReLU", "nn.Conv2d", "torch.reshape", "torch.permute", "torch.cat", "F.pad"):
        assert name in text


def test_non_monotone_elementwise_op_must_define_its_interval():
    with pytest.raises(TypeError, match="monotone"):

        class Wobble(ElementwiseOp):  # noqa: F841 - class creation is the test
            def evaluate(self, x):
                return torch.sin(x)

            def relax(self, lower, upper):
                raise NotImplementedError


def test_readme_lists_the_registry():
    """The README's layer list is the registry's (regenerate: python -m evax.bounds.ops --write README.md)."""
    from pathlib import Path

    from evax.bounds.ops.__main__ import END, START
    from evax.bounds.ops.registry import supported_markdown

    readme = (Path(__file__).parents[2] / "README.md").read_text()
    block = readme.split(START, 1)[1].split(END, 1)[0].strip("\n")
    assert block == supported_markdown(), "run: python -m evax.bounds.ops --write README.md"


class RoundTripLayout(nn.Module):
    """NCHW -> NHWC -> NCHW, as an NHWC wrapper around a tf2onnx conv export does."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 3, 3)
        self.head = nn.Linear(3 * 4 * 4, 2)

    def forward(self, x):
        h = x.permute(0, 2, 3, 1)
        h = torch.transpose(torch.transpose(h, 1, 3), 2, 3)  # back to NCHW in two steps
        return self.head(torch.relu(self.conv(h)).reshape(x.shape[0], -1))


def test_permutations_that_compose_to_the_identity_vanish_from_the_graph():
    from evax.bounds.api import get_graph
    from evax.bounds.ops.shape import Permute

    torch.manual_seed(9)
    model = RoundTripLayout().eval()
    graph = get_graph(model, (2, 6, 6), torch.device("cpu"), torch.float32)
    assert not any(isinstance(node.op, Permute) for node in graph.nodes[1:])
    assert graph.nodes[graph.nodes[1].inputs[0]].op is None  # the conv reads the input directly
    assert_contains(model, evax.Ball(torch.rand(2, 2, 6, 6), 0.1))


def test_ball_of_the_wrong_layout_for_a_channels_last_wrapper_is_refused():
    from evax.errors import InvalidInputError
    from evax.zoo.layers import ChannelsLast

    torch.manual_seed(10)
    inner = nn.Sequential(nn.Flatten(), nn.Linear(4 * 4 * 3, 2)).eval()
    model = ChannelsLast(inner, nhwc_shape=(4, 4, 3))
    with pytest.raises(InvalidInputError, match=r"\(3, 4, 4\).*NCHW"):
        evax.bound(model, evax.Ball(torch.rand(2, 4, 4, 3), 0.1), "ibp")
    assert_contains(model, evax.Ball(torch.rand(2, 3, 4, 4), 0.1))
