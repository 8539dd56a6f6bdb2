"""The voxel cache: every tomogram once as a memory-mappable uint8 ``.npy``, plus a metadata table.

Layout of ``<cache_dir>/<key>/``::

    manifest.json          written last; its presence marks a finished cache
    metadata.csv           one row per tomogram (columns below)
    folds-k<K>-seed<S>.csv tomo_id,fold for each fold set-up asked for so far (labelled splits)
    volumes/<tomo_id>.npy  (z, y, x) uint8, resampled to ``spacing``

``metadata.csv`` columns: ``tomo_id, file, shape_z, shape_y, shape_x, spacing, original_shape_z,
original_shape_y, original_shape_x, original_spacing, mean, std, n_motors, motors, motors_a``.
``spacing`` is Å/voxel of the cached grid, ``mean``/``std`` the cached voxels' intensity statistics
(for z-score normalisation), ``motors`` a JSON list of [z, y, x] centres in cached-grid voxels and
``motors_a`` the same motors in Å (original voxels x original spacing); both are ``null`` for an
unlabelled tomogram.

The key hashes what the voxels depend on: the source (see ``source_identity``), the target
spacing, the assumed spacing and ``CACHE_VERSION``. Folds are not part of it: they are a cheap,
deterministic function of (ids, has-motor, ``n_folds``, ``split_seed``) computed on every load, so
a search over split seeds or fold counts shares one set of voxels.

Concurrency: builders take ``<key>.lock`` (``filelock``), build into a temporary folder beside it
and rename it to ``<key>`` (:func:`motorsearch.atomic.replacing`); whoever gets the lock second finds the manifest and only loads.
Any failure (a corrupt tomogram, a crash) removes the temporary folder: no partial cache ever
carries the final name, and a stale temporary folder left by a killed process is removed by the
next builder.

Parallel builds (``workers`` > 1): the builder, holding the lock, forks a pool of processes that
each convert whole tomograms into the same temporary folder (one PyTorch thread each); the rows
are gathered in tomo_id order, so the voxels and ``metadata.csv`` are byte for byte those of a
serial build. Each worker holds one source volume in memory at a time.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import io
import json
import multiprocessing
import os
import re
import shutil
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from filelock import FileLock

from motorsearch.atomic import TEMPORARY_MARK, replacing, write_text
from motorsearch.config import DataConfig
from motorsearch.data import preprocess
from motorsearch.data.folds import assign_folds
from motorsearch.data.records import TomogramRecord
from motorsearch.errors import DataError, InputError

CACHE_VERSION = 1
MANIFEST = "manifest.json"
METADATA = "metadata.csv"
_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
_COLUMNS = ("tomo_id", "file", "shape_z", "shape_y", "shape_x", "spacing", "original_shape_z", "original_shape_y",
            "original_shape_x", "original_spacing", "mean", "std", "n_motors", "motors", "motors_a")


@dataclass
class CachedTomogram:
    """One cached tomogram. Coordinates are continuous (z, y, x) voxels; voxel k spans [k-0.5, k+0.5).

    Attributes:
        shape: (z, y, x) of the cached grid.
        spacing: Å per voxel of the cached grid (the target spacing, or the native one).
        original_shape, original_spacing: the source grid (spacing assumed if the source had none).
        motors: (N, 3) float64 centres in cached-grid voxels; (0, 3) without motors; None if unlabelled.
        motors_a: (N, 3) the same motors in Å from the original grid's corner voxel; None if unlabelled.
        fold: validation fold of this tomogram, -1 when unlabelled.
        path: the ``.npy`` file.
        mean, std: intensity statistics of the cached uint8 voxels.
    """

    tomo_id: str
    shape: tuple[int, int, int]
    spacing: float
    original_shape: tuple[int, int, int]
    original_spacing: float
    motors: np.ndarray | None
    motors_a: np.ndarray | None
    fold: int
    path: Path
    mean: float | None = None
    std: float | None = None

    @property
    def labelled(self) -> bool:
        return self.motors is not None

    def volume(self) -> np.memmap:
        """The cached (z, y, x) uint8 volume as a read-only memory map (no data read until sliced)."""
        return np.load(self.path, mmap_mode="r")

    def to_original(self, coords: np.ndarray) -> np.ndarray:
        """Map (N, 3) cached-grid voxel coordinates to (N, 3) voxels of the original grid."""
        return preprocess.to_original(coords, self.original_shape, self.shape)


@dataclass
class TomogramCache:
    """A finished cache: its folder, key, manifest and tomograms (sorted by tomo_id)."""

    root: Path
    key: str
    tomograms: list[CachedTomogram]
    manifest: dict[str, Any]

    def labelled(self) -> list[CachedTomogram]:
        return [t for t in self.tomograms if t.labelled]

    def train_tomograms(self, fold: int) -> list[CachedTomogram]:
        """Labelled tomograms outside validation fold ``fold`` (``data.fold`` semantics)."""
        self._check_fold(fold)
        return [t for t in self.labelled() if t.fold != fold]

    def val_tomograms(self, fold: int) -> list[CachedTomogram]:
        """Labelled tomograms in fold ``fold``."""
        self._check_fold(fold)
        return [t for t in self.labelled() if t.fold == fold]

    def by_id(self, tomo_id: str) -> CachedTomogram:
        for tomogram in self.tomograms:
            if tomogram.tomo_id == tomo_id:
                return tomogram
        raise KeyError(tomo_id)

    def _check_fold(self, fold: int) -> None:
        n_folds = self.manifest.get("n_folds")
        if n_folds is None or not 0 <= fold < n_folds:
            raise ValueError(f"`fold` must be in [0, n_folds={n_folds}), but got fold={fold}.")


def prepare(cfg: DataConfig, *, split: str = "train", progress: bool = False,
            assume_spacing: float | None = None, workers: int = 1) -> TomogramCache:
    """Build (once) or load the cache for ``cfg`` and ``split``; safe to call from concurrent trials.

    ``workers``: processes converting tomograms when the cache must be built (see the module
    docstring); the ``prepare`` command uses every available CPU.

    ``assume_spacing`` (Å/voxel) is used for tomograms whose source gives no spacing (the Kaggle
    test split); without it such a split raises DataError. Readers are only opened when building.
    Resampling uses PyTorch's intra-op threads: in a process forked from one that already ran
    PyTorch ops, call ``torch.set_num_threads(1)`` first (OpenMP does not survive a fork).

    Data that cannot be read (InputError) leaves nothing behind when this call made ``cache_dir``:
    the folder, its lock file and any synthetic dataset in it go (a refused command writes nothing).
    """
    from motorsearch.data.sources import open_records  # the readers; imported late (heavy, optional)

    new_folder = not Path(cfg.cache_dir).exists()
    try:
        return prepare_records(
            lambda: open_records(cfg, split=split),
            identity=source_identity(cfg, split),
            cache_dir=cfg.cache_dir, spacing=cfg.spacing, assume_spacing=assume_spacing,
            n_folds=cfg.n_folds, split_seed=cfg.split_seed, progress=progress, workers=workers,
        )
    except InputError:
        if new_folder:
            shutil.rmtree(cfg.cache_dir, ignore_errors=True)
        raise


def prepare_records(records: Callable[[], Sequence[TomogramRecord]], *, identity: dict[str, Any],
                    cache_dir: str | Path, spacing: float | None, assume_spacing: float | None = None,
                    n_folds: int = 5, split_seed: int = 0, progress: bool = False,
                    workers: int = 1) -> TomogramCache:
    """``prepare`` for any source: ``records()`` is called only if the cache must be built.

    ``identity`` is a JSON-able description of the source; together with ``spacing``,
    ``assume_spacing`` and ``CACHE_VERSION`` it makes the key.
    """
    if assume_spacing is not None and not assume_spacing > 0:
        raise DataError(f"`assume_spacing` must be positive, but got assume_spacing={assume_spacing}.")
    if workers < 1:
        raise ValueError(f"`workers` must be at least 1, but got workers={workers}.")
    key = cache_key(identity, spacing=spacing, assume_spacing=assume_spacing)
    cache_dir = Path(cache_dir)
    final = cache_dir / key
    if not (final / MANIFEST).is_file():
        cache_dir.mkdir(parents=True, exist_ok=True)
        with FileLock(str(cache_dir / f"{key}.lock")):
            if not (final / MANIFEST).is_file():
                _build(records(), final, key=key, identity=identity, spacing=spacing,
                       assume_spacing=assume_spacing, progress=progress, workers=workers)
    return load_cache(final, n_folds=n_folds, split_seed=split_seed)


def source_identity(cfg: DataConfig, split: str) -> dict[str, Any]:
    """What the cached voxels of ``cfg``'s ``split`` depend on, as a JSON-able dict.

    For a folder on disk: its resolved path, format, ``source_spacing``, and the size and mtime
    of the labels file (train split) and of the root and split folders (a folder's mtime changes
    when tomograms are added or removed; edit a file in place and the cache will not notice,
    so delete the cache then). For the built-in data: the synthetic settings and simulator version.
    """
    if cfg.root is None:
        from motorsearch.data.sources import synthetic_key

        return {"synthetic": dataclasses.asdict(cfg.synthetic), "synthetic_key": synthetic_key(cfg.synthetic),
                "split": split}
    root = Path(cfg.root).expanduser().resolve()
    identity: dict[str, Any] = {"root": str(root), "format": cfg.format, "split": split,
                                "labels_unit": cfg.labels_unit, "source_spacing": cfg.source_spacing}
    paths = {"root_dir": root, "split_dir": root / split}
    if split == "train":
        paths["labels"] = Path(cfg.labels).expanduser().resolve() if cfg.labels else root / "train_labels.csv"
    for name, path in paths.items():
        identity[name] = str(path)
        if path.exists():
            stat = path.stat()
            identity[f"{name}_stat"] = [stat.st_size, stat.st_mtime_ns]
    return identity


def cache_key(identity: dict[str, Any], *, spacing: float | None, assume_spacing: float | None) -> str:
    """``<split>-<16 hex digits>``: a hash of the source identity and the preprocessing settings."""
    settings = {"spacing": spacing, "assume_spacing": assume_spacing, "version": CACHE_VERSION}
    text = json.dumps({"source": identity, "settings": settings}, sort_keys=True, default=str)
    return f"{identity.get('split', 'data')}-{hashlib.sha256(text.encode()).hexdigest()[:16]}"


def cache_bytes_per_voxel(cache: TomogramCache) -> float:
    """Bytes on disk of the whole cache folder divided by the voxels it holds."""
    size = sum(p.stat().st_size for p in cache.root.rglob("*") if p.is_file())
    voxels = sum(int(np.prod(t.shape)) for t in cache.tomograms)
    return size / max(voxels, 1)


def load_cache(root: str | Path, *, n_folds: int, split_seed: int) -> TomogramCache:
    """Read a finished cache and give its labelled tomograms folds for (``n_folds``, ``split_seed``)."""
    root = Path(root)
    manifest = json.loads((root / MANIFEST).read_text())
    with open(root / METADATA, newline="") as handle:
        rows = list(csv.DictReader(handle))
    tomograms = [_tomogram_from_row(row, root) for row in rows]
    labelled = [t for t in tomograms if t.labelled]
    if labelled:
        folds = assign_folds([t.tomo_id for t in labelled], [len(t.motors) > 0 for t in labelled],
                             n_folds=n_folds, seed=split_seed)
        for tomogram in labelled:
            tomogram.fold = folds[tomogram.tomo_id]
        _write_folds(root / f"folds-k{n_folds}-seed{split_seed}.csv", folds)
    manifest = {**manifest, "n_folds": n_folds, "split_seed": split_seed}
    return TomogramCache(root=root, key=root.name, tomograms=tomograms, manifest=manifest)


# ---------------------------------------------------------------------------------------------
# Building


def _build(records: Sequence[TomogramRecord], final: Path, *, key: str, identity: dict[str, Any],
           spacing: float | None, assume_spacing: float | None, progress: bool, workers: int) -> None:
    started = time.time()
    records = sorted(records, key=lambda r: r.tomo_id)
    _check_records(records, assume_spacing)
    for stale in final.parent.glob(f".{key}{TEMPORARY_MARK}*"):  # left by a killed builder; we hold the lock
        shutil.rmtree(stale, ignore_errors=True)
    if final.exists():  # a folder without manifest is not a cache (never made by us)
        shutil.rmtree(final)
    with replacing(final) as tmp:
        (tmp / "volumes").mkdir(parents=True)
        convert = _convert_in_pool if workers > 1 and len(records) > 1 else _convert_here
        rows: list[dict[str, Any]] = [{}] * len(records)
        converted = convert(records, tmp, spacing=spacing, assume_spacing=assume_spacing, workers=workers)
        done: Any = converted
        if progress:
            from tqdm import tqdm
            done = tqdm(converted, total=len(records), desc=f"caching {key}", unit="tomogram")
        try:
            for index, cached in done:
                rows[index] = cached
        finally:
            converted.close()  # a pool stops (its queued tomograms cancelled) before the folder goes
        _write_csv(tmp / METADATA, rows)
        manifest = {
            "version": CACHE_VERSION, "key": key, "source": identity, "spacing": spacing,
            "assume_spacing": assume_spacing, "n_tomograms": len(rows),
            "n_voxels": int(sum(r["shape_z"] * r["shape_y"] * r["shape_x"] for r in rows)),
            "build_id": uuid.uuid4().hex, "builder_pid": os.getpid(),
            "build_seconds": round(time.time() - started, 3),
        }
        write_text(tmp / MANIFEST, json.dumps(manifest, indent=2, default=str))


def _convert_here(records: Sequence[TomogramRecord], tmp: Path, *, spacing: float | None,
                  assume_spacing: float | None, workers: int) -> Iterator[tuple[int, dict[str, Any]]]:
    for index, record in enumerate(records):
        yield index, _cache_one(record, tmp, index, spacing=spacing, assume_spacing=assume_spacing)


_POOL_RECORDS: Sequence[TomogramRecord] = ()  # what forked workers convert: records hold closures, never pickled


def _convert_in_pool(records: Sequence[TomogramRecord], tmp: Path, *, spacing: float | None,
                     assume_spacing: float | None, workers: int) -> Iterator[tuple[int, dict[str, Any]]]:
    """(index, metadata row) of each record as a forked worker finishes it; the first error cancels the rest."""
    global _POOL_RECORDS
    _POOL_RECORDS = records
    context = multiprocessing.get_context("fork")
    pool = ProcessPoolExecutor(max_workers=min(workers, len(records)), mp_context=context,
                               initializer=_one_torch_thread)
    try:
        futures = [pool.submit(_cache_one_in_worker, index, tmp, spacing, assume_spacing)
                   for index in range(len(records))]
        for future in as_completed(futures):
            yield future.result()
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
        _POOL_RECORDS = ()


def _one_torch_thread() -> None:
    import torch

    torch.set_num_threads(1)  # OpenMP does not survive a fork; and the processes are the parallelism


def _cache_one_in_worker(index: int, tmp: Path, spacing: float | None,
                         assume_spacing: float | None) -> tuple[int, dict[str, Any]]:
    return index, _cache_one(_POOL_RECORDS[index], tmp, index, spacing=spacing, assume_spacing=assume_spacing)


def _check_records(records: Sequence[TomogramRecord], assume_spacing: float | None) -> None:
    """Fail before writing anything on what the records alone show to be wrong."""
    if not records:
        raise DataError("the dataset has no tomograms; nothing to cache.")
    seen: set[str] = set()
    for record in records:
        if record.tomo_id in seen:
            raise DataError(f"{record.source}: tomo_id {record.tomo_id!r} appears more than once.")
        seen.add(record.tomo_id)
        if record.spacing is None and assume_spacing is None:
            raise DataError(
                f"{record.source}: the voxel spacing of {record.tomo_id!r} is unknown (the source gives none, "
                "as for the Kaggle test split); give an assumed spacing in Å per voxel "
                "(`prepare --assume-spacing A`, or prepare(..., assume_spacing=A)).")
        if record.spacing is not None and not record.spacing > 0:
            raise DataError(f"{record.source}: `spacing` must be positive, but got spacing={record.spacing}.")
        if record.motors is not None:
            _check_motors(record, np.asarray(record.motors, dtype=np.float64).reshape(-1, 3), tuple(record.shape))


def _cache_one(record: TomogramRecord, tmp: Path, index: int, *, spacing: float | None,
               assume_spacing: float | None) -> dict[str, Any]:
    original_spacing = float(record.spacing if record.spacing is not None else assume_spacing)
    volume = record.load()
    if not isinstance(volume, np.ndarray) or volume.dtype != np.uint8 or volume.ndim != 3:
        raise DataError(f"{record.source}: expected a 3-D uint8 volume, but got "
                        f"{getattr(volume, 'dtype', type(volume).__name__)} {getattr(volume, 'shape', '')}.")
    original_shape = tuple(int(n) for n in volume.shape)
    if original_shape != tuple(record.shape):
        raise DataError(f"{record.source}: volume shape {original_shape} does not match the "
                        f"expected shape {tuple(record.shape)}.")
    factor = preprocess.resample_factor(original_spacing, spacing)
    shape = preprocess.resampled_shape(original_shape, factor)
    name = record.tomo_id if _SAFE_NAME.match(record.tomo_id) else f"_{index:05d}"
    path = tmp / "volumes" / f"{name}.npy"
    stored = np.lib.format.open_memmap(path, mode="w+", dtype=np.uint8, shape=shape)
    preprocess.resample(volume, factor, out=stored)
    stored.flush()
    mean, std = preprocess.volume_stats(stored)
    del stored, volume
    motors = motors_a = None
    if record.motors is not None:
        original = np.asarray(record.motors, dtype=np.float64).reshape(-1, 3)
        motors = preprocess.to_resampled(original, original_shape, shape)
        motors_a = original * original_spacing
    cached_spacing = float(spacing) if spacing is not None else original_spacing
    return {
        "tomo_id": record.tomo_id, "file": f"volumes/{name}.npy",
        "shape_z": shape[0], "shape_y": shape[1], "shape_x": shape[2], "spacing": cached_spacing,
        "original_shape_z": original_shape[0], "original_shape_y": original_shape[1],
        "original_shape_x": original_shape[2], "original_spacing": original_spacing,
        "mean": mean, "std": std, "n_motors": -1 if motors is None else len(motors),
        "motors": json.dumps(None if motors is None else motors.tolist()),
        "motors_a": json.dumps(None if motors_a is None else motors_a.tolist()),
    }


def _check_motors(record: TomogramRecord, motors: np.ndarray, shape: tuple[int, int, int]) -> None:
    upper = np.asarray(shape, dtype=np.float64) - 0.5
    outside = ~np.all((motors >= -0.5) & (motors < upper), axis=1)
    if np.any(outside) or not np.all(np.isfinite(motors)):
        bad = motors[int(np.argmax(outside | ~np.isfinite(motors).all(axis=1)))]
        raise DataError(f"{record.source}: motor of {record.tomo_id!r} at (z, y, x)={tuple(bad.tolist())} "
                        f"is outside the volume of shape {shape}.")


def _tomogram_from_row(row: dict[str, str], root: Path) -> CachedTomogram:
    motors = json.loads(row["motors"])
    motors_a = json.loads(row["motors_a"])
    return CachedTomogram(
        tomo_id=row["tomo_id"],
        shape=(int(row["shape_z"]), int(row["shape_y"]), int(row["shape_x"])),
        spacing=float(row["spacing"]),
        original_shape=(int(row["original_shape_z"]), int(row["original_shape_y"]), int(row["original_shape_x"])),
        original_spacing=float(row["original_spacing"]),
        motors=None if motors is None else np.asarray(motors, dtype=np.float64).reshape(-1, 3),
        motors_a=None if motors_a is None else np.asarray(motors_a, dtype=np.float64).reshape(-1, 3),
        fold=-1, path=root / row["file"], mean=float(row["mean"]), std=float(row["std"]),
    )


def _write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=_COLUMNS)
    writer.writeheader()
    writer.writerows(rows)
    write_text(path, text.getvalue())


def _write_folds(path: Path, folds: dict[str, int]) -> None:
    if path.is_file():
        return
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(["tomo_id", "fold"])
    writer.writerows(sorted(folds.items()))
    try:
        write_text(path, text.getvalue())
    except OSError:  # a read-only shared cache still loads; the file is only for people to read
        pass

