"""MotorEnsemble: several MotorIdentifiers whose heatmaps are averaged.

``forward`` returns the logit of the mean of the members' probabilities, so everything that takes
a MotorIdentifier's logits (sliding windows, TTA, validation, ``predict``) takes an ensemble
unchanged: ``sigmoid(ensemble(x))`` is the members' average heatmap. Members must share the output
stride (the model file checks their preprocessing before building one).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

# logit(p) is infinite at p = 0 or 1: probabilities are kept this far from them (float32)
PROBABILITY_EPS = 1e-7


class MotorEnsemble(nn.Module):
    """The average heatmap of ``members`` (each maps (B, 1, D, H, W) to logits on the same grid)."""

    def __init__(self, members: Sequence[nn.Module]):
        super().__init__()
        if not members:
            raise ValueError("an ensemble needs at least one member.")
        self.members = nn.ModuleList(members)
        self.architecture = {"members": [dict(getattr(m, "architecture", {}) or {}) for m in members]}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean = torch.stack([torch.sigmoid(member(x).float()) for member in self.members]).mean(dim=0)
        return torch.logit(mean, eps=PROBABILITY_EPS)
