"""Where training runs, in which precision, and how a GPU is shared and given back.

``select_device``: "auto" is the first CUDA device when one is visible, else the CPU; asking for
CUDA on a machine without it is a ConfigError (exit code 2), not a silent fall-back.

``resolve_precision`` is the one precision rule (training, inference and the benchmarks call
it): a CPU always runs fp32 (autocast on CPU is slow and fp16 unsupported for 3D convolutions);
on CUDA "auto" is bf16 where the card computes bf16 natively (compute capability 8.0 and up:
A100, H100, L4, RTX 30xx...) and fp16 elsewhere (T4, V100), where cuDNN has no native bf16
convolution and PyTorch's ``is_bf16_supported()`` would still say yes (emulation). Only fp16
needs a GradScaler (bf16 has fp32's range).

Sharing a card: Ray's fractional GPUs (``resources.gpu: 0.25``) do not split memory, so
``cap_gpu_memory`` limits this process to its share; ``release_gpu_memory`` gives the cached
blocks back once the tensors are unreachable; ``out_of_memory_advice`` says what to lower.
"""

from __future__ import annotations

import gc
import sys

import torch

from motorsearch.config import PRECISIONS
from motorsearch.errors import ConfigError

AUTOCAST_DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}  # every PRECISIONS but auto


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


def resolve_precision(requested: str, device: torch.device | str) -> str:
    """The precision used for ``requested`` ("auto", "fp32", "bf16", "fp16") on ``device``; see the module docstring."""
    if torch.device(device).type != "cuda":
        return "fp32"
    if requested == "auto":
        return "bf16" if torch.cuda.is_bf16_supported(including_emulation=False) else "fp16"
    return requested


def select_precision(requested: str, device: torch.device, *, quiet: bool = False) -> str:
    """``resolve_precision`` for a training config: checks the value and notes a CUDA precision asked on a CPU."""
    if requested not in PRECISIONS:
        raise ConfigError(f"`optim.precision` must be auto, fp32, bf16 or fp16, but got optim.precision={requested!r}.")
    if device.type != "cuda" and requested in ("bf16", "fp16") and not quiet:
        print(f"note: optim.precision={requested} is for CUDA; training on {device} uses fp32.", file=sys.stderr)
    return resolve_precision(requested, device)


def autocast_dtype(precision: str) -> torch.dtype | None:
    """torch dtype for autocast, None for fp32 (autocast off)."""
    return AUTOCAST_DTYPES[precision]


def cap_gpu_memory(fraction: float, device: torch.device) -> float | None:
    """Limit this process to ``fraction`` of ``device``'s memory (a trial's share of a card).

    Allocations beyond it raise ``torch.cuda.OutOfMemoryError`` in this trial instead of starving
    the trials sharing the card. Returns the fraction set; None on a CPU or for a whole card.
    """
    if device.type != "cuda" or not 0 < fraction < 1:
        return None
    torch.cuda.set_per_process_memory_fraction(fraction, device)
    return fraction


def configure_cuda(device: torch.device) -> None:
    """cuDNN autotuning on: training patches and inference windows have fixed shapes, so the
    one-off search per shape pays back in the first epoch (bit-for-bit resume is a CPU promise)."""
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True


def release_gpu_memory() -> None:
    """Collect unreachable tensors, then hand PyTorch's cached GPU blocks back to the driver."""
    gc.collect()
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.empty_cache()


def out_of_memory_advice(*, phase: str, batch_size: int, window_batch_size: int, precision: str,
                         fraction: float | None) -> str:
    """One actionable line for a ``torch.cuda.OutOfMemoryError`` during ``phase`` ("training" or "validation")."""
    share = f" of the {fraction:g} of the card this trial may use" if fraction else ""
    if phase == "validation":
        fix = f"lower `validation.window_batch_size` (now {window_batch_size})"
    else:
        fix = f"lower `sampling.batch_size` (now {batch_size}) or `sampling.patch_size`"
    if precision == "fp32":
        fix += ", or train in bf16/fp16 (`optim.precision`)"
    return f"CUDA ran out of memory during {phase}{share}: {fix}; with a shared card, ask a larger `resources.gpu`."
