"""Whole-tomogram heatmaps by sliding-window inference (MONAI, Gaussian blending).

Alignment is the point of this module. The model maps a (B, 1, D, H, W) patch to
(B, 1, D/s, H/s, W/s) logits, output voxel ``i`` of a patch centred at input voxel
``s*i + (s - 1)/2`` of that patch (see ``motorsearch.data.targets``). Stitching keeps that
convention for the whole volume only when every window starts at a multiple of ``s``. So:

- the volume is padded at its far end (with 0, the mean of a normalised volume) to a multiple
  of ``s`` and to at least the patch size, and the result is cropped back to
  ``ceil(n / s)`` output voxels per axis — output voxel ``i`` of the result is centred at input
  voxel ``s*i + (s - 1)/2`` of the unpadded volume;
- the window step is ``patch * (1 - overlap)`` rounded DOWN to a multiple of ``s`` (at least
  ``s``), i.e. at least the configured overlap; it is handed to MONAI as a per-axis overlap
  that reproduces exactly that step. MONAI shifts the last window back to end at the volume's
  edge; as the padded size and the patch are multiples of ``s`` that start is one too. The
  window starts are checked before inference.

Logits, not probabilities, are blended (Gaussian importance weights, MONAI ``mode="gaussian"``)
and the sigmoid is applied once afterwards: averaging logits keeps a confident window's peak
sharp where averaging probabilities would flatten it.

Test-time augmentation (``tta`` = 4, 8 or 16): the padded volume is also seen turned by quarter
turns in (y, x) (4), and flipped in z (8), and in z, y or both (16); each view's logits are
turned back and all are averaged. Because the padded volume is a multiple of ``s`` on every
axis (and square in y-x, padded further where needed), a flip maps output voxel ``i`` to
``n/s - 1 - i`` exactly (see ``motorsearch.data.augment``), so the views stay aligned.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from monai.data.utils import dense_patch_slices
from monai.inferers import sliding_window_inference

from motorsearch.config import PRECISIONS
from motorsearch.training.device import autocast_dtype, resolve_precision

_TTA_FLIPS = {1: [()], 4: [()], 8: [(), (0,)], 16: [(), (0,), (1,), (0, 1)]}


def tta_views(tta: int) -> list[tuple[tuple[int, ...], int]]:
    """The (flip axes, quarter turns in y-x) of each view for ``tta`` in 1, 4, 8, 16."""
    if tta not in _TTA_FLIPS:
        raise ValueError(f"`tta` must be one of {', '.join(map(str, _TTA_FLIPS))}, but got tta={tta}.")
    turns = range(4) if tta > 1 else range(1)
    return [(flips, k) for flips in _TTA_FLIPS[tta] for k in turns]


def predict_volume(
    model: torch.nn.Module,
    volume: np.ndarray,
    *,
    patch_size: Sequence[int],
    stride: int,
    overlap: float,
    batch_size: int,
    device: torch.device | str,
    precision: str = "fp32",
    tta: int = 1,
) -> np.ndarray:
    """Motor probability heatmap of a whole tomogram.

    Args:
        model: maps (B, 1, D, H, W) float32 to (B, 1, D/stride, H/stride, W/stride) logits.
        volume: (Z, Y, X) float32, already normalised.
        patch_size: window (z, y, x) in input voxels, each a multiple of ``stride``.
        stride: input voxels per output voxel.
        overlap: fraction of a window shared with the next, in [0, 1).
        batch_size: windows per forward pass.
        device: where the model runs (the model must already be there).
        precision: "fp32", "bf16", "fp16" or "auto", resolved by
            ``motorsearch.training.device.resolve_precision`` (a CPU always runs fp32).
        tta: views averaged (1, 4, 8 or 16; see the module docstring); costs ``tta`` times as much.

    Returns:
        (ceil(Z/stride), ceil(Y/stride), ceil(X/stride)) float32 sigmoid probabilities; voxel
        ``i`` centred at input voxel ``stride*i + (stride - 1)/2`` along each axis.
    """
    logits = predict_logits(model, volume, patch_size=patch_size, stride=stride, overlap=overlap,
                            batch_size=batch_size, device=device, precision=precision, tta=tta)
    return torch.sigmoid(torch.from_numpy(logits)).numpy()


def predict_logits(
    model: torch.nn.Module,
    volume: np.ndarray,
    *,
    patch_size: Sequence[int],
    stride: int,
    overlap: float,
    batch_size: int,
    device: torch.device | str,
    precision: str = "fp32",
    tta: int = 1,
) -> np.ndarray:
    """Blended logits (ceil(Z/stride), ceil(Y/stride), ceil(X/stride)) float32; see :func:`predict_volume`."""
    volume = np.asarray(volume)
    patch = tuple(int(p) for p in patch_size)
    _check_arguments(volume, patch, stride, overlap, batch_size, precision)
    views = tta_views(tta)
    device = torch.device(device)
    out_shape = tuple(math.ceil(n / stride) for n in volume.shape)
    padded_shape = tuple(max(o * stride, p) for o, p in zip(out_shape, patch, strict=True))
    if tta > 1:  # quarter turns swap y and x: make them equal (and fit the window either way)
        side = max(padded_shape[1], padded_shape[2], patch[1], patch[2])
        padded_shape = (padded_shape[0], side, side)
    steps = window_steps(patch, stride, overlap)
    monai_overlap = [0.0 if step == p else 1.0 - (step + 0.5) / p for step, p in zip(steps, patch, strict=True)]
    _check_window_starts(padded_shape, patch, monai_overlap, stride)

    padded = torch.zeros((1, 1, *padded_shape), dtype=torch.float32, device=device)
    padded[0, 0, : volume.shape[0], : volume.shape[1], : volume.shape[2]] = torch.from_numpy(
        np.ascontiguousarray(volume, dtype=np.float32))
    expected_out = tuple(p // stride for p in patch)
    amp_dtype = _autocast_dtype(precision, device)

    def forward(windows: torch.Tensor) -> torch.Tensor:
        with torch.autocast(device_type="cuda", dtype=amp_dtype, enabled=amp_dtype is not None):
            logits = model(_as_two(windows))[: windows.shape[0]]
        if tuple(logits.shape) != (windows.shape[0], 1, *expected_out):
            raise ValueError(f"the model must map a (B, 1, *{patch}) window to (B, 1, *{expected_out}) logits "
                             f"at stride {stride}, but it returned shape {tuple(logits.shape)}.")
        return logits.float()

    was_training = model.training
    model.eval()
    total = None
    try:
        with torch.inference_mode():
            for flips, turns in views:
                view = torch.rot90(torch.flip(padded, [a + 2 for a in flips]) if flips else padded, turns, (3, 4))
                stitched = sliding_window_inference(
                    view, roi_size=patch, sw_batch_size=batch_size, predictor=forward, overlap=monai_overlap,
                    mode="gaussian", sw_device=device, device=device)
                back = torch.rot90(stitched, -turns, (3, 4))
                back = torch.flip(back, [a + 2 for a in flips]) if flips else back
                total = back if total is None else total + back
    finally:
        model.train(was_training)
    stitched = total[0, 0, : out_shape[0], : out_shape[1], : out_shape[2]] / len(views)
    return stitched.float().cpu().numpy()


def window_steps(patch: Sequence[int], stride: int, overlap: float) -> tuple[int, ...]:
    """Window step per axis: ``patch * (1 - overlap)`` rounded down to a multiple of ``stride``, >= stride."""
    return tuple(max(stride, int(p * (1.0 - overlap)) // stride * stride) for p in patch)


def _as_two(windows: torch.Tensor) -> torch.Tensor:
    """A batch of one CPU window as the same window twice: PyTorch sends a batch-1 3D convolution
    with few channels to its im2col path instead of oneDNN, ~3.5x slower here than two windows
    (benchmarks/REPORT.md); the model treats each window alone, so the first result is the same."""
    return windows.expand(2, *windows.shape[1:]) if windows.shape[0] == 1 and windows.device.type == "cpu" else windows


def _autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    return autocast_dtype(resolve_precision(precision, device))


def _check_arguments(volume: np.ndarray, patch: tuple[int, ...], stride: int, overlap: float,
                     batch_size: int, precision: str) -> None:
    if volume.ndim != 3 or min(volume.shape) < 1:
        raise ValueError(f"volume must be a non-empty (Z, Y, X) array, but got shape {volume.shape}.")
    if stride < 1:
        raise ValueError(f"stride must be at least 1, but got stride={stride}.")
    if len(patch) != 3 or any(p < stride or p % stride for p in patch):
        raise ValueError(f"patch_size must be 3 multiples of stride={stride}, but got patch_size={patch}.")
    if not 0.0 <= overlap < 1.0:
        raise ValueError(f"overlap must be in [0, 1), but got overlap={overlap}.")
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, but got batch_size={batch_size}.")
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, but got precision={precision!r}.")


def _check_window_starts(image: tuple[int, ...], patch: tuple[int, ...], monai_overlap: list[float],
                         stride: int) -> None:
    """Recompute MONAI's windows and check each starts on the output grid, and that MONAI's
    output-index arithmetic (``int(start * out / in)``) lands exactly on ``start / stride``."""
    scan = [p if p == n else int(p * (1.0 - o)) for n, p, o in zip(image, patch, monai_overlap, strict=True)]
    for window in dense_patch_slices(image, patch, scan):
        for piece, p in zip(window, patch, strict=True):
            zoom = (p // stride) / float(p)
            if piece.start % stride or int(piece.start * zoom) != piece.start // stride:
                raise RuntimeError(f"sliding window starting at {piece.start} is off the stride-{stride} output "
                                   f"grid (windows {patch}, image {image}); alignment would be lost.")
