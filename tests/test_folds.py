"""k-fold assignment: stratified by has-motor, balanced, deterministic, independent of input order."""

import random

import numpy as np
import pytest

from motorsearch.data.folds import assign_folds
from motorsearch.errors import DataError


def dataset(n_positive: int, n_negative: int) -> tuple[list[str], list[bool]]:
    ids = [f"tomo_{i:03d}" for i in range(n_positive + n_negative)]
    return ids, [i < n_positive for i in range(len(ids))]


@pytest.mark.parametrize(
    "n_positive, n_negative, n_folds",
    [(362, 286, 5), (7, 3, 5), (3, 17, 4), (10, 0, 3), (0, 9, 2), (1, 1, 2), (5, 5, 5), (13, 29, 7)],
)
def test_each_fold_is_balanced(n_positive, n_negative, n_folds):
    ids, has_motor = dataset(n_positive, n_negative)
    folds = assign_folds(ids, has_motor, n_folds=n_folds, seed=0)
    assert sorted(folds) == sorted(ids)
    assert set(folds.values()) <= set(range(n_folds))
    positives = np.bincount([folds[t] for t, m in zip(ids, has_motor, strict=True) if m], minlength=n_folds)
    sizes = np.bincount(list(folds.values()), minlength=n_folds)
    # "within one tomogram of the average": counts of positives and fold sizes differ by at most 1
    assert positives.max() - positives.min() <= 1
    assert np.all(np.abs(positives - n_positive / n_folds) < 1)
    assert sizes.max() - sizes.min() <= 1


def test_deterministic_and_independent_of_input_order():
    ids, has_motor = dataset(40, 35)
    first = assign_folds(ids, has_motor, n_folds=5, seed=3)
    pairs = list(zip(ids, has_motor, strict=True))
    random.Random(1).shuffle(pairs)
    shuffled = assign_folds([p[0] for p in pairs], [p[1] for p in pairs], n_folds=5, seed=3)
    assert shuffled == first
    assert assign_folds(ids, has_motor, n_folds=5, seed=3) == first


def test_seed_changes_the_split():
    ids, has_motor = dataset(40, 35)
    assert assign_folds(ids, has_motor, n_folds=5, seed=0) != assign_folds(ids, has_motor, n_folds=5, seed=1)


def test_bad_arguments():
    with pytest.raises(ValueError, match="n_folds"):
        assign_folds(["a", "b"], [True, False], n_folds=1, seed=0)
    with pytest.raises(ValueError, match="has_motor"):
        assign_folds(["a", "b"], [True], n_folds=2, seed=0)
    with pytest.raises(DataError, match="'a' appears more than once"):
        assign_folds(["a", "a"], [True, False], n_folds=2, seed=0)
