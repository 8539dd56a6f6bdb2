"""MotorIdentifier: a 3D feature pyramid network that maps a tomogram patch to motor logits.

Shape walk-through (input (B, 1, 64, 128, 128), axes (z, y, x), widths of the "4m" preset,
stride 16)::

    input                                   (B,   1, 64, 128, 128)   level 0
    stem      5×5×5 conv 1 -> F             (B,   4, 64, 128, 128)
    stage 1   res blocks, first halves      (B,  10, 32,  64,  64)   1/2
    stage 2                                 (B,  22, 16,  32,  32)   1/4
    stage 3                                 (B,  48,  8,  16,  16)   1/8
    stage 4                                 (B, 112,  4,   8,   8)   1/16
    stage 5                                 (B, 272,  2,   4,   4)   1/32
    neck      each stage: 1×1×1 conv -> N, resized onto the output grid, [SE]
              finer stages: 2^k mean pool; coarser: trilinear ×2^k     (B, N, 4, 8, 8) each
              concatenated                  (B, 5N, 4, 8, 8)
    head      [SE] -> 1×1×1 conv 5N -> H -> 2 res blocks -> norm -> SiLU -> 1×1×1 conv H -> 1
    output    logits                        (B,   1,  4,   8,   8)

Geometry: output voxel ``i`` is centred at input coordinate ``stride*i + (stride - 1)/2`` (the
convention of ``motorsearch.data.targets``). Every level ``L`` keeps its voxel ``j`` centred at
``2**L * j + (2**L - 1)/2`` (see ``blocks``), and both resizers honour it: a ``k``-fold mean pool
averages exactly the voxels one output cell covers, and trilinear up-sampling with
``align_corners=False`` and a fixed integer scale maps cell centres to cell centres. (Finer levels
are mean-pooled rather than trilinearly shrunk: trilinear reading only the 2×2×2 voxels nearest
each cell centre would alias them.) Because the
1×1×1 reduction and the resizers are linear with weights summing to one, they commute; the
reduction runs on whichever grid is smaller.

Input sizes: any multiple of the stride. When a size is not a multiple of 32 a coarse level gets
``ceil`` sizes (an odd axis is padded at its far end by repeating its last voxel before halving);
up-sampled levels are cropped to exactly ``size / stride``. Neither moves the grid origin.

On a CPU the stem and the first block run on the 2×2×2 phase layout (``model.phases``): the same
result, to float rounding, in about half the time of the direct full-resolution path.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from motorsearch.model import phases
from motorsearch.model.blocks import PreActResBlock3d, make_norm, make_squeeze_excitation

LEVELS = 5  # encoder stages at 1/2 ... 1/32
INITIAL_LOGIT = -4.0  # sigmoid(-4) ≈ 0.018: starts near the background rate so early losses stay small


class MotorIdentifier(nn.Module):
    """3D FPN with a single-logit head.

    Args:
        stem_width: channels after the 5×5×5 stem (F).
        widths: channels of the five encoder stages (1/2 ... 1/32).
        blocks: residual blocks per stage (the first one halves the grid).
        neck_width: channels each stage is reduced to before concatenation (N).
        head_width: channels of the head's residual blocks (H).
        stride: output stride, 8 or 16.
        squeeze_excitation: put squeeze-excitation on every neck branch and on the head input.
        drop_path: largest stochastic-depth rate; it ramps linearly from 0 over the residual
            blocks in forward order (encoder, then head).
        norm: MONAI normalisation name for every block.

    ``forward``: (B, 1, D, H, W) with D, H, W multiples of ``stride`` -> logits
    (B, 1, D/stride, H/stride, W/stride).
    """

    def __init__(
        self,
        *,
        stem_width: int,
        widths: tuple[int, ...] | list[int],
        blocks: tuple[int, ...] | list[int],
        neck_width: int,
        head_width: int,
        stride: int = 16,
        squeeze_excitation: bool = True,
        drop_path: float = 0.0,
        norm: str = "group",
    ) -> None:
        super().__init__()
        if stride not in (8, 16):
            raise ValueError(f"`stride` must be 8 or 16, but got stride={stride}.")
        if len(widths) != LEVELS or len(blocks) != LEVELS:
            raise ValueError(f"`widths` and `blocks` need {LEVELS} entries, but got widths={widths}, blocks={blocks}.")
        if min(blocks) < 1:
            raise ValueError(f"`blocks` must all be at least 1, but got blocks={blocks}.")
        self.architecture = dict(
            stem_width=stem_width, widths=tuple(widths), blocks=tuple(blocks), neck_width=neck_width,
            head_width=head_width, stride=stride, squeeze_excitation=squeeze_excitation, drop_path=drop_path,
            norm=norm,
        )
        self.stride = stride
        self.output_level = int(math.log2(stride))
        head_blocks = 2
        n_residual = sum(blocks) + head_blocks
        rates = [drop_path * i / max(1, n_residual - 1) for i in range(n_residual)]

        self.stem = nn.Conv3d(1, stem_width, kernel_size=5, padding=2, bias=False)
        self.encoder = nn.ModuleList()
        in_channels = stem_width
        for width, count in zip(widths, blocks, strict=True):
            stage = [
                PreActResBlock3d(in_channels if i == 0 else width, width, downsample=i == 0,
                                 drop_path=rates.pop(0), norm=norm)
                for i in range(count)
            ]
            self.encoder.append(nn.Sequential(*stage))
            in_channels = width

        self.reduce = nn.ModuleList(nn.Conv3d(width, neck_width, kernel_size=1) for width in widths)
        self.neck_gates = nn.ModuleList(
            make_squeeze_excitation(neck_width) if squeeze_excitation else nn.Identity()
            for _ in widths
        )
        fused = neck_width * LEVELS
        self.head = nn.Sequential(
            make_squeeze_excitation(fused) if squeeze_excitation else nn.Identity(),
            nn.Conv3d(fused, head_width, kernel_size=1),
            *(PreActResBlock3d(head_width, head_width, drop_path=rates.pop(0), norm=norm) for _ in range(head_blocks)),
            make_norm(norm, head_width),
            nn.SiLU(),
            nn.Conv3d(head_width, 1, kernel_size=1),
        )
        logit = self.head[-1]
        nn.init.normal_(logit.weight, std=0.01)
        nn.init.constant_(logit.bias, INITIAL_LOGIT)

    # -- parameters ---------------------------------------------------------------------------

    def backbone_parameters(self) -> list[nn.Parameter]:
        """Stem and encoder parameters (the part a smaller learning rate may suit)."""
        return [*self.stem.parameters(), *self.encoder.parameters()]

    def head_parameters(self) -> list[nn.Parameter]:
        """Neck and head parameters; with :meth:`backbone_parameters` exactly ``parameters()``."""
        return [*self.reduce.parameters(), *self.neck_gates.parameters(), *self.head.parameters()]

    # -- forward ------------------------------------------------------------------------------

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 1, D, H, W) patch, sizes multiples of ``stride`` -> (B, 1, D/s, H/s, W/s) logits."""
        if x.ndim != 5 or x.shape[1] != 1:
            raise ValueError(f"MotorIdentifier expects (B, 1, D, H, W) input, but got shape {tuple(x.shape)}.")
        size = tuple(x.shape[2:])
        if any(n % self.stride for n in size):
            raise ValueError(f"input sizes must be multiples of stride={self.stride}, but got {size}.")
        out_size = tuple(n // self.stride for n in size)

        features = []
        first, *later = self.encoder
        if phases.applies(self.stem, first[0], x):  # the same numbers without the full-resolution stem output
            y = first[1:](phases.stem_and_first_block(x, self.stem, first[0]))
        else:
            y = first(self.stem(x))
        features.append(y)
        for stage in later:
            y = stage(y)
            features.append(y)

        branches = []
        for level, (feature, reduce, gate) in enumerate(zip(features, self.reduce, self.neck_gates, strict=True), 1):
            branches.append(gate(self._onto_output_grid(feature, reduce, level, out_size)))
        return self.head(torch.cat(branches, dim=1))

    def _onto_output_grid(
        self, feature: torch.Tensor, reduce: nn.Module, level: int, out_size: tuple[int, ...]
    ) -> torch.Tensor:
        """Reduce a level-``level`` map with ``reduce`` and resize it to ``out_size`` (see module doc)."""
        if level < self.output_level:
            factor = 2 ** (self.output_level - level)
            return reduce(F.avg_pool3d(feature, kernel_size=factor, stride=factor))
        feature = reduce(feature)
        if level > self.output_level:
            factor = 2 ** (level - self.output_level)
            feature = F.interpolate(
                feature, scale_factor=float(factor), mode="trilinear", align_corners=False,
                recompute_scale_factor=False,
            )
        d, h, w = out_size
        return feature[:, :, :d, :h, :w]

    # -- cost ---------------------------------------------------------------------------------

    def flops_per_voxel(self, input_shape: tuple[int, int, int] = (64, 128, 128)) -> float:
        """Forward FLOPs (2 × multiply-adds of convolutions and linear layers) per input voxel.

        Counted by ``torch.utils.flop_counter.FlopCounterMode`` on a twin of this model built on
        the meta device (no memory, no arithmetic) for one (1, 1, *input_shape) patch. Norms,
        activations, pooling and interpolation are not counted; they are a few FLOPs per element
        and memory-bound. A training step costs about three times this (forward + backward).
        """
        with torch.device("meta"):
            twin = MotorIdentifier(**self.architecture).eval()
            patch = torch.empty(1, 1, *input_shape)
        with FlopCounterMode(display=False) as counter, torch.no_grad():
            twin(patch)
        return counter.get_total_flops() / math.prod(input_shape)
