"""The built-in synthetic dataset, written in the exact BYU Kaggle layout.

``simulate_dataset`` writes::

    <out>/train/<tomo_id>/slice_0000.jpg ...   8-bit grayscale JPEG per z slice (quality 90)
    <out>/test/<tomo_id>/slice_0000.jpg ...
    <out>/train_labels.csv       the 10 Kaggle columns, one row per motor, -1 rows for none
    <out>/sample_submission.csv  tomo_id + Motor axis 0..2, all -1
    <out>/test_solution.csv      the test split's labels, same columns as train_labels.csv
    <out>/simulation.json        the parameters and SIMULATOR_VERSION

Tomograms come from :func:`motorsearch.data.phantom.simulate_tomogram` (what they contain is
described there). About half the train tomograms have no motor, the others 1-3; test tomograms
have 0 or 1 (half of them 1). Everything is deterministic in ``seed``: the same arguments give
byte-identical files. The dataset is built in a temporary folder beside ``out`` and renamed into
place, so ``out`` either does not exist or is complete.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

from motorsearch.atomic import replacing
from motorsearch.data.kaggle import TomogramLabels, write_labels_csv, write_submission_csv
from motorsearch.data.phantom import simulate_tomogram
from motorsearch.errors import ConfigError, InputError

SIMULATOR_VERSION = 1  # bump whenever the output for a given seed changes
JPEG_QUALITY = 90
MOTORS_PER_POSITIVE = (1, 2, 3)
MOTORS_PER_POSITIVE_P = (0.65, 0.23, 0.12)


def simulate_dataset(
    out: Path | str,
    *,
    n_train: int,
    n_test: int,
    seed: int,
    difficulty: float = 1.0,
    scale: float = 1.0,
) -> Path:
    """Write a synthetic dataset of ``n_train`` + ``n_test`` tomograms to ``out``; returns ``out``.

    Args:
        difficulty: 0 trivial (no noise or distractors), 1 default (learnable on a CPU in
            minutes), 2-3 hard (more noise, more distractors, fainter motors).
        scale: multiplies every tomogram's physical extent; 1.0 gives about 64-96 x 160-224 x
            160-224 voxels after resampling to 16 Å. Small values make tiny test datasets.

    Raises ConfigError for bad arguments and InputError if ``out`` exists and is not empty.
    """
    _check(n_train >= 1, "n_train", "must be at least 1 (an empty train split trains nothing)", n_train)
    _check(n_test >= 0, "n_test", "cannot be negative", n_test)
    _check(difficulty >= 0, "difficulty", "cannot be negative", difficulty)
    _check(0.2 <= scale <= 2.0, "scale", "must be in [0.2, 2]", scale)
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise InputError(f"{out}: already exists and is not an empty folder; choose another output or delete it.")
    out.parent.mkdir(parents=True, exist_ok=True)

    train_ids, test_ids = _tomo_ids(seed, n_train, n_test)
    with replacing(out) as work:  # an empty ``out`` (checked above) is replaced
        work.mkdir()
        plan = {"train": (train_ids, _train_counts(seed, n_train)), "test": (test_ids, _test_counts(seed, n_test))}
        labels: dict[str, dict[str, TomogramLabels]] = {}
        for split_index, (split, (ids, counts)) in enumerate(plan.items()):
            (work / split).mkdir()
            labels[split] = {}
            for index, (tomo_id, count) in enumerate(zip(ids, counts, strict=True)):
                phantom = simulate_tomogram((seed, split_index, index), n_motors=count,
                                            difficulty=difficulty, scale=scale)
                write_slices(work / split / tomo_id, phantom.volume)
                labels[split][tomo_id] = TomogramLabels(phantom.motors, phantom.spacing, phantom.volume.shape)
        write_labels_csv(work / "train_labels.csv", dict(sorted(labels["train"].items())))
        write_labels_csv(work / "test_solution.csv", dict(sorted(labels["test"].items())))
        write_submission_csv(work / "sample_submission.csv", dict.fromkeys(sorted(test_ids)))
        parameters = {"n_train": n_train, "n_test": n_test, "seed": seed, "difficulty": difficulty,
                      "scale": scale, "simulator_version": SIMULATOR_VERSION}
        (work / "simulation.json").write_text(json.dumps(parameters, indent=2) + "\n")
    return out


def write_slices(folder: Path, volume: np.ndarray) -> None:
    """One ``slice_NNNN.jpg`` (8-bit grayscale) per z slice of a (z, y, x) uint8 volume."""
    folder.mkdir()
    for z, plane in enumerate(volume):
        Image.fromarray(plane).save(folder / f"slice_{z:04d}.jpg", format="JPEG", quality=JPEG_QUALITY)


def _tomo_ids(seed: int, n_train: int, n_test: int) -> tuple[list[str], list[str]]:
    """Unique ``tomo_xxxxxx`` ids (6 hex digits), the first ``n_train`` for train."""
    rng = np.random.default_rng((seed, 7))
    ids: list[str] = []
    seen: set[str] = set()
    while len(ids) < n_train + n_test:
        tomo_id = f"tomo_{int(rng.integers(0, 16**6)):06x}"
        if tomo_id not in seen:
            seen.add(tomo_id)
            ids.append(tomo_id)
    return ids[:n_train], ids[n_train:]


def _train_counts(seed: int, n: int) -> list[int]:
    """Motors per train tomogram: half (rounded down) have none, the rest 1-3."""
    rng = np.random.default_rng((seed, 8))
    positives = n - n // 2
    counts = [int(c) for c in rng.choice(MOTORS_PER_POSITIVE, size=positives, p=MOTORS_PER_POSITIVE_P)]
    counts += [0] * (n - positives)
    return [counts[i] for i in rng.permutation(n)]


def _test_counts(seed: int, n: int) -> list[int]:
    """Motors per test tomogram: 0 or 1, half (rounded up) with one."""
    rng = np.random.default_rng((seed, 9))
    counts = [1] * (n - n // 2) + [0] * (n // 2)
    return [counts[i] for i in rng.permutation(n)]


def _check(condition: bool, name: str, rule: str, value: object) -> None:
    if not condition:
        raise ConfigError(f"`{name}` {rule}, but got {name}={value!r}.")
