"""The learning-rate schedule: warm-up, constant, then a linear fall to zero over the run's last steps, as a
function of the step alone (so a resumed or extended run follows it)."""

from __future__ import annotations

import pytest
import torch

from pipelines.training.config import OptimizerSettings
from pipelines.training.engine import lr_factor, lr_schedule


def test_warmup_then_constant_then_linear_decay():
    factors = [lr_factor(step, warmup_steps=4, decay_steps=10, max_steps=30) for step in range(30)]
    assert factors[:4] == [0.25, 0.5, 0.75, 1.0]
    assert factors[4:20] == [1.0] * 16
    assert factors[20:] == pytest.approx([(30 - step) / 10 for step in range(20, 30)])
    assert factors[-1] == pytest.approx(0.1)  # the last step still moves


def test_no_decay_keeps_the_rate_after_warmup():
    assert [lr_factor(step, 0, 0, 5) for step in range(5)] == [1.0] * 5


def test_the_scheduler_steps_the_optimizer_through_the_schedule():
    parameter = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([parameter], lr=2.0)
    scheduler = lr_schedule(OptimizerSettings(lr=2.0, warmup_steps=2, decay_steps=2), max_steps=6)(optimizer)
    rates = []
    for _ in range(6):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert rates == pytest.approx([1.0, 2.0, 2.0, 2.0, 2.0, 1.0])
