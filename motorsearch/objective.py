"""The number a search optimises for each trial, defined once.

A trial reports its metrics after every validation epoch. Its *objective* is one number taken
from that history, chosen by the space file's ``objective``:

- ``best`` (the default): the best value of ``metric`` over the trial's epochs;
- ``last``: the value of ``metric`` at the trial's last validation epoch.

The same number, computed by :meth:`Objective.pick`, is what the trial reports to Tune
(``Objective.value_key``, with the epoch it comes from in ``Objective.epoch_key``), what the
Optuna searcher is told, what MLflow stores on the trial's run, and what the leaderboard,
``best`` and ``export`` rank by. The model file that goes with it is the checkpoint of that epoch.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from motorsearch.errors import ConfigError
from motorsearch.registry import did_you_mean

OBJECTIVES = ("best", "last")
MODES = ("max", "min")
# What the trainer reports after each validation epoch (see ``training.trainer``); any of these
# can be a search's ``metric``.
REPORTED_METRICS = ("epoch", "train_loss", "lr", "val_f2", "val_precision", "val_recall", "val_threshold",
                    "val_loss", "val_dice", "val_topk_acc", "val_ap", "val_ap_r90", "val_positive_rate",
                    "epoch_time_s")


def check_mode(mode: str, *, key: str = "mode") -> str:
    """``mode`` if it is "max" or "min"; ConfigError otherwise."""
    if mode not in MODES:
        raise ConfigError(f"`{key}` must be max or min, but got {key}={mode!r}.")
    return mode


def sort_sign(mode: str) -> float:
    """-1.0 for ``mode`` "max", 1.0 for "min": ``sign * value`` sorts the better values first (ascending)."""
    return -1.0 if check_mode(mode) == "max" else 1.0


def is_better(value: float, incumbent: float | None, mode: str) -> bool:
    """Whether ``value``, seen after ``incumbent``, takes its place as the best of a trial's epochs.

    NaN is never better. A tie goes to ``value``, the later epoch: it has trained longer, and on
    a small validation fold F2 saturates (1.0 from an early epoch on) while the heatmaps keep
    improving. Tune keeps checkpoints the same way (on equal scores the later one ranks higher),
    so the epoch this rule picks is the one whose checkpoint Tune keeps. This is the only place
    the rule is written; the trainer, the trial's reports, MLflow and ``export`` all follow it.
    """
    if math.isnan(value):
        return False
    if incumbent is None or math.isnan(incumbent):
        return True
    return value >= incumbent if mode == "max" else value <= incumbent


@dataclass(frozen=True)
class Objective:
    """Which number of a trial's history a search optimises (see the module docstring)."""

    metric: str = "val_f2"
    mode: str = "max"
    kind: str = "best"

    def __post_init__(self) -> None:
        check_mode(self.mode)
        if self.kind not in OBJECTIVES:
            raise ConfigError(f"`objective` must be one of {', '.join(OBJECTIVES)}, but got objective={self.kind!r}."
                              f"{did_you_mean(str(self.kind), OBJECTIVES)}")
        if self.metric not in REPORTED_METRICS:
            raise ConfigError(f"`metric` must be one of the metrics a trial reports ({', '.join(REPORTED_METRICS)}), "
                              f"but got metric={self.metric!r}.{did_you_mean(str(self.metric), REPORTED_METRICS)}")

    @property
    def value_key(self) -> str:
        """Name of the objective in trial reports and in MLflow: ``best_val_f2`` or ``last_val_f2``."""
        return f"{self.kind}_{self.metric}"

    @property
    def epoch_key(self) -> str:
        """Name of the epoch the objective comes from: ``best_epoch`` or ``last_epoch``."""
        return f"{self.kind}_epoch"

    @property
    def direction(self) -> str:
        """Optuna's word for ``mode``."""
        return "maximize" if self.mode == "max" else "minimize"

    def pick(self, history: Sequence[Mapping[str, float]]) -> tuple[float, int] | None:
        """(value, epoch) of the objective over ``history`` (one metrics dict per validation epoch,
        in epoch order, each with ``epoch``); None while no epoch has a finite value of ``metric``."""
        chosen: tuple[float, int] | None = None
        for entry in history:
            value = float(entry.get(self.metric, math.nan))
            if math.isnan(value):
                continue
            if self.kind == "last" or is_better(value, None if chosen is None else chosen[0], self.mode):
                chosen = (value, int(entry["epoch"]))
        return chosen

    def report(self, history: Sequence[Mapping[str, float]]) -> dict[str, float]:
        """The objective as report keys (``{value_key: v, epoch_key: e}``; empty while there is none)."""
        chosen = self.pick(history)
        if chosen is None:
            return {}
        return {self.value_key: chosen[0], self.epoch_key: float(chosen[1])}
