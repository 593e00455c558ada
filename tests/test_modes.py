"""evax.core.modes.eval_mode: eval inside the block, every submodule's own mode restored after."""

from __future__ import annotations

import pytest
from torch import nn

from evax.core.modes import eval_mode


def test_mixed_modes_are_restored_module_by_module():
    model = nn.Sequential(nn.Linear(2, 2), nn.Dropout(0.5), nn.BatchNorm1d(2))
    model.train()
    model[2].eval()  # a frozen BatchNorm inside a training model
    with eval_mode(model):
        assert not any(m.training for m in model.modules())
    assert model.training and model[1].training and not model[2].training


def test_modes_are_restored_when_the_block_raises():
    model = nn.Sequential(nn.Linear(2, 2)).train()
    with pytest.raises(RuntimeError), eval_mode(model):
        raise RuntimeError("boom")
    assert model.training and model[0].training
