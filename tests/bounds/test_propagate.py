"""Internal helpers of the propagation engine that the public tests only reach indirectly."""

from __future__ import annotations

import pytest
import torch

from evax.bounds.propagate import _block_box_spread, shared_rows_matmul


@pytest.mark.parametrize("boxes", [1, 3])
def test_block_box_spread_is_the_per_box_weighted_l1_norm(boxes):
    gen = torch.Generator().manual_seed(0)
    coeffs = torch.randn(boxes * 4, 10, generator=gen, dtype=torch.float64)
    radius = torch.rand(boxes, 10, generator=gen, dtype=torch.float64)
    expected = torch.stack([coeffs.view(boxes, 4, 10)[b].abs() @ radius[b] for b in range(boxes)])
    torch.testing.assert_close(_block_box_spread(coeffs.clone(), radius), expected)


def test_shared_rows_matmul_computes_a_broadcast_row_once():
    w = torch.randn(6, 3, dtype=torch.float64)
    row = torch.randn(1, 6, dtype=torch.float64)
    shared = shared_rows_matmul(row.expand(5, -1), w)
    assert shared.stride(0) == 0  # one product, expanded
    torch.testing.assert_close(shared, row.expand(5, -1).clone() @ w)
    plain = torch.randn(5, 6, dtype=torch.float64)
    torch.testing.assert_close(shared_rows_matmul(plain, w), plain @ w)
