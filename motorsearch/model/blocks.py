"""Reusable 3D building blocks of MotorIdentifier: normalisation, squeeze-excitation, residual blocks.

Every block takes and returns (B, C, D, H, W) tensors, axes (z, y, x). Normalisation layers are
chosen by MONAI name (``norm="group"``, ``"instance"``, ``"batch"``); group counts are derived
from the channel count so that they always divide it.

Down-sampling and the output-grid convention
--------------------------------------------
``motorsearch.data.targets`` centres output voxel ``i`` of a stride-``s`` grid at input coordinate
``s*i + (s - 1)/2``. A 3×3×3 convolution with stride 2 and padding 1 centres its output ``j`` at
``2j`` instead of ``2j + 0.5``; chained over four stages that drifts by 7.5 input voxels, half an
output voxel at stride 16, and by a different amount at every scale, so scales fused in the neck
would disagree. :class:`PreActResBlock3d` therefore down-samples with a 2×2×2 average pool (centre
``2j + 0.5``, exact) followed by the block's 3×3×3 convolution at stride 1. That is a stride-2
convolution with a 6-tap (pairwise-tied) kernel: same parameters and multiply-adds as the 3×3×3
stride-2 convolution, anti-aliased, and every level ``L`` keeps its voxel ``j`` centred at
``2**L * j + (2**L - 1)/2``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from monai.networks.blocks import ChannelSELayer
from monai.networks.layers import DropPath, get_norm_layer
from torch import nn


def group_count(channels: int, *, channels_per_group: int = 8, max_groups: int = 32) -> int:
    """Number of GroupNorm groups for ``channels``: the divisor of ``channels`` (at most
    ``max_groups``) closest to ``channels / channels_per_group``; ties go to more groups.

    >>> [group_count(c) for c in (4, 10, 16, 48, 112, 256, 257)]
    [1, 1, 2, 6, 14, 32, 1]
    """
    if channels < 1:
        raise ValueError(f"`channels` must be at least 1, but got channels={channels}.")
    target = channels / channels_per_group
    divisors = [g for g in range(1, min(channels, max_groups) + 1) if channels % g == 0]
    return min(divisors, key=lambda g: (abs(g - target), -g))


def make_norm(name: str, channels: int) -> nn.Module:
    """A 3D normalisation layer by MONAI name; "group" gets :func:`group_count` groups."""
    if name.lower() == "group":
        return get_norm_layer(("group", {"num_groups": group_count(channels)}), spatial_dims=3, channels=channels)
    return get_norm_layer(name, spatial_dims=3, channels=channels)


def make_squeeze_excitation(channels: int) -> nn.Module:
    """Channel squeeze-excitation (MONAI ``ChannelSELayer``), hidden width ``max(1, channels // 4)``.

    (B, C, D, H, W) -> (B, C, D, H, W): each channel scaled by a gate in (0, 1) computed from the
    channel means.
    """
    reduction = 4 if channels >= 4 else channels
    return ChannelSELayer(spatial_dims=3, in_channels=channels, r=reduction, acti_type_1="relu")


def downsample2(x: torch.Tensor) -> torch.Tensor:
    """2×2×2 mean: (B, C, D, H, W) -> (B, C, ceil(D/2), ceil(H/2), ceil(W/2)).

    Output voxel ``j`` is centred at input coordinate ``2j + 0.5``. An odd size is first padded
    at its far end by repeating the last voxel, so the last output voxel is that voxel itself and
    the grid origin never moves.
    """
    odd = [n % 2 for n in reversed(x.shape[2:])]  # F.pad lists axes last first: x, y, z
    if any(odd):
        x = F.pad(x, [side for n in odd for side in (0, n)], mode="replicate")
    return F.avg_pool3d(x, kernel_size=2, stride=2)


class PreActResBlock3d(nn.Module):
    """Pre-activation residual block: x + DropPath(conv(act(norm(conv(act(norm(x))))))).

    Residual branch: norm -> SiLU -> [2×2×2 mean if ``downsample``] -> 3×3×3 conv (in -> out)
    -> norm -> SiLU -> 3×3×3 conv (out -> out); convolutions without bias. The skip is the
    identity, or [2×2×2 mean] -> 1×1×1 conv -> norm when the shape changes.

    Args:
        in_channels: C_in.
        out_channels: C_out.
        downsample: halve every spatial size (rounding up); see the module docstring for why this
            is a mean followed by a stride-1 convolution.
        drop_path: probability of dropping the residual branch per sample while training.
        norm: MONAI normalisation name.

    Shapes: (B, C_in, D, H, W) -> (B, C_out, D', H', W') with D' = ceil(D/2) if ``downsample`` else D.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        *,
        downsample: bool = False,
        drop_path: float = 0.0,
        norm: str = "group",
    ) -> None:
        super().__init__()
        if not 0.0 <= drop_path < 1.0:
            raise ValueError(f"`drop_path` must be in [0, 1), but got drop_path={drop_path}.")
        self.downsample = downsample
        self.norm1 = make_norm(norm, in_channels)
        self.conv1 = nn.Conv3d(in_channels, out_channels, kernel_size=3, padding=1, bias=False)
        self.norm2 = make_norm(norm, out_channels)
        self.conv2 = nn.Conv3d(out_channels, out_channels, kernel_size=3, padding=1, bias=False)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.skip: nn.Module = nn.Identity()
        if downsample or in_channels != out_channels:
            self.skip = nn.Sequential(
                nn.Conv3d(in_channels, out_channels, kernel_size=1, bias=False), make_norm(norm, out_channels)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C_in, D, H, W) -> (B, C_out, D', H', W')."""
        shortcut = downsample2(x) if self.downsample else x
        y = self.activate(self.norm1(x))
        if self.downsample:
            y = downsample2(y)
        y = self.conv1(y)
        y = self.conv2(self.activate(self.norm2(y)))
        return self.skip(shortcut) + self.drop_path(y)

    def activate(self, normed: torch.Tensor) -> torch.Tensor:
        """SiLU of a norm's fresh output, in place when no gradient is recorded: on a CPU a new
        large tensor costs more (page faults) than the SiLU itself."""
        return F.silu(normed, inplace=not torch.is_grad_enabled())
