"""Typed experiment configuration, built once from YAML and validated on load.

An experiment file (``experiments/*.yaml``) describes what is trained: data, sampling, model,
loss, optimisation and validation. Every setting a search may vary is a field here, addressed
by its dotted path (``optim.lr``, ``loss.pos_weight``). Units: lengths ending in ``_a`` are in
ångström; patch sizes are voxels of the cached (resampled) grid in (z, y, x) order.

Loading is strict: unknown keys get a did-you-mean error, values are type-checked against the
field annotations, and each section's ``validate`` checks ranges. All problems surface as
:class:`~motorsearch.errors.ConfigError` naming the file and the dotted key.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from motorsearch.errors import ConfigError
from motorsearch.registry import did_you_mean


class FieldError(ValueError):
    """Raised by ``validate`` methods; the loader turns it into a ConfigError with the full path."""

    def __init__(self, name: str, rule: str, value: Any):
        super().__init__(name, rule, value)
        self.name, self.rule, self.value = name, rule, value


def _one_of(values: tuple[str, ...]) -> str:
    """``("a", "b", "c")`` -> ``"a, b or c"``, as the rules of :func:`require` say it."""
    return f"{', '.join(values[:-1])} or {values[-1]}"


def require(condition: bool, name: str, rule: str, value: Any) -> None:
    """Raise FieldError(name, rule, value) unless ``condition``; ``rule`` reads "must be positive"."""
    if not condition:
        raise FieldError(name, rule, value)


@dataclass
class SyntheticConfig:
    """The built-in simulated dataset used when ``data.root`` is null."""

    n_train: int = 24
    n_test: int = 8
    seed: int = 0
    difficulty: float = 1.0  # 0 = trivial, 1 = default (learnable on a CPU), 2-3 = hard

    def validate(self) -> None:
        require(self.n_train >= 2, "n_train", "must be at least 2", self.n_train)
        require(self.n_test >= 0, "n_test", "cannot be negative", self.n_test)
        require(self.difficulty >= 0, "difficulty", "cannot be negative", self.difficulty)


DATA_FORMATS = ("kaggle", "mrc", "zarr")  # data.format (also prepare/predict --format)
NORMALIZATIONS = ("fixed", "zscore")  # data.normalization


@dataclass
class DataConfig:
    """Where tomograms come from and how they are cached.

    ``format``: "kaggle" (``root/train/<tomo_id>/slice_NNNN.jpg`` + ``root/train_labels.csv``),
    "mrc" or "zarr" (a folder of volumes plus ``labels``, a CSV of motor coordinates in
    ``labels_unit``). ``spacing`` resamples every tomogram to that many Å per voxel; null keeps
    each native grid. ``source_spacing`` is the Å per voxel of mrc/zarr volumes, overriding their
    headers (required when a file gives none).
    """

    root: str | None = None
    format: str = "kaggle"
    labels: str | None = None
    labels_unit: str = "voxel"
    spacing: float | None = 16.0
    source_spacing: float | None = None
    normalization: str = "fixed"
    cache_dir: str = ".motorsearch/cache"
    n_folds: int = 5
    fold: int = 0
    split_seed: int = 0
    synthetic: SyntheticConfig = field(default_factory=SyntheticConfig)

    def validate(self) -> None:
        require(self.format in DATA_FORMATS, "format", f"must be {_one_of(DATA_FORMATS)}", self.format)
        require(self.labels_unit in ("voxel", "angstrom"), "labels_unit", "must be voxel or angstrom", self.labels_unit)
        require(self.spacing is None or self.spacing > 0, "spacing", "must be positive", self.spacing)
        require(self.source_spacing is None or self.source_spacing > 0, "source_spacing", "must be positive",
                self.source_spacing)
        require(self.normalization in NORMALIZATIONS, "normalization", f"must be {_one_of(NORMALIZATIONS)}",
                self.normalization)
        require(self.n_folds >= 2, "n_folds", "must be at least 2", self.n_folds)
        require(0 <= self.fold < self.n_folds, "fold", f"must be in [0, n_folds={self.n_folds})", self.fold)


@dataclass
class SamplingConfig:
    """Training patches: size, batch, and the mix of positive / hard-negative / random patches."""

    patch_size: list[int] = field(default_factory=lambda: [64, 128, 128])
    batch_size: int = 2
    patches_per_epoch: int = 64
    positive_fraction: float = 0.5
    hard_negative_fraction: float = 0.25
    hard_negative_distance_a: float = 1500.0
    num_workers: int = 0

    def validate(self) -> None:
        require(len(self.patch_size) == 3, "patch_size", "must have 3 entries (z, y, x)", self.patch_size)
        require(all(s > 0 for s in self.patch_size), "patch_size", "must be positive", self.patch_size)
        require(self.batch_size >= 1, "batch_size", "must be at least 1", self.batch_size)
        require(self.patches_per_epoch >= self.batch_size, "patches_per_epoch",
                f"must be at least batch_size={self.batch_size}", self.patches_per_epoch)
        for name in ("positive_fraction", "hard_negative_fraction"):
            value = getattr(self, name)
            require(0.0 <= value <= 1.0, name, "must be in [0, 1]", value)
        require(self.positive_fraction + self.hard_negative_fraction <= 1.0, "hard_negative_fraction",
                f"plus positive_fraction={self.positive_fraction} must not exceed 1", self.hard_negative_fraction)
        require(self.hard_negative_distance_a > 0, "hard_negative_distance_a", "must be positive",
                self.hard_negative_distance_a)
        require(self.num_workers >= 0, "num_workers", "cannot be negative", self.num_workers)


@dataclass
class AugmentConfig:
    """Training-time augmentation; labels follow every geometric transform.

    ``zoom_min``/``zoom_max``: each patch is magnified by a factor drawn log-uniformly from this
    range (1.0/1.0 = off): the model sees tomograms as if their voxel spacing were ``spacing /
    zoom``, so it learns not to depend on knowing the spacing (the Kaggle test set gives none).
    The heatmap sigma follows (it is in Å of the zoomed grid).
    """

    enabled: bool = True
    flip: bool = True
    rotate90: bool = True
    intensity_scale: float = 0.1
    intensity_shift: float = 0.1
    zoom_min: float = 1.0
    zoom_max: float = 1.0

    def validate(self) -> None:
        require(self.intensity_scale >= 0, "intensity_scale", "cannot be negative", self.intensity_scale)
        require(self.intensity_shift >= 0, "intensity_shift", "cannot be negative", self.intensity_shift)
        require(0 < self.zoom_min < float("inf"), "zoom_min", "must be positive", self.zoom_min)
        require(self.zoom_min <= self.zoom_max < float("inf"), "zoom_max",
                f"must be finite and at least zoom_min={self.zoom_min}", self.zoom_max)


@dataclass
class TargetConfig:
    """Heatmap targets at the model's output stride."""

    sigma_a: float = 200.0

    def validate(self) -> None:
        require(self.sigma_a > 0, "sigma_a", "must be positive", self.sigma_a)


@dataclass
class ModelConfig:
    """MotorIdentifier (3D FPN). ``preset`` names a size; ``base_width``/``growth`` override it."""

    preset: str = "tiny"
    stride: int = 16
    squeeze_excitation: bool = True
    drop_path: float = 0.0
    base_width: int | None = None
    growth: float | None = None

    def validate(self) -> None:
        require(self.stride in (8, 16), "stride", "must be 8 or 16", self.stride)
        require(0.0 <= self.drop_path < 1.0, "drop_path", "must be in [0, 1)", self.drop_path)
        require(self.base_width is None or self.base_width >= 1, "base_width", "must be at least 1", self.base_width)
        require(self.growth is None or self.growth >= 1.0, "growth", "must be at least 1", self.growth)


@dataclass
class LossConfig:
    """Loss by name; each loss reads only its own hyperparameters."""

    name: str = "weighted_bce"
    pos_weight: float = 10.0
    gamma: float = 2.0
    top_k_fraction: float = 0.2
    alpha: float = 2.0
    beta: float = 4.0

    def validate(self) -> None:
        require(self.pos_weight >= 0, "pos_weight", "cannot be negative", self.pos_weight)
        require(self.gamma >= 0, "gamma", "cannot be negative", self.gamma)
        require(0.0 < self.top_k_fraction <= 1.0, "top_k_fraction", "must be in (0, 1]", self.top_k_fraction)
        require(self.alpha >= 0, "alpha", "cannot be negative", self.alpha)
        require(self.beta >= 0, "beta", "cannot be negative", self.beta)


PRECISIONS = ("auto", "fp32", "bf16", "fp16")  # optim.precision


@dataclass
class OptimConfig:
    """AdamW with warm-up + cosine decay, accumulation, clipping and mixed precision.

    The head trains at ``lr``; the backbone at ``lr * backbone_lr_ratio``. ``precision`` "auto"
    means bf16 on a GPU that supports it (else fp16) and fp32 on CPU.
    """

    epochs: int = 10
    lr: float = 5e-4
    backbone_lr_ratio: float = 1.0
    weight_decay: float = 1e-4
    warmup_fraction: float = 0.1
    min_lr_fraction: float = 0.01
    batches_per_step: int = 1
    grad_clip: float | None = 1.0
    precision: str = "auto"
    seed: int = 0

    def validate(self) -> None:
        require(self.epochs >= 1, "epochs", "must be at least 1", self.epochs)
        require(self.lr > 0, "lr", "must be positive", self.lr)
        require(0 < self.backbone_lr_ratio <= 10, "backbone_lr_ratio", "must be in (0, 10]", self.backbone_lr_ratio)
        require(self.weight_decay >= 0, "weight_decay", "cannot be negative", self.weight_decay)
        require(0 <= self.warmup_fraction < 1, "warmup_fraction", "must be in [0, 1)", self.warmup_fraction)
        require(0 <= self.min_lr_fraction <= 1, "min_lr_fraction", "must be in [0, 1]", self.min_lr_fraction)
        require(self.batches_per_step >= 1, "batches_per_step", "must be at least 1", self.batches_per_step)
        require(self.grad_clip is None or self.grad_clip > 0, "grad_clip", "must be positive or null", self.grad_clip)
        require(self.precision in PRECISIONS, "precision", f"must be {_one_of(PRECISIONS)}", self.precision)


@dataclass
class ValidationConfig:
    """Whole-tomogram validation with sliding windows and competition-exact F2."""

    every: int = 1
    overlap: float = 0.5
    window_batch_size: int = 2
    max_motors: int = 1
    nms_radius_a: float = 1000.0
    unknown_spacing: bool = False  # validate as the test is posed: spacing unknown, ``test_time`` decides

    def validate(self) -> None:
        require(self.every >= 1, "every", "must be at least 1", self.every)
        require(0 <= self.overlap < 1, "overlap", "must be in [0, 1)", self.overlap)
        require(self.window_batch_size >= 1, "window_batch_size", "must be at least 1", self.window_batch_size)
        require(self.max_motors >= 1, "max_motors", "must be at least 1", self.max_motors)
        require(self.nms_radius_a > 0, "nms_radius_a", "must be positive", self.nms_radius_a)


SPACING_POLICIES = ("fixed", "multiscale")
TTA_SIZES = (1, 4, 8, 16)
THRESHOLD_STRATEGIES = ("swept", "quantile")


@dataclass
class TestTimeConfig:
    """How a trained model meets tomograms, in ``predict`` and in validation; saved in the model file.

    When a tomogram's voxel spacing is unknown (the Kaggle test set gives none), ``spacing``
    decides: ``fixed`` reads it as ``assumed_spacing_a`` Å/voxel (null: the model's own training
    spacing); ``multiscale`` predicts as if it were each of ``multiscale_spacings_a`` and keeps the
    strongest candidate, mapped back to the tomogram's own grid. ``tta``: heatmaps averaged over
    that many flips and quarter turns (1 = none). ``threshold``: ``swept`` predicts a motor where
    the strongest candidate's probability reaches the threshold chosen on validation;
    ``quantile`` predicts one in the top fraction of the tomograms given to ``predict`` (ranked by
    that probability), the fraction being the one the validation threshold predicted.
    """

    __test__ = False  # not a pytest class despite its name

    spacing: str = "fixed"
    assumed_spacing_a: float | None = None
    multiscale_spacings_a: list[float] = field(default_factory=lambda: [10.0, 13.1, 16.0, 20.0])
    tta: int = 1
    threshold: str = "swept"

    def validate(self) -> None:
        require(self.spacing in SPACING_POLICIES, "spacing", f"must be one of {', '.join(SPACING_POLICIES)}",
                self.spacing)
        require(self.assumed_spacing_a is None or self.assumed_spacing_a > 0, "assumed_spacing_a",
                "must be positive or null", self.assumed_spacing_a)
        require(len(self.multiscale_spacings_a) >= 1 and all(v > 0 for v in self.multiscale_spacings_a),
                "multiscale_spacings_a", "must be a non-empty list of positive spacings", self.multiscale_spacings_a)
        require(self.tta in TTA_SIZES, "tta", f"must be one of {', '.join(map(str, TTA_SIZES))}", self.tta)
        require(self.threshold in THRESHOLD_STRATEGIES, "threshold",
                f"must be one of {', '.join(THRESHOLD_STRATEGIES)}", self.threshold)


@dataclass
class ExperimentConfig:
    """One training run: everything needed to reproduce it."""

    name: str = "experiment"
    device: str = "auto"
    data: DataConfig = field(default_factory=DataConfig)
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    target: TargetConfig = field(default_factory=TargetConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    validation: ValidationConfig = field(default_factory=ValidationConfig)
    test_time: TestTimeConfig = field(default_factory=TestTimeConfig)

    def validate(self) -> None:
        require(self.device in ("auto", "cpu", "cuda") or self.device.startswith("cuda:"), "device",
                "must be auto, cpu, cuda or cuda:N", self.device)
        stride = self.model.stride
        require(all(s >= stride and s % stride == 0 for s in self.sampling.patch_size), "sampling.patch_size",
                f"must be multiples of model.stride={stride} (and at least that)", self.sampling.patch_size)
        require(not self.validation.unknown_spacing or self.data.spacing is not None, "validation.unknown_spacing",
                "needs a training spacing (data.spacing) to read tomograms of unknown spacing at",
                self.validation.unknown_spacing)

    def to_dict(self) -> dict[str, Any]:
        """Plain nested dict (YAML/JSON-safe) that ``from_dict`` turns back into the same config."""
        return dataclasses.asdict(self)

    def get(self, dotted: str) -> Any:
        """Value at a dotted path, e.g. ``cfg.get("optim.lr")``."""
        node: Any = self
        for part in dotted.split("."):
            node = getattr(node, part)
        return node


# ---------------------------------------------------------------------------------------------
# Loading


def field_paths(cls: type = ExperimentConfig, prefix: str = "") -> dict[str, Any]:
    """Every leaf field as ``{"optim.lr": <annotation>, ...}``; used for override and space checks."""
    paths: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        annotation = _hints(cls)[f.name]
        path = f"{prefix}{f.name}"
        if dataclasses.is_dataclass(annotation):
            paths.update(field_paths(annotation, f"{path}."))
        else:
            paths[path] = annotation
    return paths


def check_path(dotted: str, *, where: str) -> None:
    """Raise ConfigError (with did-you-mean) unless ``dotted`` names a leaf field."""
    paths = field_paths()
    if dotted not in paths:
        raise ConfigError(f"{where}: unknown config key '{dotted}'.{did_you_mean(dotted, paths)}")


def from_dict(raw: dict[str, Any] | None, *, source: str = "<config>") -> ExperimentConfig:
    """Build and validate an ExperimentConfig from a nested dict; errors name ``source`` and the key."""
    return build_typed(ExperimentConfig, raw or {}, source=source, noun="config key")


def build_typed(cls: type, raw: Any, *, source: str, noun: str = "key", prefix: str = "") -> Any:
    """The one typed YAML reader, for the experiment config and the space file alike: build the
    dataclass ``cls`` from the mapping ``raw`` and validate it (each dataclass's ``validate()``).

    Fields are typed by their annotations: ``bool``, ``int`` (ints only), ``float`` (ints widen;
    YAML 1.1's "1e-3" string read as the number, :func:`yaml_number`), ``str``, ``Literal[...]``
    (one of the listed values, with a did-you-mean), ``list[T]``, ``dict`` (a mapping, kept as it
    is), ``Any``, optional (``T | None``) and nested dataclasses (a section; ``None`` for an optional
    one left out or null). An unknown key is refused with a did-you-mean naming the ``noun``
    ("config key", "key"). Errors are ConfigError: "``source``: `key` must RULE, but got key=VALUE."
    """
    built = _build(cls, raw, prefix=prefix, source=source, noun=noun)
    _validate_tree(built, prefix=prefix, source=source)
    return built


def load_experiment(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> ExperimentConfig:
    """Read an experiment YAML, apply ``--set dotted.key=value`` overrides, validate, return it."""
    raw = read_yaml(path)
    if raw is None:  # an empty file means all defaults
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping of config sections at the top level, got {type(raw).__name__}.")
    apply_overrides(raw, overrides)
    return from_dict(raw, source=str(path))


def read_yaml(path: str | Path) -> Any:
    """Parse a YAML file; a missing file or a syntax error becomes a ConfigError naming the file."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: no such file.")
    try:
        return yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:  # PyYAML's message spans lines (problem, then where): one line here
        raise ConfigError(f"{path}: not valid YAML: {' '.join(str(exc).split())}") from None


def apply_overrides(raw: dict[str, Any], overrides: list[str] | tuple[str, ...]) -> None:
    """Apply ``dotted.key=value`` strings in place; values are parsed as YAML scalars/lists."""
    for item in overrides:
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ConfigError(f"--set {item!r}: expected dotted.key=value.")
        check_path(key, where=f"--set {item}")
        try:
            value = yaml.safe_load(text)
        except yaml.YAMLError:
            value = text
        set_dotted(raw, key, value)


def yaml_number(value: Any) -> Any:
    """``value``, except that a string YAML 1.1 did not read as a number but ``float`` does ("1e-3",
    with no dot) becomes that float."""
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            pass
    return value


def get_dotted(raw: dict[str, Any], dotted: str) -> Any:
    """``raw[a][b][c]`` for ``dotted == "a.b.c"``; None when a section or the key is missing."""
    node: Any = raw
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def set_dotted(raw: dict[str, Any], dotted: str, value: Any) -> None:
    """Set ``raw[a][b][c] = value`` for ``dotted == "a.b.c"``, creating sections as needed."""
    *parents, leaf = dotted.split(".")
    node = raw
    for part in parents:
        child = node.get(part)
        if not isinstance(child, dict):
            child = node[part] = {}
        node = child
    node[leaf] = value


def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _build(cls: type, raw: Any, *, prefix: str, source: str, noun: str = "config key") -> Any:
    if not isinstance(raw, dict):
        section = prefix.rstrip(".") or "the top level"
        shown = f"{section}={raw!r}" if prefix else repr(raw)
        raise ConfigError(f"{source}: `{section}` must be a mapping, but got {shown}.")
    hints = _hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    for key in raw:
        if key not in names:
            raise ConfigError(f"{source}: unknown {noun} '{prefix}{key}'."
                              f"{did_you_mean(f'{prefix}{key}', [f'{prefix}{n}' for n in names])}")
    kwargs = {}
    for name in names:
        if name not in raw:
            continue
        annotation = hints[name]
        section = _section_type(annotation)
        if section is not None:
            kwargs[name] = None if raw[name] is None and section is not annotation else _build(
                section, raw[name], prefix=f"{prefix}{name}.", source=source, noun=noun)
        else:
            kwargs[name] = _coerce(raw[name], annotation, key=f"{prefix}{name}", source=source)
    return cls(**kwargs)


def _section_type(annotation: Any) -> type | None:
    """The dataclass a field holds (``Section`` or ``Section | None``); None for a plain value."""
    if dataclasses.is_dataclass(annotation):
        return annotation
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        sections = [a for a in typing.get_args(annotation) if dataclasses.is_dataclass(a)]
        return sections[0] if sections else None
    return None


def _coerce(value: Any, annotation: Any, *, key: str, source: str) -> Any:
    """Check ``value`` against a field annotation; ints widen to float, nothing else is converted."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(annotation)
        if value is None and type(None) in options:
            return None
        errors = []
        for option in options:
            if option is type(None):
                continue
            try:
                return _coerce(value, option, key=key, source=source)
            except ConfigError as exc:
                errors.append(exc)
        raise errors[0]
    if origin is typing.Literal:
        choices = typing.get_args(annotation)
        if value in choices and type(value) in {type(c) for c in choices}:
            return value
        shown = ", ".join(str(c) for c in choices)
        raise ConfigError(f"{source}: `{key}` must be one of {shown}, but got {key}={value!r}."
                          f"{did_you_mean(str(value), [str(c) for c in choices])}")
    if annotation is Any:
        return value
    if annotation is dict or origin is dict:
        if not isinstance(value, dict):
            raise _type_error(key, value, "a mapping", source)
        return value
    if origin is list:
        (item_type,) = typing.get_args(annotation)
        if not isinstance(value, (list, tuple)):
            raise _type_error(key, value, f"a list of {item_type.__name__}", source)
        return [_coerce(v, item_type, key=key, source=source) for v in value]
    if annotation is bool:
        if isinstance(value, bool):
            return value
    elif annotation is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif annotation is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        value = yaml_number(value)
        if isinstance(value, float):
            return value
    elif annotation is str:
        if isinstance(value, str):
            return value
    else:  # pragma: no cover - a schema bug, not user input
        raise TypeError(f"unsupported annotation {annotation!r} for {key}")
    article = "an" if annotation is int else "a"
    raise _type_error(key, value, f"{article} {annotation.__name__}", source)


def _type_error(key: str, value: Any, expected: str, source: str) -> ConfigError:
    return ConfigError(f"{source}: `{key}` must be {expected}, but got {key}={value!r}.")


def _validate_tree(node: Any, *, prefix: str, source: str) -> None:
    for f in dataclasses.fields(node):
        child = getattr(node, f.name)
        if dataclasses.is_dataclass(child):
            _validate_tree(child, prefix=f"{prefix}{f.name}.", source=source)
    try:
        getattr(node, "validate", lambda: None)()
    except FieldError as exc:
        key = exc.name if "." in exc.name else f"{prefix}{exc.name}"
        raise ConfigError(f"{source}: `{key}` {exc.rule}, but got {key}={exc.value!r}.") from None
