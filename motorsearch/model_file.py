"""The self-contained model file: everything ``predict`` needs, in one ``torch.load``-safe file.

A model file is ``torch.save`` of a dict of plain Python values and tensors, so it loads with
``torch.load(path, weights_only=True)`` (no code runs on load)::

    format            "motorsearch-model"
    format_version    FORMAT_VERSION (2; version 1 files, without ``sha256``, are read when a
                      ``.sha256`` sidecar vouches for them)
    motorsearch_version
    sha256            :func:`content_sha256` of everything else in the file: a changed byte is
                      refused even where no sidecar travels with the file
    state_dict        the MotorIdentifier weights (CPU tensors)
    architecture      MotorIdentifier(**architecture) rebuilds the network
    members           (an ensemble, instead of state_dict/architecture) a list of
                      {state_dict, architecture, metrics, extra}, one per member; the loaded
                      model is a ``MotorEnsemble`` that averages their heatmaps
    preprocessing     spacing (Å/voxel of the training grid, None = native grid),
                      normalization ("fixed" | "zscore"), patch_size [z, y, x] voxels, stride,
                      overlap, window_batch_size, max_motors, nms_radius_a (Å), precision,
                      test_time (the config's ``test_time`` section: the unknown-spacing
                      policy, TTA, threshold strategy; absent in older files: the defaults)
    threshold         decision threshold on the heatmap probability (inf: never predict a motor)
    quantile          the fraction of validation tomograms that threshold predicted a motor in
                      (``test_time.threshold: quantile`` predicts that fraction; optional)
    metrics           validation metrics of the epoch it was saved at (floats)
    config            the whole experiment config as a plain dict
    extra             anything else the caller added (plain values)

Files are written atomically (:mod:`motorsearch.atomic`).
``write_checksum`` adds ``<file>.sha256`` in ``sha256sum`` format (the digest of the file's bytes,
for ``sha256sum -c`` and MLflow); ``load_model_file`` checks it whenever it exists, and always
checks the ``sha256`` inside.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from motorsearch import __version__
from motorsearch.atomic import replacing, write_text
from motorsearch.config import ExperimentConfig, from_dict
from motorsearch.errors import ModelFileError

FORMAT = "motorsearch-model"
FORMAT_VERSION = 2
_UNSEALED_VERSION = 1  # files from before the inner sha256: read only with a sidecar
_REQUIRED = ("preprocessing", "threshold", "metrics", "config")
_NETWORK = ("state_dict", "architecture")  # a single model; an ensemble has ``members`` instead
SEAL = "sha256"


@dataclass
class LoadedModel:
    """A model file, loaded: ``model`` (MotorIdentifier in eval mode on the requested device) and its facts."""

    model: torch.nn.Module
    architecture: dict[str, Any]
    preprocessing: dict[str, Any]
    threshold: float
    metrics: dict[str, float]
    config: dict[str, Any]
    format_version: int
    motorsearch_version: str
    path: Path
    extra: dict[str, Any] = field(default_factory=dict)
    quantile: float | None = None
    members: int = 1  # > 1: an ensemble whose heatmaps are averaged

    def experiment_config(self) -> ExperimentConfig:
        """The experiment config the model was trained with, rebuilt and validated."""
        return from_dict(self.config, source=f"{self.path} (config)")

    @classmethod
    def in_memory(cls, model: torch.nn.Module, cfg: ExperimentConfig, *, threshold: float = math.inf) -> LoadedModel:
        """A model being trained, seen as a model file would show it (for validation under test conditions)."""
        return cls(model=model, architecture=dict(getattr(model, "architecture", {}) or {}),
                   preprocessing=preprocessing_of(cfg), threshold=threshold, metrics={}, config=cfg.to_dict(),
                   format_version=FORMAT_VERSION, motorsearch_version=__version__, path=Path("<model in training>"))


def preprocessing_of(cfg: ExperimentConfig) -> dict[str, Any]:
    """How ``cfg`` prepares a tomogram for the model: the model file's ``preprocessing``."""
    return {
        "spacing": cfg.data.spacing,
        "normalization": cfg.data.normalization,
        "patch_size": [int(p) for p in cfg.sampling.patch_size],
        "stride": int(cfg.model.stride),
        "overlap": float(cfg.validation.overlap),
        "window_batch_size": int(cfg.validation.window_batch_size),
        "max_motors": int(cfg.validation.max_motors),
        "nms_radius_a": float(cfg.validation.nms_radius_a),
        "precision": cfg.optim.precision,
        "test_time": dataclasses.asdict(cfg.test_time),
    }


def model_payload(*, model: torch.nn.Module, cfg: ExperimentConfig, threshold: float,
                  metrics: dict[str, float], extra: dict[str, Any] | None = None,
                  quantile: float | None = None) -> dict[str, Any]:
    """The dict ``save_model_file`` writes (see the module docstring)."""
    architecture = getattr(model, "architecture", None)
    if not isinstance(architecture, dict):
        raise TypeError("`model` must be a MotorIdentifier (it needs an `architecture` dict).")
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "motorsearch_version": __version__,
        "state_dict": _cpu_weights(model),
        "architecture": dict(architecture),
        "preprocessing": preprocessing_of(cfg),
        "threshold": float(threshold),
        "quantile": None if quantile is None else float(quantile),
        "metrics": {str(k): float(v) for k, v in metrics.items()},
        "config": cfg.to_dict(),
        "extra": dict(extra or {}),
    }


def ensemble_payload(members: list[LoadedModel], *, threshold: float, metrics: dict[str, float],
                     quantile: float | None = None, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """The dict of an ensemble file of the loaded model files ``members``.

    ModelFileError when the members do not prepare a tomogram the same way (:func:`preprocessing_mismatch`).
    The ensemble keeps the first member's preprocessing and config; each member keeps its weights,
    architecture, metrics and extra.
    """
    if not members:
        raise ValueError("an ensemble needs at least one member.")
    for member in members[1:]:
        difference = preprocessing_mismatch(members[0], member)
        if difference:
            raise ModelFileError(f"{member.path}: cannot join an ensemble with {members[0].path}: {difference}.")
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "motorsearch_version": __version__,
        "members": [{"state_dict": _cpu_weights(m.model), "architecture": dict(m.architecture),
                     "metrics": dict(m.metrics), "extra": dict(m.extra)} for m in members],
        "preprocessing": dict(members[0].preprocessing),
        "threshold": float(threshold),
        "quantile": None if quantile is None else float(quantile),
        "metrics": {str(k): float(v) for k, v in metrics.items()},
        "config": dict(members[0].config),
        "extra": dict(extra or {}),
    }


def preprocessing_mismatch(first: LoadedModel, other: LoadedModel) -> str | None:
    """How ``other`` prepares or reads a tomogram differently from ``first`` (None: the same), e.g.
    ``"stride 16 vs 8"``: members of an ensemble must share every preprocessing value."""
    if first.members > 1 or other.members > 1:
        return "an ensemble cannot be a member of another"
    for key in sorted(set(first.preprocessing) | set(other.preprocessing)):
        a, b = first.preprocessing.get(key), other.preprocessing.get(key)
        if a != b:
            return f"{key} {a!r} vs {b!r}"
    return None


def content_sha256(payload: dict[str, Any]) -> str:
    """The sha256 of a model file's content: every key but ``sha256``, tensors by dtype, shape and bytes.

    Independent of how ``torch.save`` lays the bytes out, so it survives a round trip through
    ``torch.load`` and changes with any value or weight.
    """
    digest = hashlib.sha256()

    def feed(value: Any, where: str) -> None:
        if isinstance(value, torch.Tensor):
            flat = value.detach().cpu().contiguous().reshape(-1)
            digest.update(f"{where}:tensor:{flat.dtype}:{tuple(value.shape)};".encode())
            digest.update(flat.view(torch.uint8).numpy().tobytes())
        elif isinstance(value, dict):
            digest.update(f"{where}:dict:{len(value)};".encode())
            for key in sorted(value, key=str):
                feed(value[key], f"{where}/{key}")
        elif isinstance(value, (list, tuple)):
            digest.update(f"{where}:{type(value).__name__}:{len(value)};".encode())
            for index, item in enumerate(value):
                feed(item, f"{where}/{index}")
        else:
            digest.update(f"{where}:{type(value).__name__}={value!r};".encode())

    feed({key: value for key, value in payload.items() if key != SEAL}, "")
    return digest.hexdigest()


def seal(payload: dict[str, Any]) -> dict[str, Any]:
    """``payload`` with its :func:`content_sha256` under ``sha256``."""
    return {**payload, SEAL: content_sha256(payload)}


def write_model_payload(path: str | Path, payload: dict[str, Any]) -> Path:
    """Seal ``payload`` and write it to ``path`` atomically; returns ``path``.

    A ``<path>.sha256`` left from an earlier file of that name is removed (it describes other bytes).
    """
    path = Path(path)
    with replacing(path) as tmp:
        torch.save(seal(payload), tmp)
        checksum_path(path).unlink(missing_ok=True)
    return path


def save_model_file(path: str | Path, *, model: torch.nn.Module, cfg: ExperimentConfig, threshold: float,
                    metrics: dict[str, float], extra: dict[str, Any] | None = None,
                    quantile: float | None = None) -> Path:
    """Write the model file to ``path`` atomically (:func:`write_model_payload`); returns ``path``."""
    return write_model_payload(path, model_payload(model=model, cfg=cfg, threshold=threshold, metrics=metrics,
                                                   extra=extra, quantile=quantile))


def _cpu_weights(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: tensor.detach().cpu().clone() for name, tensor in model.state_dict().items()}


def install_model_file(source: str | Path, out: str | Path) -> Path:
    """Copy the model file ``source`` to ``out`` atomically, write ``out.sha256`` and load ``out`` once
    (which checks both); returns the sidecar's path. ``source`` is checked first."""
    out = Path(out)
    load_model_file(source)
    with replacing(out) as tmp:
        shutil.copyfile(source, tmp)
        checksum_path(out).unlink(missing_ok=True)  # an old sidecar describes other bytes
    sidecar = write_checksum(out)
    load_model_file(out)
    return sidecar


def checksum_path(path: str | Path) -> Path:
    """``<path>.sha256``."""
    path = Path(path)
    return path.with_name(f"{path.name}.sha256")


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_checksum(path: str | Path) -> Path:
    """Write ``<path>.sha256`` (``<hex digest>  <file name>``, as ``sha256sum`` does); returns its path."""
    path = Path(path)
    return write_text(checksum_path(path), f"{file_sha256(path)}  {path.name}\n")


def verify_checksum(path: str | Path) -> bool:
    """Check ``path`` against ``<path>.sha256``; False when there is no checksum file, ModelFileError on mismatch."""
    path = Path(path)
    sidecar = checksum_path(path)
    if not sidecar.is_file():
        return False
    words = sidecar.read_text().split()
    expected = words[0].lower() if words else ""
    actual = file_sha256(path)
    if expected != actual:
        raise ModelFileError(f"{path}: checksum mismatch: {sidecar.name} says sha256={expected or '<empty>'}, "
                             f"but the file has sha256={actual}; the file was changed or damaged.")
    return True


def _load_failure(exc: Exception) -> str:
    """What ``torch.load`` said about a file, less its advice to load a refused pickle with
    ``weights_only=False`` (running code from the file), which a tool that refuses it must not repeat."""
    text = str(exc)
    if "weights_only" in text:
        found = re.search(r"Unsupported global: GLOBAL ([\w.]+)", text)
        held = f"a Python object ({found.group(1)})" if found else "Python objects"
        return f"it holds {held}, which a model file never does; it was refused without running it"
    first = text.splitlines()[0] if text else ""
    return f"{type(exc).__name__}: {first}"


def load_model_file(path: str | Path, *, device: str | torch.device = "cpu") -> LoadedModel:
    """Load a model file written by ``save_model_file`` (or an ensemble file); the model is in eval
    mode on ``device``.

    Raises ModelFileError (exit code 2 in the CLI) for a missing file, a checksum mismatch (the
    sidecar's or the one inside), a file that is not a torch file or is truncated, one that is not
    a motorsearch model, an unknown ``format_version``, a version 1 file without a sidecar, or
    weights that do not fit the stored architecture.
    """
    path = Path(path)
    if not path.is_file():
        raise ModelFileError(f"{path}: no such model file.")
    vouched = verify_checksum(path)
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for foreign or truncated bytes
        raise ModelFileError(f"{path}: not a readable model file (corrupted, truncated or not a torch file): "
                             f"{_load_failure(exc)}") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise ModelFileError(f"{path}: not a motorsearch model file (expected format={FORMAT!r}).")
    version = payload.get("format_version")
    if version not in (FORMAT_VERSION, _UNSEALED_VERSION):
        raise ModelFileError(f"{path}: unknown model file format_version={version!r}; this motorsearch "
                             f"({__version__}) reads format_version={FORMAT_VERSION}.")
    if version == _UNSEALED_VERSION and not vouched:
        raise ModelFileError(f"{path}: a format_version=1 model file carries no checksum of its own and has no "
                             f"{checksum_path(path).name} beside it, so it cannot be verified; export it again.")
    ensemble = "members" in payload
    missing = [key for key in (*(("members",) if ensemble else _NETWORK), *_REQUIRED) if key not in payload]
    if missing:
        raise ModelFileError(f"{path}: the model file lacks {', '.join(missing)}; it is damaged.")
    if version == FORMAT_VERSION and payload.get(SEAL) != content_sha256(payload):
        raise ModelFileError(f"{path}: its content does not match the sha256 written inside it; the file was "
                             "changed or damaged.")

    if ensemble:
        members = payload["members"]
        if not isinstance(members, list) or not members:
            raise ModelFileError(f"{path}: `members` must be a non-empty list; the file is damaged.")
        from motorsearch.model.ensemble import MotorEnsemble

        model = MotorEnsemble([_network(path, m.get("architecture"), m.get("state_dict"), f"member {i}")
                               for i, m in enumerate(members)])
        architecture = dict(model.architecture)
    else:
        model = _network(path, payload["architecture"], payload["state_dict"], "the stored weights")
        architecture = dict(payload["architecture"])
    model.to(device).eval()
    threshold = float(payload["threshold"])
    if math.isnan(threshold):
        raise ModelFileError(f"{path}: `threshold` must be a number, but got threshold=nan.")
    return LoadedModel(
        model=model, architecture=architecture, preprocessing=dict(payload["preprocessing"]),
        threshold=threshold, metrics=dict(payload["metrics"]), config=dict(payload["config"]),
        format_version=int(version), motorsearch_version=str(payload.get("motorsearch_version", "?")),
        path=path, extra=dict(payload.get("extra") or {}),
        quantile=None if payload.get("quantile") is None else float(payload["quantile"]),
        members=len(payload["members"]) if ensemble else 1,
    )


def _network(path: Path, architecture: Any, state_dict: Any, what: str) -> torch.nn.Module:
    """MotorIdentifier(**architecture) holding ``state_dict``; ModelFileError when they do not fit."""
    from motorsearch.model.fpn import MotorIdentifier

    try:
        model = MotorIdentifier(**architecture)
        model.load_state_dict(state_dict, strict=True)
    except (TypeError, ValueError, RuntimeError) as exc:
        raise ModelFileError(f"{path}: {what} do not fit the stored architecture: "
                             f"{str(exc).splitlines()[0]}") from None
    return model
