"""The transposed convolution of CROWN's backward passes equals ``F.conv_transpose2d`` on every
path (GEMM + col2im for few input channels, channels-last oneDNN, the plain fallback)."""

from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as F

from evax.bounds.ops._transposed_conv import SMALL_INPUT_CHANNELS, TransposedConv

CASES = [
    (c_in, k, pad, dil)
    for c_in, k, pad, dil in itertools.product(
        [1, 3, SMALL_INPUT_CHANNELS + 1], [(1, 1), (3, 3), (3, 2)], [(0, 0), (1, 1), (2, 1)], [(1, 1), (2, 1)]
    )
    if all(p <= d * (q - 1) for p, d, q in zip(pad, dil, k, strict=True))
]


@pytest.mark.parametrize("c_in, kernel, padding, dilation", CASES)
@pytest.mark.parametrize("channels_last", [False, True])
def test_equals_conv_transpose2d(c_in, kernel, padding, dilation, channels_last):
    g = torch.Generator().manual_seed(0)
    weight = torch.randn(5, c_in, *kernel, generator=g, dtype=torch.float64)
    lam = torch.randn(6, 5, 4, 7, generator=g, dtype=torch.float64)
    if channels_last:
        lam = lam.contiguous(memory_format=torch.channels_last)
    before = lam.clone()
    out = TransposedConv(weight, (1, 1), padding, dilation, 1)(lam)
    ref = F.conv_transpose2d(lam.contiguous(), weight, None, 1, padding, 0, 1, dilation)
    assert out.shape == ref.shape
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-10)
    assert torch.equal(lam, before)  # the multipliers are not modified


@pytest.mark.parametrize("stride, groups, output_padding", [((2, 2), 1, (1, 0)), ((1, 1), 2, (0, 0)), ((2, 1), 2, (0, 0))])
def test_strided_and_grouped_fall_back_to_oneDNN(stride, groups, output_padding):
    g = torch.Generator().manual_seed(1)
    weight = torch.randn(4, 2, 3, 3, generator=g, dtype=torch.float64)
    lam = torch.randn(3, 4, 5, 5, generator=g, dtype=torch.float64)
    out = TransposedConv(weight, stride, (1, 1), (1, 1), groups)(lam, output_padding)
    ref = F.conv_transpose2d(lam, weight, None, stride, (1, 1), output_padding, groups, (1, 1))
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-10)


def test_gradients_flow_on_the_reference_path():
    """Certified training differentiates through the transpose: autograd takes the plain op."""
    weight = torch.randn(3, 1, 3, 3, dtype=torch.float64, requires_grad=True)
    lam = torch.randn(2, 3, 4, 4, dtype=torch.float64)
    out = TransposedConv(weight, (1, 1), (0, 0), (1, 1), 1)(lam)
    out.sum().backward()
    assert weight.grad is not None and torch.isfinite(weight.grad).all()


def test_weight_layouts_follow_a_new_weight():
    """Moving the op (``Op.to``) replaces its weight: the cached layouts must follow."""
    t = TransposedConv(torch.ones(2, 1, 3, 3), (1, 1), (0, 0), (1, 1), 1)
    lam = torch.randn(1, 2, 3, 3)
    first = t(lam)
    t.weight = 2 * torch.ones(2, 1, 3, 3)
    torch.testing.assert_close(t(lam), 2 * first)
