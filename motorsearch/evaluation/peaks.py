"""Motor candidates from a heatmap: greedy non-maximum suppression with sub-voxel refinement.

The heatmap lives on the model's output grid; candidates are returned in input voxels through
:func:`motorsearch.data.targets.output_to_input` (output voxel ``i`` centre at
``stride*i + (stride - 1)/2``), the same convention the targets are built with.

Sub-voxel refinement fits a parabola to the log of the peak and its two neighbours along each
axis. For a Gaussian blob sampled on the grid (what the model is trained to produce) the log is
exactly quadratic, so the fit recovers the centre exactly; for other shapes it is the usual
three-point estimate. The offset is clipped to half a voxel, and an axis where the peak sits on
the border (or the log is not concave) is left unrefined.
"""

from __future__ import annotations

import numpy as np

from motorsearch.data.targets import output_to_input

_LOG_FLOOR = 1e-30  # keeps log() finite where a neighbour underflowed to 0


def find_peaks(
    prob: np.ndarray,
    *,
    stride: int,
    max_peaks: int = 1,
    nms_radius_vox: float,
    min_score: float = 0.0,
) -> list[tuple[np.ndarray, float]]:
    """Up to ``max_peaks`` local maxima of a heatmap, strongest first.

    Greedy NMS: take the highest remaining voxel, then drop every output voxel whose centre
    lies within ``nms_radius_vox`` (inclusive) of it, repeat.

    Args:
        prob: (d, h, w) heatmap on the output grid, axis order (z, y, x).
        stride: input voxels per output voxel.
        max_peaks: most candidates returned (>= 1).
        nms_radius_vox: suppression radius in INPUT voxels (e.g. 1000 Å / spacing).
        min_score: candidates with a heatmap value below this are not returned.

    Returns:
        [(coords, score), ...]: coords (3,) float64 sub-voxel position in input voxels (z, y, x);
        score the heatmap value at the peak voxel. Empty when nothing reaches ``min_score``.
    """
    prob = np.asarray(prob)
    if prob.ndim != 3:
        raise ValueError(f"prob must be a (d, h, w) array, but got shape {prob.shape}.")
    if stride < 1:
        raise ValueError(f"stride must be at least 1, but got stride={stride}.")
    if max_peaks < 1:
        raise ValueError(f"max_peaks must be at least 1, but got max_peaks={max_peaks}.")
    if nms_radius_vox < 0:
        raise ValueError(f"nms_radius_vox cannot be negative, but got nms_radius_vox={nms_radius_vox}.")

    remaining = prob.astype(np.float64, copy=True)
    remaining[~np.isfinite(remaining)] = -np.inf
    radius_out = nms_radius_vox / stride
    peaks: list[tuple[np.ndarray, float]] = []
    while len(peaks) < max_peaks and remaining.size:
        flat = int(np.argmax(remaining))
        score = remaining.flat[flat]
        if score == -np.inf or score < min_score:
            break
        index = np.array(np.unravel_index(flat, prob.shape))
        refined = index + refine_offset(prob, index)
        peaks.append((output_to_input(refined, stride), float(prob[tuple(index)])))
        _suppress(remaining, index, radius_out)
    return peaks


def refine_offset(prob: np.ndarray, index: np.ndarray) -> np.ndarray:
    """Sub-voxel offset (3,) in output voxels, each in [-0.5, 0.5], of the peak at ``index``."""
    offset = np.zeros(3, dtype=np.float64)
    for axis in range(3):
        i = int(index[axis])
        if i == 0 or i == prob.shape[axis] - 1:
            continue
        neighbours = []
        for step in (-1, 0, 1):
            position = list(index)
            position[axis] = i + step
            neighbours.append(np.log(max(float(prob[tuple(position)]), _LOG_FLOOR)))
        below, centre, above = neighbours
        curvature = below - 2.0 * centre + above
        if curvature < 0:
            offset[axis] = np.clip(0.5 * (below - above) / curvature, -0.5, 0.5)
    return offset


def _suppress(remaining: np.ndarray, index: np.ndarray, radius_out: float) -> None:
    """Set to -inf every voxel whose centre is within ``radius_out`` output voxels of ``index``."""
    reach = int(np.floor(radius_out))
    lo = np.maximum(index - reach, 0)
    hi = np.minimum(index + reach + 1, remaining.shape)
    grids = np.ogrid[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]]
    distance2 = sum((g - c) ** 2 for g, c in zip(grids, index, strict=True))
    box = remaining[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]]
    box[distance2 <= radius_out**2 + 1e-9] = -np.inf
