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
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from motorsearch.config import (
    ExperimentConfig,
    apply_overrides,
    check_path,
    field_paths,
    from_dict,
    get_dotted,
    read_yaml,
    set_dotted,
    yaml_number,
)
from motorsearch.errors import ConfigError
from motorsearch.objective import MODES, OBJECTIVES, Objective
from motorsearch.registry import did_you_mean
from motorsearch.search.space import (
    PARAMETER_TYPES,
    SAMPLERS,
    SCHEDULERS,
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

_TOP_KEYS = ("name", "experiment", "overrides", "metric", "mode", "objective", "num_samples", "max_concurrent", "resources",
             "scheduler", "searcher", "tracking_uri", "storage_path", "storage_shared", "address", "max_failures",
             "checkpoints_to_keep", "budget_epochs", "confirm", "parameters")
_DATA_PATHS = ("data.cache_dir", "data.root", "data.labels")



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
    for key in raw:
        if key not in _TOP_KEYS:
            raise ConfigError(f"{path}: unknown key '{key}'.{did_you_mean(str(key), _TOP_KEYS)}")
    flags = {"name": name, "num_samples": num_samples, "storage_path": storage_path, "address": address,
             "storage_shared": storage_shared, "tracking_uri": tracking_uri, "budget_epochs": budget_epochs}
    raw.update({key: value for key, value in flags.items() if value is not None})
    reader = _Reader(path, raw)

    experiment = _find_experiment(path, reader.optional("experiment", str))
    base_raw = {} if experiment is None else (read_yaml(experiment) or {})
    if not isinstance(base_raw, dict):
        raise ConfigError(f"{experiment}: expected a mapping of config sections at the top level.")
    fixed = raw.get("overrides") or {}
    if not isinstance(fixed, dict):
        raise ConfigError(f"{path}: `overrides` must be a mapping of dotted.key: value, but got overrides={fixed!r}.")
    for key, value in fixed.items():
        check_path(str(key), where=f"{path}: `overrides.{key}`")
        set_dotted(base_raw, str(key), value)
    apply_overrides(base_raw, list(overrides))
    scheduler = _scheduler(reader)
    if scheduler.max_epochs is not None:
        set_dotted(base_raw, "optim.epochs", scheduler.max_epochs)
    for key in _DATA_PATHS:
        value = get_dotted(base_raw, key)
        if isinstance(value, str) and "://" not in value:
            set_dotted(base_raw, key, str(Path(value).expanduser().resolve()))
    if get_dotted(base_raw, "data.cache_dir") is None:
        set_dotted(base_raw, "data.cache_dir", str(Path(ExperimentConfig().data.cache_dir).resolve()))
    source = f"{path} (experiment {experiment or 'defaults'} with overrides)"
    base = from_dict(base_raw, source=source)
    for dotted, registry in _registries().items():
        if base.get(dotted) not in registry:
            raise ConfigError(f"{source}: `{dotted}` must be one of {', '.join(sorted(registry))}, but got "
                              f"{dotted}={base.get(dotted)!r}.{did_you_mean(str(base.get(dotted)), registry)}")

    space = SearchSpace(
        name=reader.optional("name", str) or path.stem,
        source=path,
        experiment=experiment,
        base=base,
        parameters=_parameters(path, raw.get("parameters"), base),
        objective=_objective(path, reader),
        num_samples=reader.integer("num_samples", 8, minimum=1),
        max_concurrent=reader.optional_integer("max_concurrent", minimum=1),
        resources=_resources(reader),
        scheduler=scheduler,
        searcher=_searcher(reader),
        tracking_uri=reader.optional("tracking_uri", str),
        storage_path=_storage_path(reader.optional("storage_path", str) or "runs"),
        storage_shared=reader.flag("storage_shared", False),
        address=reader.optional("address", str),
        max_failures=reader.integer("max_failures", 2, minimum=-1),
        checkpoints_to_keep=reader.integer("checkpoints_to_keep", 2, minimum=1),
        budget_epochs=reader.optional_integer("budget_epochs", minimum=1),
        confirm=_confirm(reader),
    )
    _check_name(path, space.name)
    _check_confirm(path, space)
    if space.scheduler.type == "asha" and space.scheduler.grace_period > space.max_epochs:
        raise ConfigError(f"{path}: `scheduler.grace_period` must not exceed the epochs a trial trains "
                          f"({space.max_epochs}), but got scheduler.grace_period={space.scheduler.grace_period}.")
    return space


def _objective(path: Path, reader: _Reader) -> Objective:
    mode = reader.choice("mode", MODES, "max")
    kind = reader.choice("objective", OBJECTIVES, "best")
    try:
        return Objective(reader.optional("metric", str) or "val_f2", mode, kind)
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


def _resources(reader: _Reader) -> Resources:
    section = reader.section("resources", ("cpu", "gpu"))
    cpu, gpu = section.number("cpu", 1.0), section.number("gpu", 0.0)
    if not cpu > 0:
        raise ConfigError(f"{reader.path}: `resources.cpu` must be positive, but got resources.cpu={cpu}.")
    if gpu < 0:
        raise ConfigError(f"{reader.path}: `resources.gpu` cannot be negative, but got resources.gpu={gpu}.")
    if gpu > 1:  # fit trains on one device: a second card would sit reserved and idle
        raise ConfigError(f"{reader.path}: `resources.gpu` must be at most 1 (a trial trains on one GPU; use "
                          f"fractions such as 0.25 to share a card), but got resources.gpu={gpu:g}.")
    return Resources(cpu=cpu, gpu=gpu)


def _scheduler(reader: _Reader) -> SchedulerSpec:
    section = reader.section("scheduler", ("type", "max_epochs", "grace_period", "reduction_factor"))
    spec = SchedulerSpec(
        type=section.choice("type", SCHEDULERS, "asha"),
        max_epochs=section.optional_integer("max_epochs", minimum=1),
        grace_period=section.integer("grace_period", 1, minimum=1),
        reduction_factor=section.number("reduction_factor", 3.0),
    )
    if not spec.reduction_factor > 1:
        raise ConfigError(f"{reader.path}: `scheduler.reduction_factor` must be greater than 1, but got "
                          f"scheduler.reduction_factor={spec.reduction_factor}.")
    return spec


def _confirm(reader: _Reader) -> ConfirmSpec | None:
    if reader.raw.get("confirm") is None:
        return None
    section = reader.section("confirm", ("top_k", "folds"))
    folds = section.raw.get("folds", "all")
    if folds != "all" and not (isinstance(folds, list) and folds
                               and all(isinstance(f, int) and not isinstance(f, bool) and f >= 0 for f in folds)):
        raise section._fail("folds", "must be all or a list of fold numbers")
    return ConfirmSpec(top_k=section.integer("top_k", 3, minimum=1), folds=None if folds == "all" else tuple(folds))


def _check_confirm(path: Path, space: SearchSpace) -> None:
    spec = space.confirm
    if spec is None:
        return
    if spec.top_k > space.num_samples:
        raise ConfigError(f"{path}: `confirm.top_k` cannot exceed num_samples={space.num_samples}, but got "
                          f"confirm.top_k={spec.top_k}.")
    n_folds = space.base.data.n_folds
    outside = [fold for fold in spec.folds or () if fold >= n_folds]
    if outside:
        raise ConfigError(f"{path}: `confirm.folds` must be folds of data.n_folds={n_folds} (0 to {n_folds - 1}), "
                          f"but got confirm.folds={list(spec.folds or ())}.")


def _searcher(reader: _Reader) -> SearcherSpec:
    section = reader.section("searcher", ("sampler", "seed", "n_startup_trials"))
    return SearcherSpec(
        sampler=section.choice("sampler", SAMPLERS, "tpe"),
        seed=section.optional_integer("seed", minimum=0),
        n_startup_trials=section.integer("n_startup_trials", 10, minimum=0),
    )


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


def _registries() -> dict[str, Mapping[str, Any]]:
    """Config fields whose values name registry entries (checked at load, not when a trial builds them)."""
    from motorsearch.losses import LOSSES
    from motorsearch.model.presets import PRESETS

    return {"loss.name": LOSSES, "model.preset": PRESETS}


def _check_registered(path: Path, dotted: str, value: Any) -> None:
    registry = _registries().get(dotted)
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


class _Reader:
    """Typed access to one mapping of the space file; errors name the file and the dotted key."""

    def __init__(self, path: Path, raw: dict[str, Any], prefix: str = ""):
        self.path, self.raw, self.prefix = path, raw, prefix

    def section(self, name: str, keys: Sequence[str]) -> _Reader:
        raw = self.raw.get(name) or {}
        key = f"{self.prefix}{name}"
        if not isinstance(raw, dict):
            raise ConfigError(f"{self.path}: `{key}` must be a mapping, but got {key}={raw!r}.")
        for item in raw:
            if item not in keys:
                full = [f"{key}.{k}" for k in keys]
                raise ConfigError(f"{self.path}: unknown key '{key}.{item}'.{did_you_mean(f'{key}.{item}', full)}")
        return _Reader(self.path, raw, f"{key}.")

    def _fail(self, name: str, rule: str) -> ConfigError:
        key = f"{self.prefix}{name}"
        return ConfigError(f"{self.path}: `{key}` {rule}, but got {key}={self.raw[name]!r}.")

    def optional(self, name: str, kind: type) -> Any:
        value = self.raw.get(name)
        if value is not None and not isinstance(value, kind):
            raise self._fail(name, f"must be a {kind.__name__}")
        return value

    def flag(self, name: str, default: bool) -> bool:
        value = self.raw.get(name, default)
        if not isinstance(value, bool):
            raise self._fail(name, "must be true or false")
        return value

    def choice(self, name: str, choices: Sequence[str], default: str) -> str:
        value = self.raw.get(name, default)
        if value not in choices:
            raise ConfigError(f"{self.path}: `{self.prefix}{name}` must be one of {', '.join(choices)}, but got "
                              f"{self.prefix}{name}={value!r}.{did_you_mean(str(value), choices)}")
        return value

    def number(self, name: str, default: float) -> float:
        value = self.raw.get(name, default)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise self._fail(name, "must be a number")
        return float(value)

    def integer(self, name: str, default: int, *, minimum: int) -> int:
        value = self.raw.get(name, default)
        if isinstance(value, bool) or not isinstance(value, int):
            raise self._fail(name, "must be an int")
        if value < minimum:
            raise self._fail(name, f"must be at least {minimum}")
        return value

    def optional_integer(self, name: str, *, minimum: int) -> int | None:
        if self.raw.get(name) is None:
            return None
        return self.integer(name, 0, minimum=minimum)
