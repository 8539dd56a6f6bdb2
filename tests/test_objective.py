"""The objective: one number per trial, one tie rule, checked names."""

from __future__ import annotations

import math

import pytest

from motorsearch.errors import ConfigError
from motorsearch.objective import Objective, is_better


def history(*values: float) -> list[dict[str, float]]:
    return [{"epoch": float(epoch), "val_f2": value} for epoch, value in enumerate(values, start=1)]


@pytest.mark.parametrize(("kind", "mode", "values", "expected"), [
    ("best", "max", (0.3, 0.8, 0.6), (0.8, 2)),
    ("best", "max", (0.5, 1.0, 1.0, 0.9), (1.0, 3)),  # a tie goes to the later epoch
    ("best", "min", (0.5, 0.2, 0.2, 0.4), (0.2, 3)),
    ("best", "max", (math.nan, 0.4, math.nan), (0.4, 2)),  # NaN is never best
    ("last", "max", (0.3, 0.8, 0.6), (0.6, 3)),
    ("last", "max", (0.3, 0.8, math.nan), (0.8, 2)),  # the last finite value
    ("best", "max", (math.nan,), None),
    ("best", "max", (), None),
])
def test_pick(kind: str, mode: str, values: tuple, expected: tuple | None) -> None:
    assert Objective("val_f2", mode, kind).pick(history(*values)) == expected


def test_report_names_the_value_and_its_epoch() -> None:
    assert Objective().report(history(0.2, 0.7, 0.5)) == {"best_val_f2": 0.7, "best_epoch": 2.0}
    assert Objective("val_loss", "min", "last").report([{"epoch": 1.0, "val_loss": 0.3}]) == {
        "last_val_loss": 0.3, "last_epoch": 1.0}
    assert Objective().report(history(math.nan)) == {}


@pytest.mark.parametrize(("value", "incumbent", "mode", "expected"), [
    (0.5, None, "max", True), (0.5, 0.5, "max", True), (0.4, 0.5, "max", False),
    (0.5, 0.5, "min", True), (0.6, 0.5, "min", False), (math.nan, None, "max", False), (0.1, math.nan, "min", True),
])
def test_is_better(value: float, incumbent: float | None, mode: str, expected: bool) -> None:
    assert is_better(value, incumbent, mode) is expected


@pytest.mark.parametrize(("arguments", "message"), [
    (("val_f3", "max", "best"), "`metric` must be one of the metrics a trial reports (epoch, train_loss, lr, val_f2, "),
    (("val_f3", "max", "best"), "but got metric='val_f3'. Did you mean 'val_f2'?"),
    (("val_f2", "maximum", "best"), "`mode` must be max or min, but got mode='maximum'."),
    (("val_f2", "max", "lst"), "`objective` must be one of best, last, but got objective='lst'. Did you mean 'last'?"),
])
def test_bad_objectives_name_the_key_and_value(arguments: tuple, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        Objective(*arguments)
    assert message in str(info.value)
