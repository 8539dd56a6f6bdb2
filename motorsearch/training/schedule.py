"""Learning-rate schedule: linear warm-up, then cosine decay to a floor, per optimizer step.

``lr_factor`` is the pure function (tested by value); ``WarmupCosineSchedule`` applies it to an
optimizer's parameter groups and checkpoints its position.

With ``W = round(warmup_fraction * total_steps)`` warm-up steps, the factor multiplying each
group's peak learning rate for optimizer step ``s`` (0-based, the step about to be taken) is::

    s < W:   (s + 1) / W                                   (reaches 1 on the last warm-up step)
    s >= W:  m + (1 - m) * (1 + cos(pi * t)) / 2,  t = (s - W) / max(1, total_steps - W - 1)

with ``m = min_lr_fraction``: 1 on the first step after warm-up, exactly ``m`` on the last step.
Steps past ``total_steps`` stay at ``m``.
"""

from __future__ import annotations

import math
from typing import Any

import torch


def warmup_steps(total_steps: int, warmup_fraction: float) -> int:
    """``round(warmup_fraction * total_steps)`` optimizer steps of linear warm-up."""
    return int(round(warmup_fraction * total_steps))


def lr_factor(step: int, *, total_steps: int, warmup_fraction: float, min_lr_fraction: float) -> float:
    """Multiplier of the peak learning rate for optimizer step ``step`` (0-based); see the module docstring."""
    if total_steps < 1:
        raise ValueError(f"`total_steps` must be at least 1, but got total_steps={total_steps}.")
    if step < 0:
        raise ValueError(f"`step` cannot be negative, but got step={step}.")
    if not 0 <= warmup_fraction < 1:
        raise ValueError(f"`warmup_fraction` must be in [0, 1), but got warmup_fraction={warmup_fraction}.")
    if not 0 <= min_lr_fraction <= 1:
        raise ValueError(f"`min_lr_fraction` must be in [0, 1], but got min_lr_fraction={min_lr_fraction}.")
    warmup = warmup_steps(total_steps, warmup_fraction)
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total_steps - warmup - 1))
    return min_lr_fraction + (1.0 - min_lr_fraction) * 0.5 * (1.0 + math.cos(math.pi * progress))


class WarmupCosineSchedule:
    """Sets every parameter group's ``lr`` to ``peak_lr * lr_factor(step)`` before each optimizer step.

    The peak of each group is its ``lr`` when the schedule is made. Call :meth:`step` after each
    ``optimizer.step()``. ``state_dict`` holds only plain numbers, so a checkpoint stays loadable
    with ``torch.load(weights_only=True)``.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, *, total_steps: int, warmup_fraction: float,
                 min_lr_fraction: float):
        self.optimizer = optimizer
        self.total_steps = int(total_steps)
        self.warmup_fraction = float(warmup_fraction)
        self.min_lr_fraction = float(min_lr_fraction)
        self.peak_lrs = [float(group["lr"]) for group in optimizer.param_groups]
        self.step_count = 0
        lr_factor(0, total_steps=self.total_steps, warmup_fraction=self.warmup_fraction,
                  min_lr_fraction=self.min_lr_fraction)  # checks the arguments
        self._apply()

    def factor(self) -> float:
        return lr_factor(self.step_count, total_steps=self.total_steps, warmup_fraction=self.warmup_fraction,
                         min_lr_fraction=self.min_lr_fraction)

    def step(self) -> None:
        """Move to the next optimizer step and set its learning rates."""
        self.step_count += 1
        self._apply()

    def _apply(self) -> None:
        factor = self.factor()
        for group, peak in zip(self.optimizer.param_groups, self.peak_lrs, strict=True):
            group["lr"] = peak * factor

    def state_dict(self) -> dict[str, Any]:
        return {"step_count": self.step_count, "total_steps": self.total_steps, "peak_lrs": list(self.peak_lrs),
                "warmup_fraction": self.warmup_fraction, "min_lr_fraction": self.min_lr_fraction}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue at the saved step. The peak rates and the schedule's shape stay those given at
        construction (the current config), so a resumed run may change them on purpose, as
        population-based training does; with the same config the run continues exactly."""
        self.step_count = int(state["step_count"])
        self._apply()
