"""``evax.bound(..., differentiable=True)``: the bound as a function of the live parameters."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import evax
from bounds.nets import ALL, make
from evax.errors import InvalidInputError

DIFF_METHODS = ["ibp", "crown-ibp"]


def _ball(n: int = 3, seed: int = 0, eps: float = 0.05, dtype=torch.float32) -> evax.Ball:
    gen = torch.Generator().manual_seed(seed)
    return evax.Ball(torch.rand(n, 2, 6, 6, generator=gen, dtype=dtype), eps, domain=(0.0, 1.0))


def _margins(model: nn.Module, n: int, dtype=torch.float32) -> torch.Tensor:
    """``(n, K - 1, K)`` rows ``e_0 - e_j`` (a margin specification as certified training uses)."""
    k = model(torch.zeros(1, 2, 6, 6, dtype=dtype)).shape[1]
    eye = torch.eye(k, dtype=dtype)
    return (eye[0] - eye[1:]).expand(n, -1, -1)


def _used_parameters(model: nn.Module) -> list[tuple[str, nn.Parameter]]:
    """Parameters the model's output depends on (a loss of the plain forward pass reaches)."""
    model.zero_grad(set_to_none=True)
    out = model(torch.rand(4, 2, 6, 6, generator=torch.Generator().manual_seed(1)))
    if not out.requires_grad:
        return []
    out.square().sum().backward()
    used = [(name, p) for name, p in model.named_parameters() if p.grad is not None]
    model.zero_grad(set_to_none=True)
    return used


@pytest.mark.parametrize("method", DIFF_METHODS)
@pytest.mark.parametrize("name", ALL)
def test_gradients_reach_every_parameter_and_values_are_unchanged(name: str, method: str) -> None:
    model = make(name)
    ball = _ball()
    spec = _margins(model, ball.batch_size)
    plain = evax.bound(model, ball, method=method, spec=spec)
    live = evax.bound(model, ball, method=method, spec=spec, differentiable=True)
    assert not plain.lower.requires_grad
    torch.testing.assert_close(live.lower, plain.lower, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(live.upper, plain.upper, rtol=1e-5, atol=1e-5)
    used = _used_parameters(model)
    if not used:  # a parameter-free net (pooling only): nothing to differentiate
        return
    assert live.lower.requires_grad and live.upper.requires_grad
    (live.upper - live.lower).sum().backward()
    missing = [n for n, p in used if p.grad is None or not torch.isfinite(p.grad).all()]
    assert not missing, f"no (finite) gradient for {missing}"
    assert any(float(p.grad.abs().sum()) > 0 for _, p in used)


@pytest.mark.parametrize("method", DIFF_METHODS)
def test_gradient_matches_finite_differences_on_a_tiny_float64_net(method: str) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(2, 3, 3, stride=2), nn.ReLU(), nn.Flatten(), nn.Linear(12, 6), nn.ReLU(),
        nn.Linear(6, 3),
    ).double().eval()
    ball = _ball(n=2, eps=0.08, dtype=torch.float64)
    spec = _margins(model, 2, torch.float64)
    names = [n for n, _ in model.named_parameters()]
    params = tuple(p.detach().clone().requires_grad_(True) for p in model.parameters())

    def lower_bounds(*values: torch.Tensor) -> torch.Tensor:
        state = dict(zip(names, values, strict=True))
        with torch.nn.utils.stateless._reparametrize_module(model, state):
            return evax.bound(model, ball, method=method, spec=spec, differentiable=True).lower

    base = lower_bounds(*params)
    assert torch.isfinite(base).all()
    assert torch.autograd.gradcheck(lower_bounds, params, eps=1e-6, atol=1e-5, rtol=1e-4)


def test_differentiable_works_with_certify_and_side() -> None:
    model = make("mlp_relu")
    ball = _ball()
    spec = _margins(model, ball.batch_size)
    plain = evax.bound(model, ball, method="crown-ibp", spec=spec, certify=True, side="lower")
    live = evax.bound(model, ball, method="crown-ibp", spec=spec, certify=True, side="lower",
                      differentiable=True)
    torch.testing.assert_close(live.lower, plain.lower)
    live.lower.sum().backward()
    assert all(p.grad is not None for p in model.parameters())


def test_default_path_keeps_no_history_of_the_parameters() -> None:
    model = make("conv_maxpool")
    b = evax.bound(model, _ball(), method="crown-ibp")
    assert not b.lower.requires_grad and not b.upper.requires_grad


@pytest.mark.parametrize("method", ["alpha-crown", "exact", "backward", "ibp+backward", "forward"])
def test_unsupported_methods_raise_a_clear_error(method: str) -> None:
    model = make("mlp_relu")
    with pytest.raises(InvalidInputError, match="differentiable=True supports methods"):
        evax.bound(model, _ball(), method=method, differentiable=True)


def test_differentiable_must_be_a_bool() -> None:
    with pytest.raises(InvalidInputError, match="differentiable must be True or False"):
        evax.bound(make("mlp_relu"), _ball(), method="ibp", differentiable=1)
