"""The search-space file format: reading and checking a ``search_spaces/*.yaml`` into a :class:`SearchSpace`.

A space file names a base experiment, fixed ``overrides`` and ``parameters`` over dotted config
paths; docs/search.md ("The search-space file") lists every key. Loading is strict: unknown keys
get a did-you-mean error, every bound and choice is checked against the ExperimentConfig field it
samples (type and range, by building a config with it; names of losses and model presets against
their registries), and all problems surface as :class:`~motorsearch.errors.ConfigError` naming the
file and key.

Paths: a relative ``experiment`` is looked up next to the space file, then in the space file's
parent folder (the project root when spaces live in ``search_spaces/``), then in the current
working directory. ``storage_path`` and the data paths (``data.cache_dir``, ``data.root``,
``data.labels``) are relative to the current working directory and made absolute on load,
because Ray Tune runs each trial in its own working directory.
"""

from __future__ import annotations

import math
import types
import typing
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from motorsearch.config import (
    ExperimentConfig,
    apply_overrides,
    build_typed,
    check_path,
    field_paths,
    from_dict,
    get_dotted,
    read_yaml,
    require,
    set_dotted,
    yaml_number,
)
from motorsearch.errors import ConfigError
from motorsearch.objective import MODES, OBJECTIVES, Objective
from motorsearch.registry import check_registered, config_registries, did_you_mean
from motorsearch.search.space import (
    PARAMETER_TYPES,
    ConfirmSpec,
    Parameter,
    Resources,
    SchedulerSpec,
    SearcherSpec,
    SearchSpace,
    build_trial_config,
    is_uri,
    order_parameters,
)

_DATA_PATHS = ("data.cache_dir", "data.root", "data.labels")
# SpaceFile keys that a SearchSpace holds as the file gives them
_AS_WRITTEN = ("num_samples", "max_concurrent", "resources", "scheduler", "searcher", "tracking_uri", "storage_shared",
               "address", "max_failures", "checkpoints_to_keep", "budget_epochs", "confirm")


@dataclass
class SpaceFile:
    """The keys of a space file, typed, as :func:`motorsearch.config.build_typed` reads them (the
    experiment config's reader); :func:`load_space` makes a :class:`SearchSpace` of them."""

    name: str | None = None
    experiment: str | None = None
    overrides: dict = field(default_factory=dict)
    metric: str = "val_f2"
    mode: Literal[MODES] = "max"
    objective: Literal[OBJECTIVES] = "best"
    num_samples: int = SearchSpace.num_samples
    max_concurrent: int | None = None
    resources: Resources = field(default_factory=Resources)
    scheduler: SchedulerSpec = field(default_factory=SchedulerSpec)
    searcher: SearcherSpec = field(default_factory=SearcherSpec)
    tracking_uri: str | None = None
    storage_path: str | None = None
    storage_shared: bool = False
    address: str | None = None
    max_failures: int = SearchSpace.max_failures
    checkpoints_to_keep: int = SearchSpace.checkpoints_to_keep
    budget_epochs: int | None = None
    confirm: ConfirmSpec | None = None
    parameters: Any = None  # read by _parameters, against the base experiment

    def validate(self) -> None:
        require(self.num_samples >= 1, "num_samples", "must be at least 1", self.num_samples)
        require(self.max_concurrent is None or self.max_concurrent >= 1, "max_concurrent", "must be at least 1",
                self.max_concurrent)
        require(self.max_failures >= -1, "max_failures", "must be at least -1", self.max_failures)
        require(self.checkpoints_to_keep >= 1, "checkpoints_to_keep", "must be at least 1", self.checkpoints_to_keep)
        require(self.budget_epochs is None or self.budget_epochs >= 1, "budget_epochs", "must be at least 1",
                self.budget_epochs)


def load_space(path: str | Path, *, overrides: Sequence[str] = (), name: str | None = None,
               num_samples: int | None = None, storage_path: str | None = None,
               address: str | None = None, storage_shared: bool | None = None,
               tracking_uri: str | None = None, budget_epochs: int | None = None) -> SearchSpace:
    """Read and validate a space file. ``overrides`` (``--set k=v``) apply to the base experiment;
    the keyword arguments replace the file's values (command-line flags)."""
    path = Path(path)
    raw = read_yaml(path)
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping of search settings at the top level, got {raw!r}.")
    flags = {"name": name, "num_samples": num_samples, "storage_path": storage_path, "address": address,
             "storage_shared": storage_shared, "tracking_uri": tracking_uri, "budget_epochs": budget_epochs}
    raw.update({key: value for key, value in flags.items() if value is not None})
    file = build_typed(SpaceFile, {k: v for k, v in raw.items() if not (k == "overrides" and v is None)},
                       source=str(path))

    experiment = _find_experiment(path, file.experiment)
    base_raw = {} if experiment is None else (read_yaml(experiment) or {})
    if not isinstance(base_raw, dict):
        raise ConfigError(f"{experiment}: expected a mapping of config sections at the top level.")
    for key, value in file.overrides.items():
        check_path(str(key), where=f"{path}: `overrides.{key}`")
        set_dotted(base_raw, str(key), value)
    apply_overrides(base_raw, list(overrides))
    if file.scheduler.max_epochs is not None:
        set_dotted(base_raw, "optim.epochs", file.scheduler.max_epochs)
    for key in _DATA_PATHS:
        value = get_dotted(base_raw, key)
        if isinstance(value, str) and "://" not in value:
            set_dotted(base_raw, key, str(Path(value).expanduser().resolve()))
    if get_dotted(base_raw, "data.cache_dir") is None:
        set_dotted(base_raw, "data.cache_dir", str(Path(ExperimentConfig().data.cache_dir).resolve()))
    source = f"{path} (experiment {experiment or 'defaults'} with overrides)"
    base = from_dict(base_raw, source=source)
    check_registered(base, source=source)

    space = SearchSpace(
        name=file.name or path.stem,
        source=path,
        experiment=experiment,
        base=base,
        parameters=_parameters(path, file.parameters, base),
        objective=_objective(path, file),
        storage_path=_storage_path(file.storage_path or "runs"),
        **{name: getattr(file, name) for name in _AS_WRITTEN},
    )
    _check_name(path, space.name)
    _check_confirm(path, space)
    if space.scheduler.type == "asha" and space.scheduler.grace_period > space.max_epochs:
        raise ConfigError(f"{path}: `scheduler.grace_period` must not exceed the epochs a trial trains "
                          f"({space.max_epochs}), but got scheduler.grace_period={space.scheduler.grace_period}.")
    return space


def _objective(path: Path, file: SpaceFile) -> Objective:
    try:
        return Objective(file.metric, file.mode, file.objective)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None


def _storage_path(value: str) -> str:
    return value if is_uri(value) else str(Path(value).expanduser().resolve())


def _check_name(path: Path, name: str) -> None:
    if not name or "/" in name or name.startswith(".") or name.strip() != name:
        raise ConfigError(f"{path}: `name` must be a plain folder name (no '/', not starting with '.'), "
                          f"but got name={name!r}.")


def _find_experiment(space_file: Path, value: str | None) -> Path | None:
    if value is None:
        return None
    given = Path(value).expanduser()
    candidates = [given] if given.is_absolute() else [space_file.parent / given, space_file.parent.parent / given,
                                                      Path.cwd() / given]
    for candidate in candidates:
        if candidate.is_file():
            return candidate.resolve()
    tried = ", ".join(str(c) for c in dict.fromkeys(candidates))
    raise ConfigError(f"{space_file}: `experiment` names no file, but got experiment={value!r} (tried {tried}).")


def _check_confirm(path: Path, space: SearchSpace) -> None:
    spec = space.confirm
    if spec is None:
        return
    if spec.top_k > space.num_samples:
        raise ConfigError(f"{path}: `confirm.top_k` cannot exceed num_samples={space.num_samples}, but got "
                          f"confirm.top_k={spec.top_k}.")
    n_folds = space.base.data.n_folds
    outside = [fold for fold in spec.fold_list or () if fold >= n_folds]
    if outside:
        raise ConfigError(f"{path}: `confirm.folds` must be folds of data.n_folds={n_folds} (0 to {n_folds - 1}), "
                          f"but got confirm.folds={spec.fold_list}.")


def _parameters(path: Path, raw: Any, base: ExperimentConfig) -> list[Parameter]:
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: `parameters` must be a mapping of dotted.config.path: spec, but got {raw!r}.")
    fields = field_paths()
    parameters = []
    for dotted, spec in raw.items():
        key = f"parameters.{dotted}"
        if dotted not in fields:
            raise ConfigError(f"{path}: `{key}`: unknown config key '{dotted}'.{did_you_mean(str(dotted), fields)}")
        parameters.append(_parameter(path, key, dotted, spec, fields[dotted]))
    # the values first: a typo in a categorical's choices is that choice's fault, not the fault of a
    # `when:` that names the right value
    base_dict = base.to_dict()
    for parameter in parameters:
        for value in _values_to_check(parameter):
            _check_registered(path, parameter.path, value)
            try:
                build_trial_config(base_dict, {parameter.path: value}, source="")
            except ConfigError as exc:
                detail = str(exc).removeprefix(": ")
                raise ConfigError(f"{path}: `parameters.{parameter.path}` can take {value!r}, which the experiment "
                                  f"config rejects: {detail}") from None
    by_path = {p.path: p for p in parameters}
    for parameter in parameters:
        for when_path, allowed in parameter.when:
            key = f"parameters.{parameter.path}.when.{when_path}"
            if when_path not in fields:
                raise ConfigError(f"{path}: `{key}`: unknown config key '{when_path}'.{did_you_mean(when_path, fields)}")
            source = by_path.get(when_path)
            if source is not None and source.type == "categorical":
                for value in allowed:
                    if value not in source.choices:
                        names = [str(c) for c in source.choices]
                        raise ConfigError(f"{path}: `{key}` must be among the choices of parameters.{when_path} "
                                          f"({', '.join(names)}), but got {value!r}.{did_you_mean(str(value), names)}")
    try:
        order_parameters(parameters)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None
    return parameters


_SPEC_KEYS = {
    "float": ("type", "low", "high", "log", "step", "when"),
    "int": ("type", "low", "high", "log", "step", "when"),
    "categorical": ("type", "choices", "when"),
    "fixed": ("value", "when"),
}


def _parameter(path: Path, key: str, dotted: str, spec: Any, annotation: Any) -> Parameter:
    if not isinstance(spec, dict):
        raise ConfigError(f"{path}: `{key}` must be a mapping like {{type: float, low: 0.1, high: 1}} or "
                          f"{{value: X}}, but got {key}={spec!r}.")
    if "value" in spec:
        kind = "fixed"
    else:
        kind = spec.get("type")
        if kind not in PARAMETER_TYPES:
            raise ConfigError(f"{path}: `{key}.type` must be float, int or categorical (or give `value:` for a fixed "
                              f"value), but got {key}.type={kind!r}.{did_you_mean(str(kind), PARAMETER_TYPES)}")
    for name in spec:
        if name not in _SPEC_KEYS[kind]:
            raise ConfigError(f"{path}: unknown key '{key}.{name}' for a {kind} parameter."
                              f"{did_you_mean(str(name), _SPEC_KEYS[kind])}")
    when = _when(path, key, spec.get("when"))
    if kind == "fixed":
        return Parameter(dotted, "fixed", value=spec["value"], when=when)
    if kind == "categorical":
        choices = spec.get("choices")
        if not isinstance(choices, list) or not choices:
            raise ConfigError(f"{path}: `{key}.choices` must be a non-empty list, but got {key}.choices={choices!r}.")
        for choice in choices:
            if not (choice is None or isinstance(choice, (bool, int, float, str))):
                raise ConfigError(f"{path}: `{key}.choices` must hold plain values (Optuna stores numbers, strings, "
                                  f"booleans or null), but got {choice!r}.")
        return Parameter(dotted, "categorical", choices=tuple(choices), when=when)

    scalars = _scalar_types(annotation)
    if kind == "int" and int not in scalars:
        raise ConfigError(f"{path}: `{key}` has type int, but the config field {dotted} holds "
                          f"{_describe(annotation)}; use type float or categorical.")
    if kind == "float" and float not in scalars:
        hint = "; use type int" if int in scalars else "; use type categorical"
        raise ConfigError(f"{path}: `{key}` has type float, but the config field {dotted} holds "
                          f"{_describe(annotation)}{hint}.")
    low, high = _bound(path, key, spec, "low", kind), _bound(path, key, spec, "high", kind)
    if not low < high:
        raise ConfigError(f"{path}: `{key}.low` must be below {key}.high={high}, but got {key}.low={low}.")
    log = spec.get("log", False)
    if not isinstance(log, bool):
        raise ConfigError(f"{path}: `{key}.log` must be true or false, but got {key}.log={log!r}.")
    if log and low <= 0:
        raise ConfigError(f"{path}: `{key}.low` must be positive with log: true, but got {key}.low={low}.")
    step = spec.get("step")
    if step is not None:
        step = _bound(path, key, spec, "step", kind)
        if not step > 0:
            raise ConfigError(f"{path}: `{key}.step` must be positive, but got {key}.step={step}.")
        if log:
            raise ConfigError(f"{path}: `{key}` cannot have both log: true and a step (Optuna supports one or the "
                              f"other), but got {key}.step={step}.")
    return Parameter(dotted, kind, low=low, high=high, log=log, step=step, when=when)


def _bound(path: Path, key: str, spec: dict, name: str, kind: str) -> float:
    value = yaml_number(spec.get(name))
    if kind == "int":
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if not isinstance(value, int) or isinstance(value, bool):
            raise ConfigError(f"{path}: `{key}.{name}` must be an int, but got {key}.{name}={spec.get(name)!r}.")
        return value
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
        raise ConfigError(f"{path}: `{key}.{name}` must be a finite number, but got {key}.{name}={spec.get(name)!r}.")
    return float(value)


def _when(path: Path, key: str, raw: Any) -> tuple[tuple[str, tuple[Any, ...]], ...]:
    if raw is None:
        return ()
    if not isinstance(raw, dict) or not raw:
        raise ConfigError(f"{path}: `{key}.when` must be a mapping of dotted.path: value (or a list of values), "
                          f"but got {key}.when={raw!r}.")
    return tuple((str(p), tuple(v) if isinstance(v, list) else (v,)) for p, v in raw.items())


def _check_registered(path: Path, dotted: str, value: Any) -> None:
    registry = config_registries().get(dotted)
    if registry is not None and value not in registry:
        raise ConfigError(f"{path}: `parameters.{dotted}` can take {value!r}, which is not one of "
                          f"{', '.join(sorted(registry))}.{did_you_mean(str(value), registry)}")


def _values_to_check(parameter: Parameter) -> list[Any]:
    if parameter.type == "fixed":
        return [parameter.value]
    if parameter.type == "categorical":
        return list(parameter.choices)
    if parameter.type == "int":
        return [int(parameter.low), int(parameter.high)]
    return [parameter.low, parameter.high]


def _scalar_types(annotation: Any) -> set[type]:
    """{float, int}, {int}, {str}, ... of a field annotation; float fields also take ints."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        found: set[type] = set()
        for option in typing.get_args(annotation):
            found |= _scalar_types(option)
        return found
    if annotation is float:
        return {float, int}
    if annotation in (int, str, bool):
        return {annotation}
    return set()  # lists etc.: categorical or fixed only


def _describe(annotation: Any) -> str:
    return getattr(annotation, "__name__", None) or str(annotation).replace("typing.", "")
