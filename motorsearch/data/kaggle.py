"""Reader (and label writer) for the BYU Kaggle layout.

Layout, exactly as downloaded::

    <root>/train_labels.csv
    <root>/train/<tomo_id>/slice_0000.jpg, slice_0001.jpg, ...   one 8-bit grayscale JPEG per z slice
    <root>/test/<tomo_id>/slice_0000.jpg, ...                      no labels

``train_labels.csv`` has the columns :data:`LABEL_COLUMNS` (one row per motor, a ``-1,-1,-1`` row
for a tomogram without motors). Motor coordinates are voxels (z, y, x) of the original grid, where
voxel ``k`` spans ``[k - 0.5, k + 0.5)``. Volumes load lazily as (z, y, x) uint8 arrays.
"""

from __future__ import annotations

import csv
import io
import math
import os
import re
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
from PIL import Image

from motorsearch.atomic import write_text
from motorsearch.data.records import TomogramRecord
from motorsearch.errors import DataError

LABEL_COLUMNS = (
    "row_id", "tomo_id", "Motor axis 0", "Motor axis 1", "Motor axis 2",
    "Array shape (axis 0)", "Array shape (axis 1)", "Array shape (axis 2)",
    "Voxel spacing", "Number of motors",
)
SUBMISSION_COLUMNS = ("tomo_id", "Motor axis 0", "Motor axis 1", "Motor axis 2")
MOTOR_COLUMNS = LABEL_COLUMNS[2:5]
SHAPE_COLUMNS = LABEL_COLUMNS[5:8]

_SLICE_NAME = re.compile(r"slice_(\d+)\.jpe?g", re.IGNORECASE)


class TomogramLabels(NamedTuple):
    """Labels of one tomogram from a Kaggle CSV.

    motors: (N, 3) float64 motor centres in voxels (z, y, x); (0, 3) when it has none.
    spacing: Å per voxel. shape: (z, y, x) array shape in voxels.
    """

    motors: np.ndarray
    spacing: float
    shape: tuple[int, int, int]


def read_kaggle(
    root: Path | str,
    split: str = "train",
    *,
    labels: Path | str | None = None,
    decode_threads: int = 1,
) -> list[TomogramRecord]:
    """Records for every ``<root>/<split>/<tomo_id>/`` folder, sorted by tomo_id.

    Labels come from ``labels`` when given (e.g. a relabelled CSV), else from
    ``<root>/<split>_labels.csv`` when it exists (``train_labels.csv`` for the train split, which
    must have one). A split without labels (``test``) gives records with ``motors=None`` and
    ``spacing=None``. Only the first slice's header is read here; ``record.load()`` decodes all
    slices into one preallocated (z, y, x) uint8 array, with ``decode_threads`` threads (Pillow
    releases the GIL while decoding).

    Raises DataError naming the folder, slice or CSV row for: a missing split folder or labels
    file, an empty split, gaps or duplicates in the slice numbers, a slice count or slice size
    that disagrees with the CSV's ``Array shape``, a tomogram folder without a CSV row, CSV rows
    naming tomograms without a folder, and every bad CSV row (see ``read_labels_csv``).
    """
    if decode_threads < 1:
        raise ValueError(f"`decode_threads` must be at least 1, but got decode_threads={decode_threads}.")
    root = Path(root)
    split_dir = root / split
    if not split_dir.is_dir():
        raise DataError(f"{split_dir}: no such folder; the Kaggle layout is <root>/{split}/<tomo_id>/slice_0000.jpg.")
    folders = sorted(p for p in split_dir.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not folders:
        raise DataError(f"{split_dir}: the split holds no tomogram folders (expected <tomo_id>/slice_0000.jpg ...).")

    labels_path = Path(labels) if labels is not None else root / f"{split}_labels.csv"
    table: dict[str, TomogramLabels] | None = None
    if labels is not None or labels_path.is_file():
        table = read_labels_csv(labels_path)
    elif split == "train":
        raise DataError(f"{labels_path}: no such file; the train split needs its labels CSV.")

    records = []
    for folder in folders:
        slices = slice_paths(folder)
        height, width = _slice_size(slices[0])
        shape = (len(slices), height, width)
        spacing, motors = None, None
        if table is not None:
            entry = table.get(folder.name)
            if entry is None:
                raise DataError(
                    f"{folder}: tomogram '{folder.name}' has no row in {labels_path}; "
                    "a tomogram without motors needs a row with coordinates -1,-1,-1."
                )
            if entry.shape != shape:
                raise DataError(
                    f"{folder}: the slices give shape (z, y, x)={shape} ({len(slices)} slices of "
                    f"{height}x{width} pixels) but {labels_path} says Array shape={entry.shape}."
                )
            spacing, motors = entry.spacing, entry.motors
        load = JpegSlices(folder, tuple(slices), shape, decode_threads)
        records.append(TomogramRecord(folder.name, shape, spacing, motors, load, str(folder)))

    if table is not None:
        orphans = sorted(set(table) - {f.name for f in folders})
        if orphans:
            raise DataError(
                f"{labels_path}: names {len(orphans)} tomogram(s) without a folder in {split_dir}, "
                f"e.g. {', '.join(orphans[:3])}."
            )
    return records


def slice_paths(folder: Path) -> list[Path]:
    """``slice_NNNN.jpg`` files of one tomogram folder in z order; the numbers must be 0..N-1."""
    numbered: dict[int, Path] = {}
    with os.scandir(folder) as entries:
        for entry in entries:
            if entry.name.startswith(".") or not entry.name.lower().startswith("slice_"):
                continue
            match = _SLICE_NAME.fullmatch(entry.name)
            if match is None:
                raise DataError(f"{folder / entry.name}: slice files must be named slice_NNNN.jpg.")
            number = int(match.group(1))
            if number in numbered:
                raise DataError(f"{folder}: two files for slice {number}: {numbered[number].name} and {entry.name}.")
            numbered[number] = Path(entry.path)
    if not numbered:
        raise DataError(f"{folder}: no slice_NNNN.jpg files.")
    count = max(numbered) + 1
    missing = [n for n in range(count) if n not in numbered]
    if missing:
        shown = ", ".join(str(n) for n in missing[:5]) + (" ..." if len(missing) > 5 else "")
        raise DataError(
            f"{folder}: slice numbers must run 0..N-1 without gaps, but {len(missing)} are missing "
            f"below the highest, slice {count - 1}: {shown}."
        )
    return [numbered[n] for n in range(count)]


@dataclass(frozen=True)
class JpegSlices:
    """``record.load`` of a Kaggle tomogram: calling it decodes the slices (see ``load_slices``)."""

    folder: Path
    paths: tuple[Path, ...]
    shape: tuple[int, int, int]
    threads: int = 1

    def __call__(self) -> np.ndarray:
        return load_slices(self.paths, self.shape, threads=self.threads)

    def __repr__(self) -> str:
        return f"JpegSlices({str(self.folder)!r}, {len(self.paths)} slices, shape={self.shape})"


def load_slices(paths: Sequence[Path], shape: tuple[int, int, int], *, threads: int = 1) -> np.ndarray:
    """Decode one JPEG per z slice into a new (z, y, x) uint8 array of ``shape``.

    Raises DataError naming the slice for an unreadable/corrupt JPEG or a slice of another size.
    """
    volume = np.empty(shape, dtype=np.uint8)
    if len(paths) != shape[0]:
        raise ValueError(f"got {len(paths)} slice paths for shape {shape}")

    def decode(z: int) -> None:
        volume[z] = _decode_slice(paths[z], shape[1:])

    if threads == 1:
        for z in range(shape[0]):
            decode(z)
    else:
        with ThreadPoolExecutor(max_workers=threads) as pool:
            for _ in pool.map(decode, range(shape[0])):
                pass
    return volume


def _decode_slice(path: Path, size_yx: tuple[int, int]) -> np.ndarray:
    try:
        with Image.open(path, formats=["JPEG"]) as image:
            image.load()
            if image.mode != "L":
                image = image.convert("L")
            pixels = np.frombuffer(image.tobytes(), dtype=np.uint8)
            width, height = image.size
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise DataError(f"{path}: cannot decode the JPEG slice ({exc}).") from None
    if (height, width) != tuple(size_yx):
        raise DataError(
            f"{path}: slice is {height}x{width} pixels (y x x) but slice_0000 is "
            f"{size_yx[0]}x{size_yx[1]}; every slice of a tomogram must have the same size."
        )
    return pixels.reshape(height, width)


def _slice_size(path: Path) -> tuple[int, int]:
    """(height, width) of a JPEG from its header alone."""
    try:
        with Image.open(path, formats=["JPEG"]) as image:
            width, height = image.size
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise DataError(f"{path}: cannot read the JPEG slice ({exc}).") from None
    return height, width


# ---------------------------------------------------------------------------------------------
# Labels CSV


def read_labels_csv(path: Path | str) -> dict[str, TomogramLabels]:
    """Parse and validate a Kaggle labels CSV (columns :data:`LABEL_COLUMNS`, any order).

    Rows are grouped by tomo_id (first-seen order). ``-1,-1,-1`` rows mean "no motor"; a
    ``Number of motors`` larger than the rows listed keeps the listed motors. Every row is checked:
    numbers parse and are finite, shapes are positive integers, ``Voxel spacing`` > 0, coordinates
    lie inside the array (``-0.5 <= c < n - 0.5``), all rows of a tomogram agree on shape and
    spacing, and no motor is listed twice. The file must be UTF-8. Errors name the file, the line
    (header = line 1), the column and the value.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such labels file.")
    with io.StringIO(utf8_text(path), newline="") as handle:
        reader = csv.DictReader(handle)
        header = reader.fieldnames or []
        missing = [c for c in LABEL_COLUMNS if c not in header]
        if missing:
            raise DataError(
                f"{path}: missing column(s) {', '.join(repr(c) for c in missing)}; "
                f"the columns must be {', '.join(LABEL_COLUMNS)}."
            )
        motors: dict[str, list[tuple[float, float, float]]] = {}
        meta: dict[str, tuple[tuple[int, int, int], float]] = {}
        seen: dict[tuple[str, tuple[float, ...]], int] = {}  # (tomo_id, motor) -> its line
        for line, row in enumerate(reader, start=2):
            where = f"{path} line {line}"
            tomo_id = (row.get("tomo_id") or "").strip()
            if not tomo_id:
                raise DataError(f"{where}: `tomo_id` is empty.")
            where = f"{where} (tomo_id={tomo_id})"
            shape = tuple(_positive_int(row, column, where) for column in SHAPE_COLUMNS)
            spacing = parse_number(row, "Voxel spacing", where)
            if spacing <= 0:
                raise DataError(f"{where}: `Voxel spacing` must be positive, but got Voxel spacing={spacing:g}.")
            count = parse_number(row, "Number of motors", where)
            if count < 0 or not count.is_integer():
                raise DataError(
                    f"{where}: `Number of motors` must be a whole number >= 0, but got Number of motors={count:g}."
                )
            point = tuple(parse_number(row, column, where) for column in MOTOR_COLUMNS)
            previous = meta.setdefault(tomo_id, (shape, spacing))
            if previous != (shape, spacing):
                raise DataError(
                    f"{where}: Array shape={shape} and Voxel spacing={spacing:g} disagree with an earlier row "
                    f"of the same tomogram (Array shape={previous[0]}, Voxel spacing={previous[1]:g})."
                )
            motors.setdefault(tomo_id, [])
            if point == (-1.0, -1.0, -1.0):
                continue
            for column, value, size in zip(MOTOR_COLUMNS, point, shape, strict=True):
                if not -0.5 <= value < size - 0.5:
                    raise DataError(
                        f"{where}: `{column}`={value:g} lies outside the array; it must be in "
                        f"[-0.5, {size - 0.5:g}) for Array shape {shape}, or -1,-1,-1 for no motor."
                    )
            first = seen.setdefault((tomo_id, point), line)
            if first != line:
                raise DataError(f"{where}: the motor at ({', '.join(f'{v:g}' for v in point)}) is listed twice "
                                f"(also on line {first}); list each motor once.")
            motors[tomo_id].append(point)  # type: ignore[arg-type]
    return {
        tomo_id: TomogramLabels(
            np.asarray(points, dtype=np.float64).reshape(-1, 3), meta[tomo_id][1], meta[tomo_id][0]
        )
        for tomo_id, points in motors.items()
    }


def utf8_text(path: Path, *, what: str = "the labels CSV") -> str:
    """The text of ``path`` (a byte-order mark dropped); DataError naming the line when it is not UTF-8."""
    raw = path.read_bytes()
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw[:exc.start].count(b"\n") + 1
        raise DataError(f"{path} line {line}: {what} must be UTF-8 text, but byte {raw[exc.start:exc.start + 1]!r} "
                        "is not UTF-8 (saved as Latin-1?); save the file as UTF-8.") from None


def parse_number(row: Mapping[str, str | None], column: str, where: str) -> float:
    """``float(row[column])``; DataError naming ``where`` and the column if it is not a finite number."""
    text = (row.get(column) or "").strip()
    try:
        value = float(text)
    except ValueError:
        raise DataError(f"{where}: `{column}` must be a number, but got {column}={text!r}.") from None
    if not math.isfinite(value):
        raise DataError(f"{where}: `{column}` must be finite, but got {column}={text!r}.")
    return value


def _positive_int(row: Mapping[str, str | None], column: str, where: str) -> int:
    value = parse_number(row, column, where)
    if value < 1 or not value.is_integer():
        raise DataError(f"{where}: `{column}` must be a positive whole number, but got {column}={value:g}.")
    return int(value)


def write_labels_csv(path: Path | str, labels: Mapping[str, TomogramLabels]) -> None:
    """Write ``labels`` as a Kaggle labels CSV (columns :data:`LABEL_COLUMNS`, ``-1`` rows for none).

    Written atomically (:mod:`motorsearch.atomic`): a reader never sees half a file.
    """
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(LABEL_COLUMNS)
    row_id = 0
    for tomo_id, entry in labels.items():
        points = entry.motors if len(entry.motors) else np.full((1, 3), -1.0)
        for point in points:
            writer.writerow([
                row_id, tomo_id, *(_format(v) for v in point), *entry.shape,
                _format(entry.spacing), len(entry.motors),
            ])
            row_id += 1
    write_text(path, text.getvalue())


def write_submission_csv(path: Path | str, predictions: Mapping[str, Sequence[float] | None]) -> None:
    """Write a submission (columns :data:`SUBMISSION_COLUMNS`); None means no motor (``-1,-1,-1``)."""
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(SUBMISSION_COLUMNS)
    for tomo_id, point in predictions.items():
        writer.writerow([tomo_id, *(_format(v) for v in (point if point is not None else (-1, -1, -1)))])
    write_text(path, text.getvalue())


def _format(value: float) -> str:
    """Whole numbers without a decimal point (``235``), others as the shortest exact form."""
    value = float(value)
    return str(int(value)) if value.is_integer() else repr(value)
