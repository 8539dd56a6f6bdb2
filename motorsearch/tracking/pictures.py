"""The training curves logged with each trial (the validation picture is drawn where the validation
runs: ``motorsearch.evaluation.pictures``).

A bare ``matplotlib.figure.Figure`` (Agg canvas, no pyplot state: no display needed and safe
from the tracker's background thread), written atomically.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure

from motorsearch.evaluation.pictures import save_png

PANELS = ("losses", "validation", "learning rate")
BEST_EPOCH_LABEL = "best epoch"  # the legend entry of the objective's epoch


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


