"""Heatmap losses: pure functions of logits and targets, thin modules holding their options.

Every function takes ``logits`` x and ``targets`` y of the same shape, (B, 1, d, h, w) on the
output grid, with y in [0, 1] (a Gaussian heatmap), and returns a float32 scalar. With
p = sigmoid(x), BCE(x, y) = -[y log p + (1 - y) log(1 - p)] per voxel, computed from the logits
(``binary_cross_entropy_with_logits``, ``logsigmoid``) so that saturated logits neither overflow
nor lose precision. All arithmetic runs in float32, also under autocast. "Mean" is over every
voxel of the batch.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from motorsearch.config import LossConfig
from motorsearch.registry import lookup

# |y - p| is floored here before a fractional power: at y == p (a saturated logit against a 0/1
# target) the gradient of |y - p|**g for g < 1 would be infinite and turn into NaN.
_MODULATION_FLOOR = 1e-12


def _as_float32(logits: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    if logits.shape != targets.shape:
        raise ValueError(
            f"logits and targets must have the same shape, but got {tuple(logits.shape)} and {tuple(targets.shape)}."
        )
    return logits.float(), targets.float()


def _modulation(targets: torch.Tensor, probs: torch.Tensor, exponent: float) -> torch.Tensor:
    """|y - p| ** exponent (exactly 1 for exponent 0)."""
    return (targets - probs).abs().clamp_min(_MODULATION_FLOOR).pow(exponent)


def bce_map(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Per-voxel BCE(x, y), same shape as the inputs, float32."""
    logits, targets = _as_float32(logits, targets)
    return F.binary_cross_entropy_with_logits(logits, targets, reduction="none")


def weighted_bce(logits: torch.Tensor, targets: torch.Tensor, *, pos_weight: float) -> torch.Tensor:
    """mean(BCE(x, y) * (1 + pos_weight * y)): voxels near a motor weigh up to 1 + pos_weight."""
    logits, targets = _as_float32(logits, targets)
    return (bce_map(logits, targets) * (1.0 + pos_weight * targets)).mean()


def focal(logits: torch.Tensor, targets: torch.Tensor, *, gamma: float) -> torch.Tensor:
    """mean(BCE(x, y) * |y - p| ** gamma): well-predicted voxels count less; gamma 0 is BCE."""
    logits, targets = _as_float32(logits, targets)
    return (bce_map(logits, targets) * _modulation(targets, torch.sigmoid(logits), gamma)).mean()


def top_k_count(numel: int, fraction: float) -> int:
    """k = max(1, ceil(fraction * numel)), with 1e-9 slack so 0.28 * 25 gives 7, not 8."""
    return min(numel, max(1, math.ceil(fraction * numel - 1e-9)))


def bce_top_k(logits: torch.Tensor, targets: torch.Tensor, *, top_k_fraction: float) -> torch.Tensor:
    """Mean of the k largest per-voxel BCE values, k = :func:`top_k_count` over the whole batch
    (all B·d·h·w voxels pooled, not per patch): the hardest voxels only."""
    losses = bce_map(logits, targets).flatten()
    k = top_k_count(losses.numel(), top_k_fraction)
    return losses.topk(k, sorted=False).values.mean()


def combined_focal(logits: torch.Tensor, targets: torch.Tensor, *, alpha: float, beta: float) -> torch.Tensor:
    """CornerNet-like focal loss for continuous targets, averaged over voxels:

    mean(-[y**beta * |y - p|**alpha * log p + (1 - y)**beta * p**alpha * log(1 - p)]).

    (CornerNet divides the sum by the number of motors instead; a plain mean keeps the scale
    independent of how many motors a batch holds and of empty patches.)
    """
    logits, targets = _as_float32(logits, targets)
    probs = torch.sigmoid(logits)
    positive = targets.pow(beta) * _modulation(targets, probs, alpha) * F.logsigmoid(logits)
    negative = (1.0 - targets).pow(beta) * probs.pow(alpha) * F.logsigmoid(-logits)
    return -(positive + negative).mean()


class _HeatmapLoss(nn.Module):
    """Base of the loss modules: holds options, calls a pure function in float32 without autocast."""

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """logits, targets: (B, 1, d, h, w) -> float32 scalar."""
        with torch.autocast(device_type=logits.device.type, enabled=False):
            return self.compute(logits, targets)

    def compute(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    @classmethod
    def from_config(cls, cfg: LossConfig) -> _HeatmapLoss:
        raise NotImplementedError


def _check_non_negative(**values: float) -> None:
    for name, value in values.items():
        if value < 0:
            raise ValueError(f"`{name}` cannot be negative, but got {name}={value}.")


class WeightedBCELoss(_HeatmapLoss):
    """:func:`weighted_bce` with ``pos_weight`` (``loss.pos_weight``)."""

    def __init__(self, *, pos_weight: float) -> None:
        super().__init__()
        _check_non_negative(pos_weight=pos_weight)
        self.pos_weight = pos_weight

    def compute(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return weighted_bce(logits, targets, pos_weight=self.pos_weight)

    @classmethod
    def from_config(cls, cfg: LossConfig) -> WeightedBCELoss:
        return cls(pos_weight=cfg.pos_weight)

    def extra_repr(self) -> str:
        return f"pos_weight={self.pos_weight}"


class BCELoss(WeightedBCELoss):
    """Plain mean BCE: :func:`weighted_bce` with pos_weight 0; reads no options."""

    def __init__(self) -> None:
        super().__init__(pos_weight=0.0)

    @classmethod
    def from_config(cls, cfg: LossConfig) -> BCELoss:
        return cls()


class FocalLoss(_HeatmapLoss):
    """:func:`focal` with ``gamma`` (``loss.gamma``)."""

    def __init__(self, *, gamma: float) -> None:
        super().__init__()
        _check_non_negative(gamma=gamma)
        self.gamma = gamma

    def compute(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return focal(logits, targets, gamma=self.gamma)

    @classmethod
    def from_config(cls, cfg: LossConfig) -> FocalLoss:
        return cls(gamma=cfg.gamma)

    def extra_repr(self) -> str:
        return f"gamma={self.gamma}"


class TopKBCELoss(_HeatmapLoss):
    """:func:`bce_top_k` with ``top_k_fraction`` (``loss.top_k_fraction``, in (0, 1])."""

    def __init__(self, *, top_k_fraction: float) -> None:
        super().__init__()
        if not 0.0 < top_k_fraction <= 1.0:
            raise ValueError(f"`top_k_fraction` must be in (0, 1], but got top_k_fraction={top_k_fraction}.")
        self.top_k_fraction = top_k_fraction

    def compute(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return bce_top_k(logits, targets, top_k_fraction=self.top_k_fraction)

    @classmethod
    def from_config(cls, cfg: LossConfig) -> TopKBCELoss:
        return cls(top_k_fraction=cfg.top_k_fraction)

    def extra_repr(self) -> str:
        return f"top_k_fraction={self.top_k_fraction}"


class CombinedFocalLoss(_HeatmapLoss):
    """:func:`combined_focal` with ``alpha`` and ``beta`` (``loss.alpha``, ``loss.beta``)."""

    def __init__(self, *, alpha: float, beta: float) -> None:
        super().__init__()
        _check_non_negative(alpha=alpha, beta=beta)
        self.alpha, self.beta = alpha, beta

    def compute(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return combined_focal(logits, targets, alpha=self.alpha, beta=self.beta)

    @classmethod
    def from_config(cls, cfg: LossConfig) -> CombinedFocalLoss:
        return cls(alpha=cfg.alpha, beta=cfg.beta)

    def extra_repr(self) -> str:
        return f"alpha={self.alpha}, beta={self.beta}"


LOSSES: dict[str, type[_HeatmapLoss]] = {
    "weighted_bce": WeightedBCELoss,
    "bce": BCELoss,
    "focal": FocalLoss,
    "bce_topk": TopKBCELoss,
    "combined_focal": CombinedFocalLoss,
}


def build_loss(cfg: LossConfig) -> nn.Module:
    """The loss named by ``cfg.name`` with its own options from ``cfg``; an unknown name raises
    ConfigError naming ``loss.name`` with a did-you-mean suggestion."""
    return lookup(LOSSES, cfg.name, key="loss.name").from_config(cfg)
