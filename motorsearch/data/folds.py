"""Deterministic k-fold split by tomogram, stratified by whether a tomogram has a motor."""

from __future__ import annotations

import numpy as np

from motorsearch.errors import DataError


def assign_folds(tomo_ids: list[str], has_motor: list[bool], *, n_folds: int, seed: int) -> dict[str, int]:
    """Give every tomogram a fold in ``[0, n_folds)``.

    Tomograms with and without motors are each shuffled (after sorting by id, so the result does
    not depend on input order) and dealt round-robin: every fold gets the average number of
    positives give or take one, and fold sizes differ by at most one overall. The same ids,
    labels, ``n_folds`` and ``seed`` always give the same folds.
    """
    if n_folds < 2:
        raise ValueError(f"`n_folds` must be at least 2, but got n_folds={n_folds}.")
    if len(tomo_ids) != len(has_motor):
        raise ValueError(f"got {len(tomo_ids)} tomo_ids but {len(has_motor)} has_motor flags.")
    seen: set[str] = set()
    for tomo_id in tomo_ids:
        if tomo_id in seen:
            raise DataError(f"tomo_id {tomo_id!r} appears more than once; tomogram ids must be unique.")
        seen.add(tomo_id)
    pairs = sorted(zip(tomo_ids, has_motor, strict=True))
    positives = [t for t, motor in pairs if motor]
    negatives = [t for t, motor in pairs if not motor]
    rng = np.random.default_rng([seed, n_folds])
    folds: dict[str, int] = {}
    next_fold = 0
    for group in (positives, negatives):
        for position in rng.permutation(len(group)):
            folds[group[position]] = next_fold
            next_fold = (next_fold + 1) % n_folds
    return folds
