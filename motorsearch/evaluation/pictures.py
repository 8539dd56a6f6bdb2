"""The validation picture: slices through the true and the predicted motor of validation tomograms.

Drawn by the trainer from the heatmaps its validation just computed (no second inference), into
the checkpoint folder of each new best epoch (``validation.png`` beside ``model.pt``), so that the
tracker only uploads it. A bare ``matplotlib.figure.Figure`` (Agg canvas, no pyplot state: no
display needed, safe in any thread), written atomically.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from motorsearch.atomic import replacing
from motorsearch.data.preprocess import normalize

VALIDATION_PICTURE = "validation.png"  # in a checkpoint folder, beside the model file
_NEAR_SLICE = 2.0  # voxels


def validation_png(tomograms: Sequence[Any], heatmaps: Mapping[str, np.ndarray], path: str | Path, *,
                   threshold: float, stride: int, nms_radius_a: float, normalization: str, n: int = 3) -> Path:
    """Slices through the true and the predicted motor of up to ``n`` validation tomograms.

    One row per tomogram (those with motors first, then in the given order). Left: the (y, x)
    slice at the z of the first true motor; right: the slice at the z of the strongest
    predicted peak. Markers: green circle = true motor, red cross = predicted peak (drawn on
    both slices; the title gives their z in voxels and the peak's probability against the
    model's threshold). A marker more than 2 voxels off the shown slice is drawn faint: it marks
    the (y, x) position of something above or below.

    Args:
        tomograms: ``CachedTomogram``s (``tomo_id``, ``motors`` (N, 3) cached voxels (z, y, x),
            ``volume()`` -> (z, y, x) uint8, ``spacing`` Å/voxel, ``mean``/``std``).
        heatmaps: tomo_id -> the probability heatmap of that tomogram on the model's output grid
            (``evaluation.validate``'s ``ValidationResult.heatmaps``).
        path: where the PNG goes.
        threshold: the model's decision threshold; stride, nms_radius_a: how peaks are found.
        normalization: how the shown slices are scaled (the model's).
        n: most tomograms shown (>= 1).
    """
    if n < 1:
        raise ValueError(f"n must be at least 1, but got n={n}.")
    from motorsearch.evaluation.peaks import find_peaks

    chosen = sorted(tomograms, key=lambda t: 0 if _motors(t).size else 1)[:n]
    rows = max(len(chosen), 1)
    fig = Figure(figsize=(8, 4 * rows), layout="constrained")
    axes = fig.subplots(rows, 2, squeeze=False)
    if not chosen:
        for axis in axes[0]:
            axis.text(0.5, 0.5, "no validation tomograms", ha="center", va="center")
            axis.set_axis_off()
    for row, tomogram in zip(axes, chosen, strict=False):
        volume = normalize(np.asarray(tomogram.volume()), normalization,
                           mean=getattr(tomogram, "mean", None), std=getattr(tomogram, "std", None))
        peaks = find_peaks(heatmaps[tomogram.tomo_id], stride=stride, max_peaks=1,
                           nms_radius_vox=nms_radius_a / float(tomogram.spacing))
        truth = _motors(tomogram)
        predicted = peaks[0][0] if peaks else None
        score = peaks[0][1] if peaks else math.nan
        _draw_slice(row[0], volume, truth[0] if truth.size else None, truth, predicted,
                    f"{tomogram.tomo_id}: true motor" if truth.size else f"{tomogram.tomo_id}: no motor")
        verdict = "motor" if predicted is not None and score >= threshold else "no motor"
        _draw_slice(row[1], volume, predicted, truth, predicted,
                    f"predicted peak p={score:.2f} (threshold {threshold:.2f}: {verdict})")
    return save_png(fig, path)


def _motors(tomogram: Any) -> np.ndarray:
    motors = getattr(tomogram, "motors", None)
    return np.zeros((0, 3)) if motors is None else np.asarray(motors, dtype=np.float64).reshape(-1, 3)


def _draw_slice(axis: Any, volume: np.ndarray, centre: np.ndarray | None, truth: np.ndarray,
                predicted: np.ndarray | None, title: str) -> None:
    z = volume.shape[0] // 2 if centre is None else int(np.clip(round(float(centre[0])), 0, volume.shape[0] - 1))
    axis.imshow(volume[z], cmap="gray")
    for motor in truth:
        axis.plot(motor[2], motor[1], "o", markerfacecolor="none", markeredgecolor="lime", markersize=14,
                  markeredgewidth=2, alpha=_alpha(motor[0], z), label=f"true (z={motor[0]:.0f})")
    if predicted is not None:
        axis.plot(predicted[2], predicted[1], "x", color="red", markersize=12, markeredgewidth=2,
                  alpha=_alpha(predicted[0], z), label=f"predicted (z={predicted[0]:.0f})")
    axis.set_title(f"{title}\nslice z={z}", fontsize=9)
    axis.set_axis_off()
    if truth.size or predicted is not None:
        axis.legend(fontsize=7, loc="lower right")


def _alpha(marker_z: float, slice_z: int) -> float:
    """Markers more than ``_NEAR_SLICE`` voxels off the shown slice are drawn faint (projected position)."""
    return 1.0 if abs(float(marker_z) - slice_z) <= _NEAR_SLICE else 0.35


def save_png(fig: Any, path: str | Path) -> Path:
    """Save ``fig`` as a PNG at ``path`` atomically (100 dpi); returns ``path``."""
    path = Path(path)
    with replacing(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    return path
