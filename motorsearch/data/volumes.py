"""Readers for folders of MRC or zarr / OME-Zarr tomograms plus a CSV of motor coordinates.

This is how users bring data from the CryoET Data Portal or their own reconstructions.

Volumes
    ``fmt="mrc"``: every ``*.mrc`` / ``*.rec`` file; the spacing comes from the header voxel size
    when it is > 0. ``fmt="zarr"``: every ``*.zarr`` directory, either a plain 3D zarr array (no
    spacing) or an OME-Zarr multiscale group, of which level 0 (``multiscales[0].datasets[0]``) is
    read and its spacing taken from the ``scale`` coordinate transformations and the axes' units
    (nanometer / micrometer / angstrom, converted to Å). A ``spacing`` given by the caller wins over
    the file's. The tomo_id is the file name without its suffix. Axis order (z, y, x).

Intensities
    uint8 volumes are kept as they are. Every other dtype is scaled to uint8 robustly: the 0.5 and
    99.5 percentiles (of a sample of whole z slices) map to 0 and 255, values beyond are clipped,
    NaN becomes 0. The file's contrast is kept (cryo-ET convention: dense matter dark).

Labels CSV (``labels``), one row per motor::

    tomo_id,z,y,x
    TS_001,120,455.5,310
    TS_002,-1,-1,-1          <- optional: a tomogram known to have no motor

The coordinate columns may instead be the Kaggle names ``Motor axis 0, Motor axis 1, Motor
axis 2``; other columns are ignored. ``labels_unit="voxel"``: coordinates are voxels (z, y, x) of
the volume, voxel ``k`` spanning ``[k - 0.5, k + 0.5)``. ``labels_unit="angstrom"``: coordinates
are Å from the centre of voxel 0 and are divided by that tomogram's spacing. With a CSV, a
tomogram it does not mention has no motors; without one, every record is unlabelled
(``motors=None``).
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from motorsearch.data.kaggle import parse_number, utf8_text
from motorsearch.data.records import TomogramRecord
from motorsearch.errors import ConfigError, DataError
from motorsearch.registry import did_you_mean

FORMATS = {"mrc": (".mrc", ".rec"), "zarr": (".zarr",)}
LABEL_UNITS = ("voxel", "angstrom")
COORDINATE_COLUMNS = (("z", "y", "x"), ("Motor axis 0", "Motor axis 1", "Motor axis 2"))
PERCENTILES = (0.5, 99.5)
UNIT_TO_ANGSTROM = {
    "angstrom": 1.0, "ångström": 1.0, "å": 1.0, "a": 1.0,
    "nanometer": 10.0, "nanometre": 10.0, "nm": 10.0,
    "micrometer": 1e4, "micrometre": 1e4, "micron": 1e4, "µm": 1e4, "μm": 1e4, "um": 1e4,
    "picometer": 0.01, "pm": 0.01,
}
_PERCENTILE_SAMPLE = 8_000_000  # voxels used to estimate the percentiles
_CHUNK_VOXELS = 16_000_000  # voxels converted at a time


@dataclass
class _Volume:
    tomo_id: str
    path: Path
    shape: tuple[int, int, int]
    sizes: tuple[float, float, float] | None  # (z, y, x) Å per voxel from the file, None when it does not say
    sizes_from: str  # where ``sizes`` was read, for messages
    load: Callable[[], np.ndarray]  # the volume as (z, y, x) uint8
    spacing: float = 0.0  # Å per voxel used, resolved by read_volume_folder


def read_volume_folder(
    folder: Path | str,
    *,
    fmt: str,
    labels: Path | str | None = None,
    labels_unit: str = "voxel",
    spacing: float | None = None,
) -> list[TomogramRecord]:
    """Records for every volume of format ``fmt`` in ``folder``, sorted by tomo_id.

    Args:
        folder: directory holding the volumes (not searched recursively).
        fmt: "mrc" or "zarr".
        labels: optional CSV of motor coordinates (schema in the module docstring).
        labels_unit: "voxel" or "angstrom", the unit of the CSV coordinates.
        spacing: Å per voxel for every volume, overriding the file; required when a file has none.

    Raises DataError naming the file or CSV line for: an empty folder, an unreadable or non-3D
    volume, a volume without spacing when none is given, label rows naming unknown tomograms,
    non-numeric or out-of-volume coordinates.
    """
    if fmt not in FORMATS:
        raise ConfigError(f"`fmt` must be one of {', '.join(FORMATS)}, but got fmt={fmt!r}.{did_you_mean(fmt, FORMATS)}")
    if labels_unit not in LABEL_UNITS:
        raise ConfigError(f"`labels_unit` must be voxel or angstrom, but got labels_unit={labels_unit!r}.")
    if spacing is not None and not spacing > 0:
        raise ConfigError(f"`spacing` must be positive, but got spacing={spacing}.")
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"{folder}: no such folder.")
    suffixes = FORMATS[fmt]
    paths = sorted(p for p in folder.iterdir() if p.suffix.lower() in suffixes and not p.name.startswith("."))
    if not paths:
        raise DataError(f"{folder}: no {' or '.join('*' + s for s in suffixes)} volumes.")

    inspect = _inspect_mrc if fmt == "mrc" else _inspect_zarr
    volumes: dict[str, _Volume] = {}
    for path in paths:
        volume = inspect(path)
        if volume.tomo_id in volumes:
            raise DataError(f"{path}: tomo_id '{volume.tomo_id}' is also used by {volumes[volume.tomo_id].path}.")
        volume.spacing = float(spacing) if spacing is not None else _file_spacing(volume)
        volumes[volume.tomo_id] = volume

    motors = read_motor_csv(labels, unit=labels_unit, volumes=volumes) if labels is not None else None
    return [
        TomogramRecord(
            tomo_id=v.tomo_id,
            shape=v.shape,
            spacing=v.spacing,
            motors=None if motors is None else motors[v.tomo_id],
            load=v.load,
            source=str(v.path),
        )
        for v in volumes.values()
    ]


# ---------------------------------------------------------------------------------------------
# MRC


def _inspect_mrc(path: Path) -> _Volume:
    import mrcfile

    try:
        with mrcfile.open(path, mode="r", header_only=True) as mrc:
            header = mrc.header
            shape = (int(header.nz), int(header.ny), int(header.nx))
            size = mrc.voxel_size
            sizes = (float(size.z), float(size.y), float(size.x))
    except (OSError, ValueError) as exc:
        raise DataError(f"{path}: cannot read the MRC file ({exc}).") from None
    if shape[0] < 2 or min(shape) < 1:
        raise DataError(f"{path}: expected a 3D volume (z, y, x), but the MRC header gives shape {shape}.")

    return _Volume(path.stem, path, shape, sizes, "header voxel size (z, y, x)", MrcVolume(path, shape))


@dataclass(frozen=True)
class MrcVolume:
    """``record.load`` of an MRC tomogram (picklable): the file as (z, y, x) uint8, see ``to_uint8``."""

    path: Path
    shape: tuple[int, int, int]

    def __call__(self) -> np.ndarray:
        import mrcfile

        try:
            with mrcfile.mmap(self.path, mode="r") as mrc:
                return to_uint8(mrc.data, source=self.path, shape=self.shape)
        except (OSError, ValueError) as exc:
            raise DataError(f"{self.path}: cannot read the MRC file ({exc}).") from None


def _file_spacing(volume: _Volume) -> float:
    """The file's isotropic voxel size in Å; DataError when it gives none or an anisotropic one."""
    sizes = volume.sizes
    if sizes is None or all(s <= 0 for s in sizes):
        raise DataError(
            f"{volume.path}: the file does not give a voxel spacing; pass it explicitly "
            "(data.source_spacing in the experiment YAML, or --set data.source_spacing=<Å per voxel>)."
        )
    if min(sizes) <= 0 or max(sizes) > min(sizes) * 1.01:
        raise DataError(
            f"{volume.path}: {volume.sizes_from}={tuple(round(s, 4) for s in sizes)} Å is not isotropic; "
            "pass the spacing explicitly (data.source_spacing) to override it."
        )
    return float(sizes[-1])


# ---------------------------------------------------------------------------------------------
# zarr / OME-Zarr


def _inspect_zarr(path: Path) -> _Volume:
    import zarr

    try:
        node = zarr.open(str(path), mode="r")
    except Exception as exc:  # zarr raises many types for a broken store
        raise DataError(f"{path}: cannot open the zarr store ({type(exc).__name__}: {exc}).") from None
    if isinstance(node, zarr.Array):
        array, sizes, array_path = node, None, ""
    else:
        array_path, sizes = _ome_level0(dict(node.attrs), path)
        try:
            array = node[array_path]
        except KeyError:
            raise DataError(f"{path}: OME multiscales names dataset '{array_path}', which does not exist.") from None
        if not isinstance(array, zarr.Array):
            raise DataError(f"{path}: OME dataset '{array_path}' is not an array.")
    if array.ndim != 3:
        raise DataError(f"{path}: expected a 3D volume (z, y, x), but the array has shape {tuple(array.shape)}.")

    shape = tuple(int(n) for n in array.shape)

    return _Volume(path.stem, path, shape, sizes, "OME scale (z, y, x)", ZarrVolume(path, array_path, shape))


@dataclass(frozen=True)
class ZarrVolume:
    """``record.load`` of a zarr tomogram (picklable): array ``array_path`` ("" = the store itself) as uint8."""

    path: Path
    array_path: str
    shape: tuple[int, int, int]

    def __call__(self) -> np.ndarray:
        import zarr

        node = zarr.open(str(self.path), mode="r")
        return to_uint8(node[self.array_path] if self.array_path else node, source=self.path, shape=self.shape)


def _ome_level0(attrs: Mapping[str, Any], path: Path) -> tuple[str, tuple[float, float, float] | None]:
    """(path of level 0, its (z, y, x) voxel size in Å or None) from OME-NGFF 0.4 or 0.5 (``attrs["ome"]``)."""
    ome = attrs.get("ome", attrs)
    multiscales = ome.get("multiscales") if isinstance(ome, Mapping) else None
    if not multiscales:
        raise DataError(f"{path}: a zarr group without OME `multiscales` metadata; expected a 3D array or an OME-Zarr image.")
    try:
        image = multiscales[0]
        dataset = image["datasets"][0]
        scale = np.ones(3)
        for transforms in (dataset.get("coordinateTransformations", []), image.get("coordinateTransformations", [])):
            for transform in transforms:
                if transform.get("type") == "scale":
                    scale = scale * np.asarray(transform["scale"], dtype=np.float64)[-3:]
        axes = image.get("axes", [])[-3:]
        units = [axis.get("unit") if isinstance(axis, Mapping) else None for axis in axes]
        array_path = str(dataset["path"])
    except (KeyError, IndexError, TypeError, ValueError) as exc:
        raise DataError(f"{path}: malformed OME `multiscales` metadata ({type(exc).__name__}: {exc}).") from None
    if len(units) != 3 or any(u is None for u in units):
        return array_path, None  # no units: the spacing is unknown
    factors = []
    for unit in units:
        factor = UNIT_TO_ANGSTROM.get(str(unit).strip().lower())
        if factor is None:
            raise DataError(
                f"{path}: OME axis unit {unit!r} is not supported; use angstrom, nanometer or micrometer."
            )
        factors.append(factor)
    z, y, x = (float(s * f) for s, f in zip(scale, factors, strict=True))
    return array_path, (z, y, x)


# ---------------------------------------------------------------------------------------------
# Intensities


def to_uint8(array: Any, *, source: Path | str = "<array>", shape: tuple[int, ...] | None = None) -> np.ndarray:
    """A (z, y, x) uint8 copy of a 3D array-like (numpy, memmap, zarr) supporting ``[z0:z1]``.

    uint8 is copied as is; anything else maps the 0.5 / 99.5 percentiles to 0 / 255 (clipped);
    a constant volume becomes all 128. ``shape``, when given, is the shape the caller expects.
    """
    if array is None or len(array.shape) != 3 or (shape is not None and tuple(array.shape) != tuple(shape)):
        got = None if array is None else tuple(array.shape)
        raise DataError(f"{source}: expected a 3D volume (z, y, x) of shape {shape}, but the data has shape {got}.")
    shape = tuple(int(n) for n in array.shape)
    if np.dtype(array.dtype) == np.uint8:
        return np.ascontiguousarray(array[:])
    if not (np.issubdtype(array.dtype, np.integer) or np.issubdtype(array.dtype, np.floating)):
        raise DataError(f"{source}: voxel type {array.dtype} is not a number type.")
    per_slice = shape[1] * shape[2]
    step = max(1, math.ceil(shape[0] * per_slice / _PERCENTILE_SAMPLE))
    sample = np.asarray(array[::step], dtype=np.float32).ravel()
    sample = sample[np.isfinite(sample)]
    out = np.empty(shape, dtype=np.uint8)
    low, high = np.percentile(sample, PERCENTILES) if sample.size else (0.0, 0.0)
    if not high > low:
        out.fill(128)
        return out
    gain = 255.0 / (high - low)
    rows = max(1, _CHUNK_VOXELS // per_slice)
    for z0 in range(0, shape[0], rows):
        chunk = np.array(array[z0:z0 + rows], dtype=np.float32)  # a copy: converted in place
        chunk -= low
        chunk *= gain
        np.clip(chunk, 0, 255, out=chunk)
        np.nan_to_num(chunk, copy=False, nan=0.0)
        np.rint(chunk, out=chunk)
        out[z0:z0 + rows] = chunk
    return out


# ---------------------------------------------------------------------------------------------
# Labels


def read_motor_csv(
    path: Path | str,
    *,
    unit: str,
    volumes: Mapping[str, Any],
) -> dict[str, np.ndarray]:
    """Motor centres per tomogram from a ``tomo_id, z, y, x`` CSV, in voxels (z, y, x).

    ``volumes`` maps every known tomo_id to an object with ``shape`` (z, y, x) and ``spacing`` (Å).
    Returns (N, 3) float64 arrays for every known tomogram ((0, 3) when the CSV lists none).
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such labels file.")
    motors: dict[str, list[np.ndarray]] = {tomo_id: [] for tomo_id in volumes}
    with io.StringIO(utf8_text(path), newline="") as handle:
        reader = csv.DictReader(handle)
        header = reader.fieldnames or []
        columns = next((c for c in COORDINATE_COLUMNS if all(name in header for name in c)), None)
        if "tomo_id" not in header or columns is None:
            raise DataError(
                f"{path}: the columns must include tomo_id and z, y, x (or Motor axis 0, Motor axis 1, "
                f"Motor axis 2), but the header is {', '.join(header) or '(empty)'}."
            )
        for line, row in enumerate(reader, start=2):
            tomo_id = (row.get("tomo_id") or "").strip()
            where = f"{path} line {line} (tomo_id={tomo_id})"
            if tomo_id not in volumes:
                raise DataError(f"{where}: no volume named '{tomo_id}' in the folder.{did_you_mean(tomo_id, volumes)}")
            point = np.array([parse_number(row, column, where) for column in columns])
            if np.all(point == -1):
                continue
            volume = volumes[tomo_id]
            voxels = point / volume.spacing if unit == "angstrom" else point
            for column, value, raw, size in zip(columns, voxels, point, volume.shape, strict=True):
                if not -0.5 <= value < size - 0.5:
                    converted = f" ({raw:g} Å / {volume.spacing:g} Å per voxel = {value:g} voxels)" if unit == "angstrom" else ""
                    raise DataError(
                        f"{where}: `{column}`={raw:g}{converted} lies outside the volume of shape "
                        f"{volume.shape}; voxel coordinates must be in [-0.5, {size - 0.5:g})."
                    )
            motors[tomo_id].append(voxels)
    return {tomo_id: np.asarray(points, dtype=np.float64).reshape(-1, 3) for tomo_id, points in motors.items()}

