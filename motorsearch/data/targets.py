"""Gaussian heatmap targets on the model's output grid, and the grid's geometry.

Convention (shared with peak decoding in ``motorsearch.evaluation``): output voxel ``i`` along
an axis covers input voxels ``[origin + stride*i, origin + stride*(i + 1))`` and its centre sits
at input coordinate ``origin + stride*i + (stride - 1)/2``. Coordinates are continuous voxel
positions in (z, y, x) order where voxel ``k`` spans ``[k - 0.5, k + 0.5)`` — the same frame as
the labels. Because targets are evaluated at those exact centres, a patch whose origin is not a
multiple of the stride gets a correctly shifted heatmap (the research code's floor(origin/16)
crop was off by up to one output voxel).
"""

from __future__ import annotations

import numpy as np


def output_centres(origin: float, n: int, stride: int) -> np.ndarray:
    """Input-voxel coordinates of the centres of ``n`` output voxels along one axis. Shape (n,)."""
    return origin + stride * np.arange(n, dtype=np.float64) + (stride - 1) / 2.0


def output_to_input(index: np.ndarray | float, stride: int, origin: float | np.ndarray = 0.0) -> np.ndarray:
    """Map (possibly fractional) output-grid indices to input-voxel coordinates."""
    return np.asarray(origin, dtype=np.float64) + stride * np.asarray(index, dtype=np.float64) + (stride - 1) / 2.0


def heatmap(
    motors: np.ndarray,
    origin: tuple[int, int, int] | np.ndarray,
    out_shape: tuple[int, int, int],
    stride: int,
    sigma_vox: float,
) -> np.ndarray:
    """Gaussian heatmap for one patch, several motors merged by max.

    Args:
        motors: (N, 3) motor centres in input voxels (z, y, x) of the volume the patch is cut from.
        origin: (3,) input-voxel index of the patch's first voxel.
        out_shape: (d, h, w) output grid, i.e. patch shape // stride.
        stride: input voxels per output voxel.
        sigma_vox: Gaussian sigma in input voxels (sigma in Å / spacing in Å per voxel).

    Returns:
        (d, h, w) float32 in [0, 1]; exp(-|c - m|^2 / (2 sigma^2)) at each output-voxel centre c,
        max over motors; all zeros when there is no motor.
    """
    if sigma_vox <= 0:
        raise ValueError(f"sigma_vox must be positive, but got sigma_vox={sigma_vox}.")
    result = np.zeros(out_shape, dtype=np.float32)
    motors = np.asarray(motors, dtype=np.float64).reshape(-1, 3)
    if len(motors) == 0:
        return result
    axes = [output_centres(float(origin[a]), out_shape[a], stride) for a in range(3)]
    reach = 4.0 * sigma_vox + stride  # beyond this a motor adds < exp(-8) anywhere in the patch
    for motor in motors:
        if any(motor[a] < axes[a][0] - reach or motor[a] > axes[a][-1] + reach for a in range(3)):
            continue
        dz, dy, dx = ((axes[a] - motor[a]) ** 2 / (2.0 * sigma_vox**2) for a in range(3))
        exponent = dz[:, None, None] + dy[None, :, None] + dx[None, None, :]
        np.maximum(result, np.exp(-exponent).astype(np.float32), out=result)
    return result
