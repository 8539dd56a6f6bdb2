"""MotorIdentifier, a 3D feature pyramid network, and its building blocks."""

from motorsearch.model.fpn import MotorIdentifier
from motorsearch.model.presets import PRESETS, build_model

__all__ = ["PRESETS", "MotorIdentifier", "build_model"]
