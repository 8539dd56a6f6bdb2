"""Scoring models on the tomograms they did not train on, and the threshold those scores choose.

Each model is run on the validation fold of its own config (``data.fold``): the strongest
candidate of every tomogram, pooled over the models, is what the decision threshold is swept on
(:func:`motorsearch.evaluation.scoring.best_threshold`, the competition's F2). With one model per
fold this is every labelled tomogram, each predicted by the model that did not see it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from motorsearch.errors import InputError


@dataclass
class OutOfFold:
    """Pooled out-of-fold predictions: the threshold they choose and what it scores."""

    threshold: float
    quantile: float  # the fraction of tomograms predicted to hold a motor at that threshold
    f2: float
    tomograms: int
    folds: list[int]


def score_out_of_fold(models: Sequence[Any], *, device: str | torch.device = "cpu") -> OutOfFold:
    """Run each loaded model file of ``models`` on its own validation fold and sweep one threshold
    over the pooled candidates. InputError when two models share a fold (a tomogram would count twice)."""
    from motorsearch.data.cache import prepare
    from motorsearch.evaluation.scoring import best_threshold
    from motorsearch.evaluation.validate import validate

    truth: dict[str, np.ndarray] = {}
    spacing: dict[str, float] = {}
    strongest: dict[str, Any] = {}
    folds: list[int] = []
    for loaded in models:
        cfg = loaded.experiment_config()
        if cfg.data.fold in folds:
            raise InputError(f"{loaded.path}: two models validated on fold {cfg.data.fold}; out-of-fold scoring "
                             "takes one model per fold.")
        folds.append(cfg.data.fold)
        tomograms = prepare(cfg.data).val_tomograms(cfg.data.fold)
        result = validate(loaded.model, tomograms, cfg=cfg, device=device)
        for tomogram in tomograms:
            truth[tomogram.tomo_id] = np.asarray(tomogram.motors, dtype=np.float64).reshape(-1, 3)
            spacing[tomogram.tomo_id] = float(tomogram.spacing)
            found = result.candidates[tomogram.tomo_id]
            strongest[tomogram.tomo_id] = found[0] if found else None
    threshold, score = best_threshold(truth, strongest, spacing)
    predicted = sum(c is not None and c[1] >= threshold for c in strongest.values())
    return OutOfFold(threshold=float(threshold), quantile=predicted / len(strongest), f2=float(score.f2),
                     tomograms=len(strongest), folds=sorted(folds))
