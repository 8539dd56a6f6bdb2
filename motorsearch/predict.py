"""Whole-tomogram prediction with a loaded model file: the library side of the ``predict`` command.

``Predictor.predict(volume, spacing=...)`` takes a raw (z, y, x) uint8 tomogram on its original
grid and returns at most one motor in that grid's voxels, prepared exactly as training data is:

1. resample by ``preprocess.resample_factor(spacing, model spacing)`` with ``preprocess.resample``
   (the cache's function, so the same voxels);
2. normalise with the model's method (z-score uses the resampled volume's exact statistics, as
   the cache records them);
3. sliding-window heatmap (``evaluation.inference.predict_volume``, with the model's ``tta``),
   strongest peak (``evaluation.peaks.find_peaks``), kept when its probability reaches the
   model's threshold;
4. clamp the peak into the resampled volume (an output voxel at the far edge is centred in the
   padding) and map it back with ``preprocess.to_original``.

When the spacing is unknown (``spacing=None``) the model's test-time policy decides
(:func:`assumed_spacings`): one assumed spacing (``fixed``), or several (``multiscale``), each
tried through steps 1-4, the strongest candidate kept. Validation under test conditions
(``validation.unknown_spacing``) goes through the same :meth:`Predictor.strongest`.
"""

from __future__ import annotations

import dataclasses
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from motorsearch.config import DATA_FORMATS, NORMALIZATIONS, TestTimeConfig, from_dict
from motorsearch.data import preprocess
from motorsearch.data.records import TomogramRecord
from motorsearch.errors import ConfigError, DataError, ModelFileError
from motorsearch.model_file import LoadedModel

NO_SPACING = "does not give a voxel spacing"  # volumes.read_volume_folder's message for a header without one


Candidate = tuple[np.ndarray, float]  # (coords (3,) in the volume's voxels (z, y, x), probability)


def assumed_spacings(test_time: TestTimeConfig, model_spacing: float | None) -> list[float]:
    """The spacings (Å/voxel) a tomogram of unknown spacing is read at, by the policy ``test_time``."""
    if test_time.spacing == "multiscale":
        return [float(v) for v in test_time.multiscale_spacings_a]
    assumed = test_time.assumed_spacing_a if test_time.assumed_spacing_a is not None else model_spacing
    if assumed is None:
        raise ConfigError("the spacing is unknown and the model was trained on native grids: give an assumed "
                          "spacing (`test_time.assumed_spacing_a`, or --spacing A).")
    return [float(assumed)]


def describe_policy(test_time: TestTimeConfig, model_spacing: float | None) -> str:
    """One line: how tomograms of unknown spacing are read, and the TTA."""
    spacings = assumed_spacings(test_time, model_spacing)
    shown = ", ".join(f"{v:g}" for v in spacings)
    how = (f"multiscale: read at each of {shown} Å/voxel, the strongest candidate kept" if len(spacings) > 1
           or test_time.spacing == "multiscale" else f"fixed: assumed {shown} Å/voxel")
    return f"{how}; TTA {test_time.tta} view{'s' if test_time.tta > 1 else ''}"


class Predictor:
    """A model file ready to find motors; ``patch_size`` (z, y, x voxels) overrides the training window,
    ``test_time`` the model's test-time settings."""

    def __init__(self, loaded: LoadedModel, *, device: torch.device | str = "cpu",
                 patch_size: Sequence[int] | None = None, test_time: TestTimeConfig | None = None):
        p = loaded.preprocessing
        self.loaded = loaded
        self.model = loaded.model
        self.device = torch.device(device)
        self.stride = int(p["stride"])
        self.model_spacing = None if p.get("spacing") is None else float(p["spacing"])
        self.normalization = str(p["normalization"])
        self.overlap = float(p["overlap"])
        self.window_batch_size = int(p["window_batch_size"])
        self.nms_radius_a = float(p["nms_radius_a"])
        self.precision = str(p.get("precision", "fp32"))
        self.threshold = float(loaded.threshold)
        self.test_time = test_time or model_test_time(loaded)
        self.patch_size = tuple(int(v) for v in (patch_size if patch_size is not None else p["patch_size"]))
        if len(self.patch_size) != 3 or any(v < self.stride or v % self.stride for v in self.patch_size):
            what = "`--patch-size`" if patch_size is not None else f"{loaded.path}: `patch_size`"
            error = ConfigError if patch_size is not None else ModelFileError
            raise error(f"{what} must be 3 multiples of the model's stride={self.stride} (each at least "
                        f"{self.stride} voxels), but got patch_size={list(self.patch_size)}.")
        if self.normalization not in NORMALIZATIONS:
            raise ModelFileError(f"{loaded.path}: unknown normalization={self.normalization!r}.")

    def heatmap(self, volume: np.ndarray, *, spacing: float) -> tuple[np.ndarray, tuple[int, int, int], float]:
        """(probability heatmap on the output grid, resampled shape (z, y, x), its spacing in Å/voxel)."""
        if not spacing > 0:
            raise ConfigError(f"`spacing` must be positive, but got spacing={spacing}.")
        factor = preprocess.resample_factor(spacing, self.model_spacing)
        resampled = preprocess.resample(np.asarray(volume), factor)
        mean = std = None
        if self.normalization == "zscore":
            mean, std = preprocess.volume_stats(resampled)
        normalised = preprocess.normalize(resampled, self.normalization, mean=mean, std=std)
        del resampled
        from motorsearch.evaluation.inference import predict_volume

        prob = predict_volume(self.model, normalised, patch_size=self.patch_size, stride=self.stride,
                              overlap=self.overlap, batch_size=self.window_batch_size, device=self.device,
                              precision=self.precision, tta=self.test_time.tta)
        grid_spacing = self.model_spacing if self.model_spacing is not None else float(spacing)
        return prob, tuple(normalised.shape), grid_spacing

    def spacings(self, spacing: float | None) -> list[float]:
        """The spacings ``volume`` is read at: its own when known, else the test-time policy's."""
        return [float(spacing)] if spacing is not None else assumed_spacings(self.test_time, self.model_spacing)

    def strongest(self, volume: np.ndarray, spacings: Sequence[float]) -> Candidate | None:
        """The strongest candidate over ``volume`` read at each of ``spacings`` (Å/voxel), in
        ``volume``'s own voxels; None when no heatmap has a peak."""
        from motorsearch.evaluation.peaks import find_peaks

        best: Candidate | None = None
        for spacing in spacings:
            prob, shape, grid_spacing = self.heatmap(volume, spacing=spacing)
            peaks = find_peaks(prob, stride=self.stride, max_peaks=1,
                               nms_radius_vox=self.nms_radius_a / grid_spacing)
            if not peaks or (best is not None and not peaks[0][1] > best[1]):
                continue
            # an output voxel's centre may lie in the padding past the far edge: keep it inside the volume
            coords = np.clip(np.asarray(peaks[0][0], dtype=np.float64), 0.0, np.asarray(shape) - 1.0)[None]
            best = (preprocess.to_original(coords, tuple(np.asarray(volume).shape), shape)[0], float(peaks[0][1]))
        return best

    def locate(self, volume: np.ndarray, *, spacing: float | None) -> Candidate | None:
        """The strongest candidate of ``volume`` ((z, y, x) uint8, original grid) whatever its
        probability; ``spacing``: its Å per voxel, None when unknown (the policy decides)."""
        return self.strongest(volume, self.spacings(spacing))

    def predict(self, volume: np.ndarray, *, spacing: float | None) -> np.ndarray | None:
        """The motor (3,) in voxels (z, y, x) of ``volume``'s grid, or None when below the threshold.

        ``volume``: (z, y, x) uint8 on its original grid; ``spacing``: its Å per voxel (None: unknown).
        """
        candidate = self.locate(volume, spacing=spacing)
        if candidate is None or not candidate[1] >= self.threshold:
            return None
        return candidate[0]


def model_test_time(loaded: LoadedModel) -> TestTimeConfig:
    """The test-time settings a model file carries (the defaults for files from before they existed)."""
    raw = loaded.preprocessing.get("test_time")
    try:
        return from_dict({"test_time": raw or {}}, source=f"{loaded.path} (preprocessing)").test_time
    except ConfigError as exc:
        raise ModelFileError(str(exc)) from None


def decide(candidates: Sequence[Candidate | None], *, strategy: str, threshold: float,
           quantile: float | None) -> list[bool]:
    """Which tomograms get a motor, by the threshold strategy (see ``TestTimeConfig``).

    ``swept``: those whose candidate reaches ``threshold``. ``quantile``: the ``round(quantile *
    n)`` tomograms with the strongest candidates (ties broken by order), needs n >= 2.
    """
    if strategy == "swept":
        return [c is not None and c[1] >= threshold for c in candidates]
    if quantile is None or not 0.0 < quantile <= 1.0:
        raise ConfigError(f"`quantile` must be in (0, 1], but got quantile={quantile}.")
    if len(candidates) < 2:
        raise ConfigError(f"the quantile threshold ranks tomograms against each other: it needs at least 2 "
                          f"tomograms, but got {len(candidates)}.")
    n_motors = round(quantile * len(candidates))
    order = sorted((i for i, c in enumerate(candidates) if c is not None), key=lambda i: -candidates[i][1])
    chosen = set(order[:n_motors])
    return [i in chosen for i in range(len(candidates))]


def detect_format(folder: Path) -> str:
    """"mrc" or "zarr" when ``folder`` holds such volumes, "kaggle" when it holds ``<tomo_id>/slice_*.jpg``."""
    entries = [p for p in folder.iterdir() if not p.name.startswith(".")]
    if any(p.suffix.lower() == ".zarr" for p in entries):
        return "zarr"
    if any(p.suffix.lower() in (".mrc", ".rec") and p.is_file() for p in entries):
        return "mrc"
    if any(p.is_dir() and any(p.glob("slice_*.jp*g")) for p in entries):
        return "kaggle"
    splits = [p.name for p in entries if p.is_dir() and p.name in ("test", "train")]
    hint = f" It looks like a Kaggle download: pass --data {folder / splits[0]}." if splits else ""
    raise DataError(f"{folder}: no tomograms found (expected <tomo_id>/slice_*.jpg folders, *.mrc files or "
                    f"*.zarr volumes).{hint}")


def read_tomograms(folder: str | Path, *, fmt: str | None = None) -> tuple[list[TomogramRecord], str]:
    """Records of every tomogram in ``folder`` and the format used (``fmt`` or detected).

    A Kaggle split folder is read with ``read_kaggle(folder.parent, folder.name)``, so spacings come
    from ``<root>/<split>_labels.csv`` when present. MRC/zarr spacings come from the file headers;
    files without one get ``spacing=None`` (the caller chooses the fallback).
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"{folder}: no such folder.")
    fmt = fmt or detect_format(folder)
    if fmt not in DATA_FORMATS:
        raise ConfigError(f"`format` must be one of {', '.join(DATA_FORMATS)}, but got format={fmt!r}.")
    if fmt == "kaggle":
        from motorsearch.data.kaggle import read_kaggle

        return read_kaggle(folder.resolve().parent, folder.resolve().name), fmt
    from motorsearch.data.volumes import read_volume_folder

    try:
        return read_volume_folder(folder, fmt=fmt), fmt
    except DataError as exc:
        if NO_SPACING not in str(exc):
            raise
    # some files give no spacing: read all with a placeholder, then take each header's own where it has one
    records = read_volume_folder(folder, fmt=fmt, spacing=1.0)
    return [dataclasses.replace(r, spacing=header_spacing(Path(r.source), fmt)) for r in records], fmt


def header_spacing(path: Path, fmt: str) -> float | None:
    """The Å/voxel a single MRC/zarr volume's header gives, None when it gives none."""
    from motorsearch.data.volumes import read_volume_folder

    # read_volume_folder reads folders: show it this one volume through a link in a scratch folder
    with tempfile.TemporaryDirectory(prefix=".motorsearch-predict-") as scratch:
        link = Path(scratch) / path.name
        link.symlink_to(path.resolve(), target_is_directory=path.is_dir())
        try:
            return read_volume_folder(Path(scratch), fmt=fmt)[0].spacing
        except DataError as exc:
            if NO_SPACING not in str(exc):
                raise
            return None
