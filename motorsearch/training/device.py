"""Where training runs and in which precision.

``select_device``: "auto" is the first CUDA device when one is visible, else the CPU; asking for
CUDA on a machine without it is a ConfigError (exit code 2), not a silent fall-back.

``select_precision``: "auto" is bf16 on a CUDA device that supports it, else fp16; a CPU always
trains in fp32 (autocast on CPU is slow and fp16 unsupported for 3D convolutions), and asking for
bf16/fp16 there prints a note and uses fp32. Only fp16 needs a GradScaler (bf16 has fp32's range).
"""

from __future__ import annotations

import sys

import torch

from motorsearch.errors import ConfigError

AUTOCAST_DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def select_device(requested: str | None) -> torch.device:
    """``requested``: "auto"/None, "cpu", "cuda" or "cuda:N" -> a usable torch.device."""
    name = (requested or "auto").strip().lower()
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cpu":
        return torch.device("cpu")
    if name == "cuda" or name.startswith("cuda:"):
        if not torch.cuda.is_available():
            raise ConfigError(f"`device` is {requested!r}, but no CUDA device is available; use device=cpu or auto.")
        device = torch.device(name)
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ConfigError(f"`device` is {requested!r}, but only {torch.cuda.device_count()} CUDA device(s) "
                              "are visible.")
        return device
    raise ConfigError(f"`device` must be auto, cpu, cuda or cuda:N, but got device={requested!r}.")


def select_precision(requested: str, device: torch.device, *, quiet: bool = False) -> str:
    """The precision training uses on ``device``: "fp32", "bf16" or "fp16" (see the module docstring)."""
    if requested not in ("auto", "fp32", "bf16", "fp16"):
        raise ConfigError(f"`optim.precision` must be auto, fp32, bf16 or fp16, but got optim.precision={requested!r}.")
    if device.type != "cuda":
        if requested in ("bf16", "fp16") and not quiet:
            print(f"note: optim.precision={requested} is for CUDA; training on {device} uses fp32.", file=sys.stderr)
        return "fp32"
    if requested == "auto":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return requested


def autocast_dtype(precision: str) -> torch.dtype | None:
    """torch dtype for autocast, None for fp32 (autocast off)."""
    return AUTOCAST_DTYPES[precision]
