"""The pictures logged with each trial: training curves and slices through validation tomograms.

Both draw on a bare ``matplotlib.figure.Figure`` (Agg canvas, no pyplot state: no display
needed and safe from the tracker's background thread) and write the PNG atomically.
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

PANELS = ("losses", "validation", "learning rate")
BEST_EPOCH_LABEL = "best epoch"  # the legend entry of the objective's epoch
_NEAR_SLICE = 2.0  # voxels


def training_curves_png(history: Sequence[Mapping[str, Any]], path: str | Path, *,
                        best_epoch: int | None = None) -> Path:
    """Plot a trial's per-epoch metrics in three panels: losses, validation scores, learning rate.

    Args:
        history: one mapping per reported epoch, each with ``"epoch"`` and numeric metrics.
            Keys containing "loss" (``train_loss``, ``val_loss``) -> "losses"; other ``val_*``
            keys (``val_f2``, ``val_precision``, ``val_threshold``, ...) -> "validation"; ``lr``
            -> "learning rate" (log scale). Other keys (timings, bookkeeping) and non-finite
            values are not drawn.
        path: where the PNG goes.
        best_epoch: the epoch of the trial's objective (``best_epoch``), marked by a dashed
            vertical line in every panel; None draws none.
    """
    panels = _curves(history)
    fig = Figure(figsize=(15, 4), layout="constrained")
    for axis, title in zip(fig.subplots(1, len(PANELS)), PANELS, strict=True):
        curves = panels[title]
        for name, (epochs, values) in sorted(curves.items()):
            axis.plot(epochs, values, marker="o", markersize=3, label=name)
        if curves and best_epoch is not None:
            axis.axvline(best_epoch, color="tab:green", linestyle="--", linewidth=1.5,
                         label=f"{BEST_EPOCH_LABEL} {best_epoch}")
        axis.set_xlabel("epoch")
        axis.set_title(title)
        axis.grid(alpha=0.3)
        if curves:
            axis.legend(fontsize=8)
            if title == "learning rate" and all(v > 0 for _, values in curves.values() for v in values):
                axis.set_yscale("log")
        else:
            axis.text(0.5, 0.5, "nothing reported", ha="center", va="center", transform=axis.transAxes)
    return save_png(fig, path)


def validation_png(model_file: str | Path, tomograms: Sequence[Any], path: str | Path, *, n: int = 3,
                   device: str = "cpu") -> Path:
    """Slices through the true and the predicted motor of up to ``n`` validation tomograms.

    One row per tomogram (those with motors first, then in the given order). Left: the (y, x)
    slice at the z of the first true motor; right: the slice at the z of the strongest
    predicted peak. Markers: green circle = true motor, red cross = predicted peak (drawn on
    both slices; the title gives their z in voxels and the peak's probability against the
    model's threshold). A marker more than 2 voxels off the shown slice is drawn faint: it marks
    the (y, x) position of something above or below.

    Args:
        model_file: a model file written by ``motorsearch.model_file.save_model_file``.
        tomograms: ``CachedTomogram``s (``tomo_id``, ``motors`` (N, 3) cached voxels (z, y, x),
            ``volume()`` -> (z, y, x) uint8, ``spacing`` Å/voxel, ``mean``/``std``).
        path: where the PNG goes.
        n: most tomograms shown (>= 1).
        device: where inference runs.
    """
    if n < 1:
        raise ValueError(f"n must be at least 1, but got n={n}.")
    from motorsearch.evaluation.inference import predict_volume
    from motorsearch.evaluation.peaks import find_peaks
    from motorsearch.model_file import load_model_file

    loaded = load_model_file(model_file, device=device)
    prep, threshold = loaded.preprocessing, float(loaded.threshold)
    chosen = sorted(tomograms, key=lambda t: 0 if _motors(t).size else 1)[:n]
    rows = max(len(chosen), 1)
    fig = Figure(figsize=(8, 4 * rows), layout="constrained")
    axes = fig.subplots(rows, 2, squeeze=False)
    if not chosen:
        for axis in axes[0]:
            axis.text(0.5, 0.5, "no validation tomograms", ha="center", va="center")
            axis.set_axis_off()
    for row, tomogram in zip(axes, chosen, strict=False):
        volume = normalize(np.asarray(tomogram.volume()), prep["normalization"],
                           mean=getattr(tomogram, "mean", None), std=getattr(tomogram, "std", None))
        prob = predict_volume(loaded.model, volume, patch_size=prep["patch_size"], stride=prep["stride"],
                              overlap=prep["overlap"], batch_size=prep["window_batch_size"], device=device)
        peaks = find_peaks(prob, stride=prep["stride"], max_peaks=1,
                           nms_radius_vox=prep["nms_radius_a"] / float(tomogram.spacing))
        truth = _motors(tomogram)
        predicted = peaks[0][0] if peaks else None
        score = peaks[0][1] if peaks else math.nan
        _draw_slice(row[0], volume, truth[0] if truth.size else None, truth, predicted,
                    f"{tomogram.tomo_id}: true motor" if truth.size else f"{tomogram.tomo_id}: no motor")
        verdict = "motor" if predicted is not None and score >= threshold else "no motor"
        _draw_slice(row[1], volume, predicted, truth, predicted,
                    f"predicted peak p={score:.2f} (threshold {threshold:.2f}: {verdict})")
    return save_png(fig, path)


def _curves(history: Sequence[Mapping[str, Any]]) -> dict[str, dict[str, tuple[list, list]]]:
    """{panel: {metric: (epochs, values)}} for the panels of :func:`training_curves_png`."""
    panels: dict[str, dict[str, tuple[list, list]]] = {title: {} for title in PANELS}
    for index, entry in enumerate(history):
        epoch = entry.get("epoch", index + 1)
        for name, value in entry.items():
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                continue
            if "loss" in name:
                panel = "losses"
            elif name.startswith("val_"):
                panel = "validation"
            elif name == "lr":
                panel = "learning rate"
            else:
                continue
            epochs, values = panels[panel].setdefault(name, ([], []))
            epochs.append(epoch)
            values.append(float(value))
    return panels


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
