"""A search space, loaded: what a search varies, how it schedules trials, where it runs.

:class:`SearchSpace` is what ``motorsearch.search.space_file.load_space`` makes of a space file
(``search_spaces/*.yaml``; docs/search.md lists every key): a validated base experiment, the
:class:`Parameter` entries over its dotted config paths, and the search's settings.

Sampling is Optuna's define-by-run (:class:`DefineByRun`): parameters are suggested in an order
where every parameter comes after those its ``when`` condition reads, and a conditional
parameter is suggested only when its condition holds. A condition on a path that is not a
parameter reads the base experiment's value.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from motorsearch.config import ExperimentConfig, from_dict, get_dotted, require, set_dotted
from motorsearch.errors import ConfigError
from motorsearch.objective import Objective

SAMPLERS = ("tpe", "random", "cmaes")
SCHEDULERS = ("asha", "none")
PARAMETER_TYPES = ("float", "int", "categorical")
URI_SCHEMES = ("s3://", "gs://", "gcs://", "abfs://", "hdfs://")


@dataclass(frozen=True)
class Parameter:
    """One entry of ``parameters``: a sampled (float/int/categorical) or fixed value at ``path``.

    ``when`` maps dotted paths to the tuple of values for which this parameter is active.
    """

    path: str
    type: str  # float | int | categorical | fixed
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = None
    choices: tuple[Any, ...] = ()
    value: Any = None
    when: tuple[tuple[str, tuple[Any, ...]], ...] = ()

    def active(self, values: Mapping[str, Any]) -> bool:
        """Whether every condition holds for ``values`` (path -> value, sampled or base)."""
        return all(values.get(path) in allowed for path, allowed in self.when)

    def suggest(self, trial: Any) -> Any:
        """Draw this parameter from an Optuna trial (or Ray's captor of one)."""
        if self.type == "float":
            return trial.suggest_float(self.path, self.low, self.high, log=self.log, step=self.step)
        if self.type == "int":
            return trial.suggest_int(self.path, int(self.low), int(self.high), log=self.log, step=int(self.step or 1))
        if self.type == "categorical":
            return trial.suggest_categorical(self.path, list(self.choices))
        return self.value


@dataclass(frozen=True)
class Resources:
    """What one trial asks Ray for: CPUs (1 + DataLoader workers) and GPUs (fractions share a card)."""

    cpu: float = 1.0
    gpu: float = 0.0

    def validate(self) -> None:
        require(math.isfinite(self.cpu) and self.cpu > 0, "cpu", "must be positive", self.cpu)
        require(math.isfinite(self.gpu) and self.gpu >= 0, "gpu", "cannot be negative", self.gpu)
        # fit trains on one device: a second card would sit reserved and idle
        require(self.gpu <= 1, "gpu", "must be at most 1 (a trial trains on one GPU; use fractions such as 0.25 to "
                "share a card)", self.gpu)

    def as_ray(self) -> dict[str, float]:
        return {"cpu": self.cpu, "gpu": self.gpu}


@dataclass(frozen=True)
class SchedulerSpec:
    """``type: asha`` stops poor trials at rungs of ``grace_period * reduction_factor**k`` epochs."""

    type: Literal[SCHEDULERS] = "asha"
    max_epochs: int | None = None
    grace_period: int = 1
    reduction_factor: float = 3.0

    def validate(self) -> None:
        require(self.max_epochs is None or self.max_epochs >= 1, "max_epochs", "must be at least 1", self.max_epochs)
        require(self.grace_period >= 1, "grace_period", "must be at least 1", self.grace_period)
        require(math.isfinite(self.reduction_factor) and self.reduction_factor > 1, "reduction_factor",
                "must be greater than 1", self.reduction_factor)


@dataclass(frozen=True)
class SearcherSpec:
    """The Optuna sampler; ``n_startup_trials`` random trials come first (TPE, CMA-ES)."""

    sampler: Literal[SAMPLERS] = "tpe"
    seed: int | None = None
    n_startup_trials: int = 10

    def validate(self) -> None:
        require(self.seed is None or self.seed >= 0, "seed", "must be at least 0", self.seed)
        require(self.n_startup_trials >= 0, "n_startup_trials", "must be at least 0", self.n_startup_trials)


@dataclass(frozen=True)
class ConfirmSpec:
    """``confirm: {top_k: K, folds: all}``: after the search, train its top-K finished trials again on
    the other folds and rank them by the mean (:mod:`motorsearch.search.confirm`)."""

    top_k: int = 3
    folds: Any = "all"  # "all", or a list of fold numbers

    def validate(self) -> None:
        require(self.top_k >= 1, "top_k", "must be at least 1", self.top_k)
        listed = isinstance(self.folds, list) and self.folds and all(
            isinstance(f, int) and not isinstance(f, bool) and f >= 0 for f in self.folds)
        require(self.folds == "all" or listed, "folds", "must be all or a list of fold numbers", self.folds)

    @property
    def fold_list(self) -> list[int] | None:
        """The folds asked for; None for every fold."""
        return None if self.folds == "all" else list(self.folds)


@dataclass
class SearchSpace:
    """A loaded, validated space file. ``base`` is the experiment with overrides (absolute paths)."""

    name: str
    source: Path
    experiment: Path | None
    base: ExperimentConfig
    parameters: list[Parameter]
    objective: Objective = field(default_factory=Objective)
    num_samples: int = 8
    max_concurrent: int | None = None
    resources: Resources = field(default_factory=Resources)
    scheduler: SchedulerSpec = field(default_factory=SchedulerSpec)
    searcher: SearcherSpec = field(default_factory=SearcherSpec)
    tracking_uri: str | None = None
    storage_path: str = ""
    storage_shared: bool = False
    address: str | None = None
    max_failures: int = 2
    checkpoints_to_keep: int = 2
    budget_epochs: int | None = None  # stop the search once trials have trained this many epochs in all
    confirm: ConfirmSpec | None = None  # a confirmation phase after the search

    @property
    def metric(self) -> str:
        """The reported metric the objective is taken from (and ASHA decides on each epoch)."""
        return self.objective.metric

    @property
    def mode(self) -> str:
        return self.objective.mode

    @property
    def sampled(self) -> list[Parameter]:
        return [p for p in self.parameters if p.type != "fixed"]

    @property
    def max_epochs(self) -> int:
        """The most epochs any trial trains (ASHA's ``max_t``)."""
        epochs = [p for p in self.parameters if p.path == "optim.epochs"]
        if epochs and epochs[0].type == "int":
            return int(epochs[0].high)
        if epochs and epochs[0].type == "categorical":
            return max(int(c) for c in epochs[0].choices)
        if epochs:
            return int(epochs[0].value)
        return self.base.optim.epochs

    def planned_epochs(self, values: Mapping[str, Any]) -> int:
        """The epochs a trial with sampled ``values`` is set to train; one that ends with fewer was stopped."""
        epochs = values.get("optim.epochs")
        return int(epochs) if epochs is not None else self.base.optim.epochs

    @property
    def experiment_path(self) -> str:
        """Where Tune keeps this search: ``<storage_path>/<name>`` (a URI stays a URI)."""
        return f"{self.storage_path.rstrip('/')}/{self.name}"

    def define_by_run(self) -> DefineByRun:
        return DefineByRun(self.parameters, self.base.to_dict())

    def trial_config(self, values: Mapping[str, Any], *, source: str = "trial") -> ExperimentConfig:
        """The base experiment with ``values`` (dotted path -> value) set, validated."""
        return build_trial_config(self.base.to_dict(), values, source=source)


class DefineByRun:
    """Optuna define-by-run function of a space; picklable (Ray saves the searcher with it).

    Called with an Optuna trial, suggests the active parameters in dependency order and returns
    the fixed values that apply (Ray merges them into the trial's config).
    """

    def __init__(self, parameters: Sequence[Parameter], base: dict[str, Any]):
        self.parameters = order_parameters(parameters)
        self.base_values = {path: get_dotted(base, path) for p in parameters for path, _ in p.when}

    def __call__(self, trial: Any) -> dict[str, Any] | None:
        values = dict(self.base_values)
        fixed = {}
        for parameter in self.parameters:
            if not parameter.active(values):
                continue
            values[parameter.path] = parameter.suggest(trial)
            if parameter.type == "fixed":
                fixed[parameter.path] = parameter.value
        return fixed or None


def build_trial_config(base: dict[str, Any], values: Mapping[str, Any], *, source: str) -> ExperimentConfig:
    """``from_dict`` of ``base`` (a nested config dict) with each dotted ``values`` entry set."""
    raw = copy.deepcopy(base)
    for path, value in values.items():
        set_dotted(raw, path, value)
    return from_dict(raw, source=source)


def order_parameters(parameters: Sequence[Parameter]) -> list[Parameter]:
    """File order, except that a parameter comes after every parameter its condition reads."""
    by_path = {p.path: p for p in parameters}
    ordered: list[Parameter] = []
    done: set[str] = set()

    def visit(parameter: Parameter, chain: tuple[str, ...]) -> None:
        if parameter.path in done:
            return
        if parameter.path in chain:
            cycle = " -> ".join((*chain, parameter.path))
            raise ConfigError(f"`parameters` conditions form a cycle: {cycle}.")
        for path, _ in parameter.when:
            if path in by_path:
                visit(by_path[path], (*chain, parameter.path))
        done.add(parameter.path)
        ordered.append(parameter)

    for parameter in parameters:
        visit(parameter, ())
    return ordered


def is_uri(path: str) -> bool:
    return any(path.startswith(scheme) for scheme in URI_SCHEMES) or "://" in path


