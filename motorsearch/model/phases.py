"""The stem and the first block on the 2×2×2 phase layout: the same numbers, half the CPU time.

At full resolution the network does little arithmetic per voxel but touches every voxel: the
5×5×5 stem convolution from one input channel (which oneDNN runs at a fraction of a CPU core's
speed: one input channel leaves nothing to vectorise over), then the first block's norm, SiLU
and two 2×2×2 means. On a CPU that prefix took about 60 % of a forward pass (profile in
``benchmarks/REPORT.md``).

The phase layout splits a (B, C, D, H, W) tensor with even sizes into its eight 2×2×2 phases,
(B, 8C, D/2, H/2, W/2), channel ``8c + 4pz + 2py + px`` holding voxels ``(2i + pz, 2j + py,
2k + px)`` of channel ``c``. There:

- a stride-1 convolution with an odd kernel of radius ``r`` (padding ``r``) is a stride-1
  convolution from 8C to 8O channels with a small kernel (3×3×3 for ``r`` = 2) whose taps are
  the original ones rearranged (:func:`phase_conv_weight`), and zero padding stays zero padding:
  exactly the same sums, in another order, with 8 input channels to vectorise over;
- a 2×2×2 mean (``blocks.downsample2`` on even sizes) is the mean over each channel's 8 phases;
- GroupNorm with ``g`` groups is GroupNorm with ``g`` groups on the phase channels (a group holds
  the same voxels), its per-channel affine repeated per phase; SiLU is element-wise.

So :func:`stem_and_first_block` gives what ``block(stem(x))`` gives, to float rounding, and the
full-resolution stem output is never built. ``MotorIdentifier`` takes this path on the CPU when
its first block halves the grid with GroupNorm (every preset); on CUDA the direct convolution
stays until the GPU check (``make gpu-check``) has measured both.
"""

from __future__ import annotations

import itertools
from functools import lru_cache

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from motorsearch.model.blocks import PreActResBlock3d


def to_phases(x: torch.Tensor) -> torch.Tensor:
    """(B, C, D, H, W), even sizes -> (B, 8C, D/2, H/2, W/2); channel ``8c + 4pz + 2py + px``."""
    b, c, d, h, w = x.shape
    phases = x.reshape(b, c, d // 2, 2, h // 2, 2, w // 2, 2).permute(0, 1, 3, 5, 7, 2, 4, 6)
    return phases.reshape(b, 8 * c, d // 2, h // 2, w // 2)


def mean_of_phases(phases: torch.Tensor) -> torch.Tensor:
    """(B, 8C, d, h, w) -> (B, C, d, h, w): the 2×2×2 mean of the full-resolution tensor."""
    b, c8, *size = phases.shape
    return phases.reshape(b, c8 // 8, 8, *size).mean(dim=2)


def phase_conv_weight(weight: torch.Tensor) -> tuple[torch.Tensor, int]:
    """A (O, C, k, k, k) stride-1 kernel (k odd, padding k // 2) as (8O, 8C, k', k', k') on phases,
    and that kernel's padding. Differentiable: the taps are gathered from ``weight``."""
    out_channels, in_channels, size = weight.shape[0], weight.shape[1], weight.shape[2]
    index, padding = _phase_taps(out_channels, in_channels, size)
    taps = torch.cat([weight.reshape(-1), weight.new_zeros(1)])  # the last slot is a tap of 0
    return taps[torch.as_tensor(index, device=weight.device)], padding


def stem_in_phases(x: torch.Tensor, stem: nn.Conv3d) -> torch.Tensor:
    """``to_phases(stem(x))`` without the full-resolution result; ``stem`` stride 1, no bias, same padding."""
    weight, padding = phase_conv_weight(stem.weight)
    return F.conv3d(to_phases(x), weight, padding=padding)


def first_block_on_phases(block: PreActResBlock3d, phases: torch.Tensor) -> torch.Tensor:
    """``block(x)`` given ``to_phases(x)``, for a down-sampling block with GroupNorm first (see
    :func:`applies`); the steps are ``PreActResBlock3d.forward``'s, on phases up to the mean."""
    norm = block.norm1
    shortcut = mean_of_phases(phases)
    y = F.group_norm(phases, norm.num_groups, _per_phase(norm.weight), _per_phase(norm.bias), norm.eps)
    y = block.conv1(mean_of_phases(block.activate(y)))
    y = block.conv2(block.activate(block.norm2(y)))
    return block.skip(shortcut) + block.drop_path(y)


def stem_and_first_block(x: torch.Tensor, stem: nn.Conv3d, block: PreActResBlock3d) -> torch.Tensor:
    """``block(stem(x))`` by way of the phase layout; (B, 1, D, H, W), even sizes."""
    return first_block_on_phases(block, stem_in_phases(x, stem))


def applies(stem: nn.Module, block: nn.Module, x: torch.Tensor) -> bool:
    """Whether :func:`stem_and_first_block` computes ``block(stem(x))``: a CPU tensor with even
    sizes, a bias-free stride-1 stem with an odd cubic kernel and same padding, and a block that
    halves the grid with GroupNorm first."""
    return (x.device.type == "cpu" and all(n % 2 == 0 for n in x.shape[2:])
            and isinstance(stem, nn.Conv3d) and stem.bias is None and stem.stride == (1, 1, 1)
            and stem.dilation == (1, 1, 1) and stem.groups == 1 and len(set(stem.kernel_size)) == 1
            and stem.kernel_size[0] % 2 == 1 and stem.padding == (stem.kernel_size[0] // 2,) * 3
            and isinstance(block, PreActResBlock3d) and block.downsample and isinstance(block.norm1, nn.GroupNorm))


def _per_phase(values: torch.Tensor | None) -> torch.Tensor | None:
    return None if values is None else values.repeat_interleave(8)


@lru_cache(maxsize=8)
def _phase_taps(out_channels: int, in_channels: int, size: int) -> tuple[np.ndarray, int]:
    """Index into ``[weight.flatten(), 0]`` for each tap of the phase kernel, and its padding.

    Along one axis, output phase ``p`` at half-resolution index ``i`` reads full-resolution input
    ``2i + p + t`` for kernel offset ``t`` in [-r, r]; that is phase ``q`` at index ``i + s`` with
    ``2s + q = p + t``, so the phase kernel's offsets ``s`` run from ``floor(-r/2)`` to ``floor((1+r)/2)``.
    """
    radius = size // 2
    low, high = (-radius) // 2, (1 + radius) // 2
    span = high - low + 1
    axis = [(p, q, s - low, t + radius) for p in (0, 1) for t in range(-radius, radius + 1)
            for s, q in [divmod(p + t, 2)]]
    zero = out_channels * in_channels * size ** 3
    index = np.full((out_channels, 2, 2, 2, in_channels, 2, 2, 2, span, span, span), zero, dtype=np.int64)
    o = np.arange(out_channels)[:, None]
    c = np.arange(in_channels)[None, :]
    for (pz, qz, sz, tz), (py, qy, sy, ty), (px, qx, sx, tx) in itertools.product(axis, repeat=3):
        index[:, pz, py, px, :, qz, qy, qx, sz, sy, sx] = ((o * in_channels + c) * size + tz) * size ** 2 + ty * size + tx
    return index.reshape(out_channels * 8, in_channels * 8, span, span, span), -low
