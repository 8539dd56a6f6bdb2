"""Warm-up + cosine learning-rate schedule, by hand-worked values."""

import math

import pytest
import torch

from motorsearch.training.schedule import WarmupCosineSchedule, lr_factor, warmup_steps


@pytest.mark.parametrize(
    ("step", "expected"),
    [
        # total 10, warm-up round(0.2 * 10) = 2 steps: 1/2, 2/2
        (0, 0.5),
        (1, 1.0),
        # cosine over steps 2..9, t = (s - 2) / 7, floor m = 0.1: 0.1 + 0.9 * (1 + cos(pi t)) / 2
        (2, 1.0),
        (3, 0.1 + 0.45 * (1 + math.cos(math.pi / 7))),
        (5, 0.1 + 0.45 * (1 + math.cos(3 * math.pi / 7))),
        (9, 0.1),
        (12, 0.1),  # past the end: stays at the floor
    ],
)
def test_lr_factor_values(step, expected):
    assert lr_factor(step, total_steps=10, warmup_fraction=0.2, min_lr_fraction=0.1) == pytest.approx(expected)


def test_cosine_midpoint_is_halfway_between_peak_and_floor():
    # no warm-up, total 11: t = s / 10, the midpoint s = 5 gives (1 + m) / 2
    assert lr_factor(5, total_steps=11, warmup_fraction=0.0, min_lr_fraction=0.2) == pytest.approx(0.6)
    assert lr_factor(0, total_steps=11, warmup_fraction=0.0, min_lr_fraction=0.2) == 1.0


@pytest.mark.parametrize(("total", "fraction", "expected"), [(10, 0.1, 1), (100, 0.05, 5), (7, 0.0, 0), (3, 0.5, 2)])
def test_warmup_steps(total, fraction, expected):
    assert warmup_steps(total, fraction) == expected


def test_single_step_run_uses_the_peak():
    assert lr_factor(0, total_steps=1, warmup_fraction=0.0, min_lr_fraction=0.01) == 1.0


@pytest.mark.parametrize(
    "kwargs",
    [dict(step=-1, total_steps=5), dict(step=0, total_steps=0), dict(step=0, total_steps=5, warmup_fraction=1.0),
     dict(step=0, total_steps=5, min_lr_fraction=1.5)],
)
def test_lr_factor_rejects_bad_arguments(kwargs):
    arguments = dict(warmup_fraction=0.1, min_lr_fraction=0.01) | kwargs
    with pytest.raises(ValueError, match="must|cannot"):
        lr_factor(arguments.pop("step"), **arguments)


def test_schedule_sets_each_group_from_its_own_peak_and_resumes():
    weights = [torch.nn.Parameter(torch.zeros(1)), torch.nn.Parameter(torch.zeros(1))]
    optimizer = torch.optim.SGD([{"params": [weights[0]], "lr": 1.0}, {"params": [weights[1]], "lr": 0.1}])
    schedule = WarmupCosineSchedule(optimizer, total_steps=10, warmup_fraction=0.2, min_lr_fraction=0.1)
    assert [g["lr"] for g in optimizer.param_groups] == pytest.approx([0.5, 0.05])
    for _ in range(3):
        schedule.step()
    expected = 0.1 + 0.45 * (1 + math.cos(math.pi / 7))
    assert [g["lr"] for g in optimizer.param_groups] == pytest.approx([expected, 0.1 * expected])

    state = schedule.state_dict()
    fresh_optimizer = torch.optim.SGD([{"params": [weights[0]], "lr": 1.0}, {"params": [weights[1]], "lr": 0.1}])
    fresh = WarmupCosineSchedule(fresh_optimizer, total_steps=10, warmup_fraction=0.2, min_lr_fraction=0.1)
    fresh.load_state_dict(state)
    assert [g["lr"] for g in fresh_optimizer.param_groups] == pytest.approx([expected, 0.1 * expected])


def test_resumed_schedule_keeps_the_new_peak():
    """Population-based training changes lr between epochs: the step resumes, the peak is the new one."""
    weight = torch.nn.Parameter(torch.zeros(1))
    first = WarmupCosineSchedule(torch.optim.SGD([weight], lr=1.0), total_steps=10, warmup_fraction=0.0,
                                 min_lr_fraction=0.0)
    for _ in range(5):
        first.step()
    optimizer = torch.optim.SGD([weight], lr=3.0)
    second = WarmupCosineSchedule(optimizer, total_steps=10, warmup_fraction=0.0, min_lr_fraction=0.0)
    second.load_state_dict(first.state_dict())
    assert optimizer.param_groups[0]["lr"] == pytest.approx(3.0 * 0.5 * (1 + math.cos(math.pi * 5 / 9)))
