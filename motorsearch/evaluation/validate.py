"""Validation of a model on whole held-out tomograms, scored by the competition's rule.

Each tomogram goes through sliding-window inference (``inference``), the strongest peaks of its
heatmap become candidates (``peaks``), and the decision threshold is the one that maximises F2
over the fold (``scoring.best_threshold``) — the threshold is part of the model and is saved
with it. Only each tomogram's strongest candidate takes part in F2 (the competition takes one
prediction per tomogram); with ``validation.max_motors > 1`` the others are kept in the result.

Metrics (keys as logged by the trainer):

- ``val_f2``, ``val_precision``, ``val_recall``: at the best threshold (per-tomogram spacing,
  1000 Å hit radius, a far prediction counts only as a miss, beta 2).
- ``val_threshold``: that threshold on the heatmap probability; ``inf`` when predicting
  nothing scores best (e.g. a fold without motors; MLflow stores it as the largest float).
- ``val_dice``: soft Dice between the probability heatmap p and the Gaussian target y,
  ``(2·Σpy + 1) / (Σp + Σy + 1)`` per tomogram (smoothed by 1 so a motor-free tomogram with a
  quiet heatmap scores near 1), averaged over tomograms.
- ``val_topk_acc``: over tomograms with motors, the fraction where some true motor's output
  voxel is among the ``top_k`` (default 5) highest heatmap voxels; 0.0 for a fold without motors.
- ``val_loss`` (only with ``loss_fn``): the loss of the whole-tomogram logits against the
  whole-tomogram target, averaged over tomograms.
- ``val_ap``: threshold-free — average precision over the tomograms ranked by their strongest
  candidate's probability, hits by the competition's rule (``scoring.average_precision``);
  ``val_ap_r90``: the same above recall 0.9 only (partial AP); 0.0 for a fold without motors.
- ``val_positive_rate``: the fraction of tomograms the threshold predicts a motor in (what
  ``test_time.threshold: quantile`` predicts on new tomograms).

Heatmaps use ``test_time.tta`` views. With ``validation.unknown_spacing`` the candidates (so
F2, AP, the threshold) come the way ``predict`` finds them when a tomogram's spacing is unknown:
the test-time policy's assumed spacings (``predict.Predictor.strongest``). A tomogram cached at
``S`` Å/voxel from an original at ``s`` that is read as ``A`` is shown to the model as it would
be in ``predict``: resampled by ``A / s`` from the cache. Scoring still uses the true spacing.
Dice, top-k and loss stay on the known-spacing heatmap (the model's quality, not the policy's),
so this costs one more pass per assumed spacing.

Coordinates are voxels (z, y, x) of the cached (resampled) grid; spacings are Å per voxel.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from motorsearch.config import ExperimentConfig
from motorsearch.data.preprocess import normalize
from motorsearch.data.targets import heatmap
from motorsearch.evaluation.inference import predict_logits
from motorsearch.evaluation.peaks import find_peaks
from motorsearch.evaluation.scoring import Score, average_precision, best_threshold

TOP_K = 5
PARTIAL_AP_RECALL = 0.9
DICE_SMOOTH = 1.0

Candidate = tuple[np.ndarray, float]  # (coords (3,) in cached voxels (z, y, x), heatmap probability)


@dataclass
class ValidationResult:
    """What one validation pass found.

    Attributes:
        metrics: the ``val_*`` floats described in the module docstring.
        threshold: the decision threshold (also ``metrics["val_threshold"]``): predict a motor
            where the strongest candidate's probability is >= threshold.
        score: the F2 Score at that threshold, with TP/FP/FN counts.
        candidates: tomo_id -> up to ``validation.max_motors`` candidates, strongest first
            (empty list when the heatmap is empty).
        heatmaps: tomo_id -> the probability heatmap at the training spacing, on the model's
            output grid (small: 1/stride³ of the tomogram), e.g. for the validation picture.
    """

    metrics: dict[str, float]
    threshold: float
    score: Score
    candidates: dict[str, list[Candidate]]
    heatmaps: dict[str, np.ndarray] = field(default_factory=dict)


def validate(
    model: torch.nn.Module,
    tomograms: Sequence[Any],
    *,
    cfg: ExperimentConfig,
    device: torch.device | str,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
    top_k: int = TOP_K,
) -> ValidationResult:
    """Score ``model`` on whole tomograms.

    Args:
        model: maps (B, 1, D, H, W) to (B, 1, D/s, H/s, W/s) logits, s = ``cfg.model.stride``;
            already on ``device``. Put in eval mode for the pass, its mode restored after.
        tomograms: cached tomograms (``motorsearch.data.cache.CachedTomogram`` or anything with
            ``tomo_id``, ``spacing`` (Å/voxel), ``motors`` ((N, 3) cached voxels) and
            ``volume()`` -> (z, y, x) uint8; optional ``mean``/``std`` of the voxels for
            z-score normalisation). All must be labelled.
        cfg: uses ``data.normalization``, ``data.spacing``, ``sampling.patch_size``, ``model.stride``,
            ``target.sigma_a``, ``optim.precision``, the ``validation`` and ``test_time`` sections.
        device: where inference runs.
        loss_fn: ``loss_fn(logits, target)`` on (1, 1, d, h, w) tensors -> scalar; gives ``val_loss``.
        top_k: how many of the highest heatmap voxels count for ``val_topk_acc``.
    """
    if not tomograms:
        raise ValueError("validation needs at least one tomogram, but the validation fold is empty.")
    if top_k < 1:
        raise ValueError(f"top_k must be at least 1, but got top_k={top_k}.")
    stride = cfg.model.stride
    under_test = _test_conditions(model, cfg, device) if cfg.validation.unknown_spacing else None
    truth: dict[str, np.ndarray] = {}
    spacing: dict[str, float] = {}
    candidates: dict[str, list[Candidate]] = {}
    heatmaps: dict[str, np.ndarray] = {}
    dice, losses, topk_hits = [], [], []
    for tomogram in tomograms:
        tomo_id = tomogram.tomo_id
        if tomo_id in truth:
            raise ValueError(f"tomo_id {tomo_id!r} appears twice among the validation tomograms.")
        if tomogram.motors is None:
            raise ValueError(f"tomogram {tomo_id!r} has no labels; only labelled tomograms can be validated on.")
        motors = np.asarray(tomogram.motors, dtype=np.float64).reshape(-1, 3)
        truth[tomo_id], spacing[tomo_id] = motors, float(tomogram.spacing)

        # the cache's whole-volume statistics (z-score) save a pass; None means "compute them"
        volume = normalize(np.asarray(tomogram.volume()), cfg.data.normalization,
                           mean=getattr(tomogram, "mean", None), std=getattr(tomogram, "std", None))
        logits = predict_logits(
            model, volume, patch_size=cfg.sampling.patch_size, stride=stride, overlap=cfg.validation.overlap,
            batch_size=cfg.validation.window_batch_size, device=device, precision=cfg.optim.precision,
            tta=cfg.test_time.tta)
        del volume
        prob = torch.sigmoid(torch.from_numpy(logits)).numpy()
        heatmaps[tomo_id] = prob
        if under_test is None:
            candidates[tomo_id] = find_peaks(
                prob, stride=stride, max_peaks=cfg.validation.max_motors,
                nms_radius_vox=cfg.validation.nms_radius_a / spacing[tomo_id])
        else:
            found = under_test(tomogram)
            candidates[tomo_id] = [found] if found is not None else []

        target = heatmap(motors, (0, 0, 0), prob.shape, stride, cfg.target.sigma_a / spacing[tomo_id])
        dice.append(soft_dice(prob, target))
        if len(motors):
            topk_hits.append(in_top_k(prob, motors, stride, top_k))
        if loss_fn is not None:
            with torch.no_grad():
                value = loss_fn(torch.from_numpy(logits)[None, None], torch.from_numpy(target)[None, None])
            losses.append(float(value))

    strongest = {tomo_id: (found[0] if found else None) for tomo_id, found in candidates.items()}
    threshold, score = best_threshold(truth, strongest, spacing)
    predicted = sum(c is not None and c[1] >= threshold for c in strongest.values())
    metrics = {
        "val_f2": score.f2,
        "val_precision": score.precision,
        "val_recall": score.recall,
        "val_threshold": float(threshold),
        "val_dice": float(np.mean(dice)),
        "val_topk_acc": float(np.mean(topk_hits)) if topk_hits else 0.0,
        "val_ap": average_precision(truth, strongest, spacing),
        "val_ap_r90": average_precision(truth, strongest, spacing, recall_floor=PARTIAL_AP_RECALL),
        "val_positive_rate": predicted / len(strongest),
    }
    if loss_fn is not None:
        metrics["val_loss"] = float(np.mean(losses))
    return ValidationResult(metrics=metrics, threshold=float(threshold), score=score, candidates=candidates,
                            heatmaps=heatmaps)


def _test_conditions(model: torch.nn.Module, cfg: ExperimentConfig,
                     device: torch.device | str) -> Callable[[Any], Candidate | None]:
    """tomogram -> its strongest candidate (cached voxels) found as ``predict`` would without its spacing."""
    from motorsearch.model_file import LoadedModel
    from motorsearch.predict import Predictor, assumed_spacings

    predictor = Predictor(LoadedModel.in_memory(model, cfg), device=device)
    assumed = assumed_spacings(cfg.test_time, cfg.data.spacing)

    def candidate(tomogram: Any) -> Candidate | None:
        # read as A, an original at s shows the model what the cache (at S) resampled by A / s shows
        to_cache = float(tomogram.spacing) / float(tomogram.original_spacing)
        return predictor.strongest(np.asarray(tomogram.volume()), [a * to_cache for a in assumed])

    return candidate


def soft_dice(prob: np.ndarray, target: np.ndarray, *, smooth: float = DICE_SMOOTH) -> float:
    """``(2·Σ p·y + smooth) / (Σ p + Σ y + smooth)`` over all voxels of two same-shape heatmaps."""
    p = np.asarray(prob, dtype=np.float64)
    y = np.asarray(target, dtype=np.float64)
    return float((2.0 * (p * y).sum() + smooth) / (p.sum() + y.sum() + smooth))


def motor_voxels(motors: np.ndarray, stride: int, out_shape: tuple[int, ...]) -> np.ndarray:
    """(N, 3) int output-grid voxels holding each motor: ``floor((m + 0.5) / stride)``, clipped to the grid.

    Input voxel k spans [k - 0.5, k + 0.5), so output voxel i spans [stride*i - 0.5, stride*(i+1) - 0.5).
    """
    index = np.floor((np.asarray(motors, dtype=np.float64).reshape(-1, 3) + 0.5) / stride).astype(np.int64)
    return np.clip(index, 0, np.asarray(out_shape) - 1)


def in_top_k(prob: np.ndarray, motors: np.ndarray, stride: int, k: int) -> bool:
    """True when some motor's output voxel is among the ``k`` highest voxels of ``prob`` (d, h, w)."""
    flat = prob.ravel()
    k = min(k, flat.size)
    top = np.argpartition(-flat, k - 1)[:k]
    wanted = np.ravel_multi_index(tuple(motor_voxels(motors, stride, prob.shape).T), prob.shape)
    return bool(np.isin(wanted, top).any())
