"""The competition's F-beta score over tomograms, and the decision threshold that maximises it.

The rule (BYU "Locating Bacterial Flagellar Motors 2025", public metric code):

- A tomogram is *positive* when its truth lists at least one motor; a prediction is one point
  per tomogram or none.
- Positive tomogram, prediction within ``radius_a / spacing`` voxels of a true motor
  (distance <= radius, as the metric marks a miss only when ``distance > threshold``): TP.
- Positive tomogram, prediction further away: FN only (not also FP).
- Positive tomogram, no prediction: FN. Negative tomogram, prediction: FP. Negative, none: ignored.
- F-beta = (1 + b²)·TP / ((1 + b²)·TP + b²·FN + FP), beta = 2 (a miss costs 4x a false alarm).

Several true motors (training labels list up to 10 per tomogram; the competition's test truth
has at most one): the tomogram is still one positive, and the single prediction is a TP when it
lies within the radius of ANY true motor — the competition's nearest-motor distance, ``min``
over the listed motors.

Zero denominators follow the competition (sklearn with ``zero_division=0``): F-beta, precision
and recall are 0.0 when their denominator is 0, e.g. a set without positive tomograms and
without predictions scores 0.0, not 1.0.

Coordinates are voxels (z, y, x) of the grid the spacing (Å per voxel) belongs to.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from motorsearch.errors import DataError

COORDINATE_COLUMNS = ("Motor axis 0", "Motor axis 1", "Motor axis 2")
SPACING_COLUMN = "Voxel spacing"
ID_COLUMN = "tomo_id"
HIT_RADIUS_A = 1000.0


@dataclass(frozen=True)
class Score:
    """F-beta with its parts; counts are tomograms."""

    f2: float  # the F-beta value (named for the competition's beta = 2; see ``beta``)
    precision: float
    recall: float
    tp: int
    fp: int
    fn: int
    beta: float


def f_beta(tp: int, fp: int, fn: int, *, beta: float = 2.0) -> Score:
    """Score from counts: F-beta = (1+b²)TP / ((1+b²)TP + b²FN + FP); 0.0 where a denominator is 0."""
    b2 = beta * beta
    denominator = (1 + b2) * tp + b2 * fn + fp
    return Score(
        f2=(1 + b2) * tp / denominator if denominator else 0.0,
        precision=tp / (tp + fp) if tp + fp else 0.0,
        recall=tp / (tp + fn) if tp + fn else 0.0,
        tp=int(tp),
        fp=int(fp),
        fn=int(fn),
        beta=float(beta),
    )


def is_hit(motors: np.ndarray, prediction: np.ndarray, radius_vox: float) -> bool:
    """True when ``prediction`` (3,) lies within ``radius_vox`` (inclusive) of any of ``motors`` (N, 3)."""
    motors = np.asarray(motors, dtype=np.float64).reshape(-1, 3)
    if len(motors) == 0:
        return False
    distances = np.linalg.norm(motors - np.asarray(prediction, dtype=np.float64).reshape(1, 3), axis=1)
    return bool(distances.min() <= radius_vox)


def score_predictions(
    truth: Mapping[str, np.ndarray],
    predictions: Mapping[str, np.ndarray | None],
    spacing: Mapping[str, float],
    *,
    beta: float = 2.0,
    radius_a: float = HIT_RADIUS_A,
) -> Score:
    """Competition score of one prediction (or none) per tomogram.

    Args:
        truth: tomo_id -> (N, 3) true motors in voxels (z, y, x); shape (0, 3) for no motor.
        predictions: tomo_id -> (3,) predicted motor in voxels (z, y, x), or None for "no motor".
            Must hold exactly the tomograms of ``truth``.
        spacing: tomo_id -> Å per voxel of that tomogram's grid; the hit radius in voxels is
            ``radius_a / spacing[tomo_id]``.
        beta: F-beta's beta (2 in the competition).
        radius_a: hit radius in Å (1000 in the competition).
    """
    _check_keys(truth, predictions, spacing)
    tp = fp = fn = 0
    for tomo_id, motors in truth.items():
        prediction = predictions[tomo_id]
        positive = len(np.asarray(motors).reshape(-1, 3)) > 0
        if prediction is None:
            fn += positive
        elif not positive:
            fp += 1
        elif is_hit(motors, prediction, radius_a / spacing[tomo_id]):
            tp += 1
        else:
            fn += 1
    return f_beta(tp, fp, fn, beta=beta)


def best_threshold(
    truth: Mapping[str, np.ndarray],
    candidates: Mapping[str, tuple[np.ndarray, float] | None],
    spacing: Mapping[str, float],
    *,
    beta: float = 2.0,
    radius_a: float = HIT_RADIUS_A,
) -> tuple[float, Score]:
    """Decision threshold on the candidate score that maximises F-beta, and that score.

    A tomogram is predicted to hold its candidate when ``score >= threshold``. The thresholds
    tried are the distinct candidate scores plus ``+inf`` ("predict nothing"). Ties go to the
    HIGHEST threshold: of equally good rules, the one that predicts fewest motors.

    Args:
        truth, spacing: as in :func:`score_predictions`.
        candidates: tomo_id -> (coords (3,) in voxels (z, y, x), score) of the tomogram's best
            candidate, or None when it has none. Must hold exactly the tomograms of ``truth``.

    Returns:
        (threshold, Score at that threshold); threshold is ``math.inf`` when predicting nothing
        is best.
    """
    best = (math.inf, f_beta(0, 0, _positives(truth), beta=beta))
    for threshold, tp, fp, n_positive in _sweep(truth, candidates, spacing, radius_a=radius_a):
        score = f_beta(tp, fp, n_positive - tp, beta=beta)
        if score.f2 > best[1].f2:  # strict: on a tie the higher threshold, found first, stays
            best = (threshold, score)
    return best


def average_precision(
    truth: Mapping[str, np.ndarray],
    candidates: Mapping[str, tuple[np.ndarray, float] | None],
    spacing: Mapping[str, float],
    *,
    recall_floor: float = 0.0,
    radius_a: float = HIT_RADIUS_A,
) -> float:
    """Threshold-free ranking quality: average precision over tomograms ranked by their candidate's score.

    Hits follow the competition's rule, as in :func:`best_threshold`: a candidate within 1000 Å
    (the tomogram's own spacing) of a true motor is a TP, a candidate on a motor-free tomogram is
    an FP, a far candidate on a motor tomogram is a miss only. Lowering the threshold through the
    scores (equal scores together), each step adds ``(recall - previous recall) * precision``.
    With ``recall_floor`` r0 > 0 only recall above r0 counts, divided by ``1 - r0`` (partial AP:
    how cleanly the last motors are found). 0.0 when ``truth`` holds no motor.
    """
    if not 0.0 <= recall_floor < 1.0:
        raise ValueError(f"`recall_floor` must be in [0, 1), but got recall_floor={recall_floor}.")
    area, previous = 0.0, recall_floor
    for _, tp, fp, n_positive in _sweep(truth, candidates, spacing, radius_a=radius_a):
        if n_positive == 0 or tp + fp == 0:
            continue
        recall = tp / n_positive
        if recall > previous:
            area += (recall - previous) * tp / (tp + fp)
            previous = recall
    return area / (1.0 - recall_floor)


def _positives(truth: Mapping[str, np.ndarray]) -> int:
    return sum(len(np.asarray(motors).reshape(-1, 3)) > 0 for motors in truth.values())


def _sweep(truth: Mapping[str, np.ndarray], candidates: Mapping[str, tuple[np.ndarray, float] | None],
           spacing: Mapping[str, float], *, radius_a: float):
    """Yield (threshold, TP, FP, motor tomograms) as the threshold falls through the candidates' scores.

    Lowering the threshold in descending order adds candidates one group of equal scores at a
    time; counts are cumulative, so the sweep is linear after sorting.
    """
    _check_keys(truth, candidates, spacing)
    n_positive = _positives(truth)
    rows = []  # (score, +1 TP | 0 far miss | -1 FP) for each tomogram with a candidate
    for tomo_id, motors in truth.items():
        candidate = candidates[tomo_id]
        if candidate is None:
            continue
        coords, score = candidate
        if len(np.asarray(motors).reshape(-1, 3)) == 0:
            rows.append((float(score), -1))
        else:
            rows.append((float(score), 1 if is_hit(motors, coords, radius_a / spacing[tomo_id]) else 0))
    rows.sort(key=lambda row: row[0], reverse=True)
    tp = fp = 0
    i = 0
    while i < len(rows):
        threshold = rows[i][0]
        while i < len(rows) and rows[i][0] == threshold:
            tp += rows[i][1] == 1
            fp += rows[i][1] == -1
            i += 1
        yield threshold, tp, fp, n_positive


def score_submission_csv(solution_csv: str | Path, submission_csv: str | Path, *, beta: float = 2.0) -> Score:
    """Score a Kaggle submission file against a solution file, as the competition does.

    Solution: columns ``tomo_id``, ``Motor axis 0..2`` and ``Voxel spacing`` (extra columns such
    as ``Number of motors`` are ignored), one row per motor; a row with any coordinate ``-1``
    marks a tomogram without motor (e.g. ``train_labels.csv``).
    Submission: ``tomo_id,Motor axis 0,Motor axis 1,Motor axis 2``, one row per tomogram; any
    coordinate equal to -1 means "no motor". Its tomo_ids must be exactly the solution's.

    Raises:
        DataError: naming file, line and column for a missing column, an unreadable number, a
            non-positive spacing, a duplicate or an unknown tomo_id, or missing tomo_ids.
    """
    truth, spacing = read_solution_csv(solution_csv)
    predictions = read_submission_csv(submission_csv)
    missing = sorted(set(truth) - set(predictions))
    if missing:
        raise DataError(f"{submission_csv}: no row for {len(missing)} tomo_id(s) of {solution_csv}: "
                        f"{', '.join(missing[:5])}{' ...' if len(missing) > 5 else ''}.")
    unknown = sorted(set(predictions) - set(truth))
    if unknown:
        raise DataError(f"{submission_csv}: {len(unknown)} tomo_id(s) not in {solution_csv}: "
                        f"{', '.join(unknown[:5])}{' ...' if len(unknown) > 5 else ''}.")
    return score_predictions(truth, predictions, spacing, beta=beta)


def read_solution_csv(path: str | Path) -> tuple[dict[str, np.ndarray], dict[str, float]]:
    """Truth motors (tomo_id -> (N, 3) voxels) and spacing (tomo_id -> Å/voxel) from a solution CSV."""
    motors: dict[str, list[np.ndarray]] = {}
    spacing: dict[str, float] = {}
    for line, row in _rows(path, (ID_COLUMN, *COORDINATE_COLUMNS, SPACING_COLUMN)):
        tomo_id = row[ID_COLUMN]
        coords = np.array([_number(row, column, path, line) for column in COORDINATE_COLUMNS])
        value = _number(row, SPACING_COLUMN, path, line)
        if value <= 0:
            raise DataError(f"{path}, line {line}, column '{SPACING_COLUMN}': must be positive, "
                            f"but got {SPACING_COLUMN}={value!r}.")
        if tomo_id in spacing and spacing[tomo_id] != value:
            raise DataError(f"{path}, line {line}, column '{SPACING_COLUMN}': must be the same on every row of "
                            f"tomo_id {tomo_id}, but got {value!r} after {spacing[tomo_id]!r}.")
        spacing[tomo_id] = value
        motors.setdefault(tomo_id, [])
        if not np.any(coords == -1):
            motors[tomo_id].append(coords)
    truth = {tomo_id: np.array(listed, dtype=np.float64).reshape(-1, 3) for tomo_id, listed in motors.items()}
    return truth, spacing


def read_submission_csv(path: str | Path) -> dict[str, np.ndarray | None]:
    """Predictions (tomo_id -> (3,) voxels, or None where any coordinate is -1) from a submission CSV."""
    predictions: dict[str, np.ndarray | None] = {}
    for line, row in _rows(path, (ID_COLUMN, *COORDINATE_COLUMNS)):
        tomo_id = row[ID_COLUMN]
        if tomo_id in predictions:
            raise DataError(f"{path}, line {line}, column '{ID_COLUMN}': each tomogram must have one row, "
                            f"but tomo_id {tomo_id} appears again.")
        coords = np.array([_number(row, column, path, line) for column in COORDINATE_COLUMNS])
        predictions[tomo_id] = None if np.any(coords == -1) else coords
    return predictions


def _rows(path: str | Path, required: tuple[str, ...]):
    """Yield (line number, row dict) of a CSV after checking the header holds ``required``."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such file.")
    with path.open(newline="") as handle:
        reader = csv.reader(handle)
        header = [name.strip() for name in next(reader, [])]
        absent = [name for name in required if name not in header]
        if absent:
            raise DataError(f"{path}, line 1: missing column(s) {', '.join(repr(n) for n in absent)}; "
                            f"the header is {header}.")
        for values in reader:
            if not values or all(not v.strip() for v in values):
                continue
            if len(values) != len(header):
                raise DataError(f"{path}, line {reader.line_num}: expected {len(header)} fields as in the header, "
                                f"but got {len(values)}: {values}.")
            row = {name: value.strip() for name, value in zip(header, values, strict=True)}
            if not row[ID_COLUMN]:
                raise DataError(f"{path}, line {reader.line_num}, column '{ID_COLUMN}': must not be empty.")
            yield reader.line_num, row


def _number(row: dict[str, str], column: str, path: str | Path, line: int) -> float:
    text = row[column]
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value):
        raise DataError(f"{path}, line {line}, column '{column}': must be a finite number, but got {text!r}.")
    return value


def _check_keys(truth: Mapping[str, object], predictions: Mapping[str, object], spacing: Mapping[str, float]) -> None:
    """Programming errors, not user input: the three mappings must describe the same tomograms."""
    if set(predictions) != set(truth):
        missing = sorted(set(truth) - set(predictions))
        extra = sorted(set(predictions) - set(truth))
        raise ValueError(f"predictions must cover exactly the truth's tomograms; missing {missing[:5]}, "
                         f"extra {extra[:5]}.")
    missing_spacing = sorted(set(truth) - set(spacing))
    if missing_spacing:
        raise ValueError(f"spacing is missing for tomograms {missing_spacing[:5]}.")
    for tomo_id in truth:
        if not spacing[tomo_id] > 0:
            raise ValueError(f"spacing must be positive, but got spacing[{tomo_id!r}]={spacing[tomo_id]!r}.")
