"""Named MotorIdentifier sizes and ``build_model``, the one way the rest of motorsearch makes a model.

Stage ``L`` (1 ... 5, grid 1/2**L) has ``F * G**L`` channels for base width ``F`` and growth
``G``, rounded to a multiple of 2 (of 8 from 32 up) so that GroupNorm finds useful group counts.
Parameter counts (stride 16, squeeze-excitation on) are checked by ``tests/test_model.py``.
"""

from __future__ import annotations

from dataclasses import dataclass

from motorsearch.config import ModelConfig
from motorsearch.model.fpn import LEVELS, MotorIdentifier
from motorsearch.registry import lookup


@dataclass(frozen=True)
class Preset:
    """A model size: base width F, growth G, blocks per stage, neck width N, head width H."""

    base_width: int
    growth: float
    blocks: tuple[int, int, int, int, int]
    neck_width: int
    head_width: int


PRESETS: dict[str, Preset] = {
    # ~0.3M parameters; a training step on a (2, 1, 64, 128, 128) batch takes ~1 s on 2 CPU cores.
    "tiny": Preset(base_width=4, growth=1.8, blocks=(1, 1, 1, 1, 1), neck_width=8, head_width=16),
    # ~4M, the research code's size: widths 10/22/48/112/272.
    "4m": Preset(base_width=4, growth=2.32, blocks=(1, 1, 1, 1, 1), neck_width=32, head_width=64),
    # ~16M and ~64M for GPUs.
    "16m": Preset(base_width=8, growth=2.3, blocks=(1, 1, 2, 2, 1), neck_width=48, head_width=96),
    "64m": Preset(base_width=16, growth=2.3, blocks=(1, 2, 2, 2, 1), neck_width=64, head_width=128),
}


def round_width(value: float) -> int:
    """Round a channel count to a multiple of 2 below 32 and of 8 from 32 up (at least 2)."""
    quantum = 8 if value >= 32 else 2
    return max(2, quantum * round(value / quantum))


def stage_widths(base_width: int, growth: float) -> tuple[int, ...]:
    """Channels of stages 1 ... 5: ``round_width(base_width * growth**L)``."""
    return tuple(round_width(base_width * growth**level) for level in range(1, LEVELS + 1))


def build_model(cfg: ModelConfig) -> MotorIdentifier:
    """MotorIdentifier for ``cfg``: ``cfg.preset`` names the size, ``cfg.base_width`` and
    ``cfg.growth`` (when set) override the preset's; unknown presets raise ConfigError
    naming ``model.preset``."""
    preset = lookup(PRESETS, cfg.preset, key="model.preset")
    base_width = cfg.base_width if cfg.base_width is not None else preset.base_width
    growth = cfg.growth if cfg.growth is not None else preset.growth
    return MotorIdentifier(
        stem_width=base_width,
        widths=stage_widths(base_width, growth),
        blocks=preset.blocks,
        neck_width=preset.neck_width,
        head_width=preset.head_width,
        stride=cfg.stride,
        squeeze_excitation=cfg.squeeze_excitation,
        drop_path=cfg.drop_path,
    )
