"""Resampling to a common voxel spacing, the coordinate mapping that goes with it, and normalisation.

Coordinate convention (the same frame as the labels and ``targets``): voxel ``k`` of an axis of
length ``n`` spans the continuous interval ``[k - 0.5, k + 0.5)``, so the axis covers
``[-0.5, n - 0.5)``. Resampling an axis from ``old_n`` to ``new_n`` voxels keeps the edges of that
interval fixed, which gives, per axis,

    x_new = (x_old + 0.5) * new_n / old_n - 0.5        (``to_resampled``)
    x_old = (x_new + 0.5) * old_n / new_n - 0.5        (``to_original``)

This is PyTorch's ``align_corners=False`` convention; ``resample`` samples the old grid at exactly
these positions, so a motor at ``x_old`` is found at ``to_resampled(x_old)`` in the new volume.
The new shape is ``round(old_n * factor)`` per axis with ``factor = spacing / target_spacing``.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from motorsearch.config import NORMALIZATIONS

FIXED_MEAN = 0.48
FIXED_STD = 0.225


def resample_factor(spacing: float, target_spacing: float | None) -> float:
    """Scale factor (new voxels per old voxel) that takes ``spacing`` Å/voxel to ``target_spacing``.

    ``target_spacing=None`` means "keep the native grid" and gives 1.0.
    """
    if not spacing > 0:
        raise ValueError(f"`spacing` must be positive, but got spacing={spacing}.")
    if target_spacing is None:
        return 1.0
    if not target_spacing > 0:
        raise ValueError(f"`target_spacing` must be positive, but got target_spacing={target_spacing}.")
    return float(spacing) / float(target_spacing)


def resampled_shape(shape: tuple[int, ...], factor: float) -> tuple[int, int, int]:
    """``round(n * factor)`` per axis (at least 1). Shape (z, y, x) in voxels."""
    if not factor > 0:
        raise ValueError(f"`factor` must be positive, but got factor={factor}.")
    return tuple(max(1, int(round(n * factor))) for n in shape)  # type: ignore[return-value]


def to_resampled(coords: np.ndarray, old_shape: tuple[int, ...], new_shape: tuple[int, ...]) -> np.ndarray:
    """Map (N, 3) continuous (z, y, x) voxel coordinates from the old grid to the resampled grid."""
    ratio = np.asarray(new_shape, dtype=np.float64) / np.asarray(old_shape, dtype=np.float64)
    return (np.asarray(coords, dtype=np.float64).reshape(-1, 3) + 0.5) * ratio - 0.5


def to_original(coords: np.ndarray, old_shape: tuple[int, ...], new_shape: tuple[int, ...]) -> np.ndarray:
    """Inverse of ``to_resampled`` (same argument order): (N, 3) resampled-grid coordinates to the old grid."""
    return to_resampled(coords, new_shape, old_shape)


def resample(volume: np.ndarray, factor: float, *, out: np.ndarray | None = None, chunk: int = 16) -> np.ndarray:
    """Trilinear resampling of a (z, y, x) uint8 volume by ``factor``; returns uint8 (rounded).

    Works through ``chunk`` output z-slices at a time (float32 working memory of about
    ``(chunk + 2) * y * x * 4`` bytes), so ``out`` may be a memory-mapped file. Samples are taken at
    ``to_original`` of each new voxel centre, clamped to the volume (edge voxels repeat), exactly as
    ``torch.nn.functional.interpolate(mode="trilinear", align_corners=False)`` does. No anti-aliasing.
    """
    if volume.ndim != 3:
        raise ValueError(f"`volume` must be 3-D (z, y, x), but got shape {volume.shape}.")
    new_shape = resampled_shape(volume.shape, factor)
    if out is None:
        out = np.empty(new_shape, dtype=np.uint8)
    elif tuple(out.shape) != new_shape or out.dtype != np.uint8:
        raise ValueError(f"`out` must be uint8 of shape {new_shape}, but got {out.dtype} {tuple(out.shape)}.")
    if new_shape == tuple(volume.shape):
        out[...] = volume  # the mapping is the identity
        return out
    z_low, z_high, z_weight = _linear_taps(volume.shape[0], new_shape[0])
    plane = new_shape[1:]
    for start in range(0, new_shape[0], chunk):
        stop = min(start + chunk, new_shape[0])
        first, last = int(z_low[start]), int(z_high[stop - 1])
        # float32 copy: the source may be a read-only memory map, which torch.from_numpy warns about
        slab = torch.from_numpy(np.array(volume[first:last + 1], dtype=np.float32))
        if plane != tuple(volume.shape[1:]):
            slab = F.interpolate(slab[None], size=plane, mode="bilinear", align_corners=False)[0]
        low = torch.from_numpy(z_low[start:stop] - first)
        high = torch.from_numpy(z_high[start:stop] - first)
        weight = torch.from_numpy(z_weight[start:stop]).float()[:, None, None]
        mixed = torch.lerp(slab[low], slab[high], weight).round_()
        torch.from_numpy(out[start:stop]).copy_(mixed)  # casts to uint8 while writing
    return out


def _linear_taps(old_n: int, new_n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For each new index: the two old indices to mix and the weight of the second. Shapes (new_n,)."""
    source = (np.arange(new_n, dtype=np.float64) + 0.5) * (old_n / new_n) - 0.5
    source = np.clip(source, 0.0, old_n - 1)
    low = np.floor(source).astype(np.int64)
    high = np.minimum(low + 1, old_n - 1)
    return low, high, source - low


def volume_stats(volume: np.ndarray, *, chunk: int = 32) -> tuple[float, float]:
    """Exact mean and standard deviation of a uint8 volume, from a histogram built chunk by chunk."""
    counts = torch.zeros(256, dtype=torch.int64)
    for start in range(0, volume.shape[0], chunk):
        block = torch.from_numpy(np.ascontiguousarray(volume[start:start + chunk])).view(-1)
        counts += torch.bincount(block, minlength=256)  # much faster than np.bincount on uint8
    counts = counts.numpy()
    values = np.arange(256, dtype=np.float64)
    total = counts.sum()
    mean = float((counts * values).sum() / total)
    std = float(np.sqrt((counts * (values - mean) ** 2).sum() / total))
    return mean, std


def normalization_affine(method: str, *, mean: float | None = None, std: float | None = None) -> tuple[float, float]:
    """``(alpha, beta)`` with ``normalize(x) == x * alpha + beta``; "zscore" needs ``mean`` and ``std``."""
    if method == "fixed":
        return 1.0 / (255.0 * FIXED_STD), -FIXED_MEAN / FIXED_STD
    if method == "zscore":
        if mean is None or std is None:
            raise ValueError("zscore normalisation needs the tomogram's `mean` and `std`.")
        alpha = 1.0 / std if std > 0 else 1.0
        return alpha, -mean * alpha
    raise ValueError(f"`normalization` must be one of {', '.join(NORMALIZATIONS)}, but got normalization={method!r}.")


def normalize(volume: np.ndarray, method: str, *, mean: float | None = None, std: float | None = None) -> np.ndarray:
    """Intensities to a new float32 array for the network.

    ``"fixed"``: ``(x / 255 - 0.48) / 0.225``, the same for every tomogram (the research code's).
    ``"zscore"``: ``(x - mean) / std`` with the whole tomogram's statistics; pass ``mean``/``std``
    (the cache stores them) when ``volume`` is only a patch, else they are computed from ``volume``.
    A constant volume (std 0) is only centred.
    """
    if method == "zscore" and (mean is None or std is None):
        values = np.asarray(volume, dtype=np.float64)
        mean, std = float(values.mean()), float(values.std())
    alpha, beta = normalization_affine(method, mean=mean, std=std)
    values = np.multiply(volume, np.float32(alpha), dtype=np.float32, order="C")
    values += np.float32(beta)
    return values
