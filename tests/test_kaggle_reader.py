"""The Kaggle JPEG-folder reader and its labels CSV, on tiny datasets written here with Pillow."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from motorsearch.data.kaggle import (
    LABEL_COLUMNS,
    TomogramLabels,
    read_kaggle,
    read_labels_csv,
    write_labels_csv,
    write_submission_csv,
)
from motorsearch.errors import DataError

HEADER = ",".join(LABEL_COLUMNS)


def flat_volume(shape: tuple[int, int, int], offset: int = 0) -> np.ndarray:
    """Each z slice one grey level: JPEG stores flat 8x8 blocks exactly, so reads are exact."""
    levels = (np.arange(shape[0]) * 30 + 10 + offset) % 250
    return np.broadcast_to(levels[:, None, None], shape).astype(np.uint8).copy()


def write_tomogram(folder: Path, volume: np.ndarray) -> None:
    folder.mkdir(parents=True)
    for z, plane in enumerate(volume):
        Image.fromarray(plane).save(folder / f"slice_{z:04d}.jpg", quality=95)


def write_csv(path: Path, rows: list[str], header: str = HEADER) -> Path:
    path.write_text("\n".join([header, *rows]) + "\n")
    return path


@pytest.fixture
def dataset(tmp_path: Path) -> Path:
    """Three train tomograms (2 motors / none / 'Number of motors' 3 with one listed) and one test."""
    root = tmp_path / "byu"
    write_tomogram(root / "train" / "tomo_a", flat_volume((4, 16, 24)))
    write_tomogram(root / "train" / "tomo_b", flat_volume((3, 16, 8), offset=5))
    write_tomogram(root / "train" / "tomo_c", flat_volume((5, 8, 8), offset=9))
    write_tomogram(root / "test" / "tomo_t", flat_volume((2, 8, 16)))
    write_csv(root / "train_labels.csv", [
        "0,tomo_a,1,2,3,4,16,24,13.1,2",
        "1,tomo_a,3,15,22.5,4,16,24,13.1,2",
        "2,tomo_b,-1,-1,-1,3,16,8,15.6,0",
        "3,tomo_c,4,0,7,5,8,8,6.5,3",
    ])
    return root


def test_reads_labels_shapes_and_voxels(dataset: Path) -> None:
    records = {r.tomo_id: r for r in read_kaggle(dataset)}
    assert list(records) == ["tomo_a", "tomo_b", "tomo_c"]
    a, b, c = records["tomo_a"], records["tomo_b"], records["tomo_c"]
    np.testing.assert_array_equal(a.motors, [[1, 2, 3], [3, 15, 22.5]])
    assert (a.shape, a.spacing, a.labelled) == ((4, 16, 24), 13.1, True)
    assert b.motors.shape == (0, 3) and b.spacing == 15.6 and b.labelled
    np.testing.assert_array_equal(c.motors, [[4, 0, 7]])  # "Number of motors" 3, one listed: keep it
    volume = a.load()
    assert volume.dtype == np.uint8 and volume.shape == (4, 16, 24) and volume.flags.c_contiguous
    np.testing.assert_array_equal(volume, flat_volume((4, 16, 24)))
    assert "tomo_a" in repr(a.load)
    np.testing.assert_array_equal(pickle.loads(pickle.dumps(a)).load(), volume)  # for worker processes


def test_test_split_is_unlabelled(dataset: Path) -> None:
    (record,) = read_kaggle(dataset, "test")
    assert (record.tomo_id, record.shape, record.spacing, record.motors) == ("tomo_t", (2, 8, 16), None, None)
    np.testing.assert_array_equal(record.load(), flat_volume((2, 8, 16)))


def test_threads_and_labels_override(dataset: Path, tmp_path: Path) -> None:
    relabelled = write_csv(tmp_path / "relabelled.csv", [
        "0,tomo_a,2,2,2,4,16,24,13.1,1", "1,tomo_b,1,1,1,3,16,8,15.6,1", "2,tomo_c,-1,-1,-1,5,8,8,6.5,0",
    ])
    records = read_kaggle(dataset, labels=relabelled, decode_threads=3)
    assert [r.motors.tolist() for r in records] == [[[2, 2, 2]], [[1, 1, 1]], []]
    np.testing.assert_array_equal(records[2].load(), flat_volume((5, 8, 8), offset=9))


def test_write_then_read_labels_round_trip(tmp_path: Path) -> None:
    labels = {
        "tomo_x": TomogramLabels(np.array([[1.0, 2.0, 3.0], [4.0, 5.5, 6.0]]), 13.1, (10, 20, 30)),
        "tomo_y": TomogramLabels(np.zeros((0, 3)), 15.0, (5, 6, 7)),
    }
    path = tmp_path / "labels.csv"
    write_labels_csv(path, labels)
    assert path.read_text().splitlines() == [
        HEADER,
        "0,tomo_x,1,2,3,10,20,30,13.1,2",
        "1,tomo_x,4,5.5,6,10,20,30,13.1,2",
        "2,tomo_y,-1,-1,-1,5,6,7,15,0",
    ]
    back = read_labels_csv(path)
    assert list(back) == ["tomo_x", "tomo_y"]
    np.testing.assert_array_equal(back["tomo_x"].motors, labels["tomo_x"].motors)
    assert back["tomo_y"] == (back["tomo_y"].motors, 15.0, (5, 6, 7)) and back["tomo_y"].motors.shape == (0, 3)
    write_submission_csv(tmp_path / "sub.csv", {"tomo_x": (1, 2.5, 3), "tomo_y": None})
    assert (tmp_path / "sub.csv").read_text() == (
        "tomo_id,Motor axis 0,Motor axis 1,Motor axis 2\ntomo_x,1,2.5,3\ntomo_y,-1,-1,-1\n"
    )


# ---------------------------------------------------------------------------------------------
# Bad input: each error names the file / row / field and the value.


def _remove(path: Path) -> None:
    path.unlink()


@pytest.mark.parametrize(
    ("damage", "expected"),
    [
        (lambda root: _remove(root / "train/tomo_a/slice_0001.jpg"), ["tomo_a", "missing", ": 1."]),
        (lambda root: write_tomogram_slice(root / "train/tomo_a/slice_0004.jpg", (16, 24)),
         ["tomo_a", "5 slices", "Array shape=(4, 16, 24)"]),
        (lambda root: write_tomogram_slice(root / "train/tomo_a/slice_1.jpg", (16, 24)),
         ["two files for slice 1"]),
        (lambda root: write_tomogram_slice(root / "train/tomo_a/slice_x.jpg", (16, 24)),
         ["slice_x.jpg", "slice_NNNN.jpg"]),
        (lambda root: (root / "train/tomo_a/slice_0000.jpg").write_bytes(b"not a jpeg"),
         ["tomo_a/slice_0000.jpg", "cannot read"]),
        (lambda root: write_tomogram(root / "train/tomo_new", flat_volume((2, 4, 4))),
         ["tomo_new", "has no row", "train_labels.csv", "-1,-1,-1"]),
        (lambda root: _remove_all(root / "train/tomo_b"), ["train_labels.csv", "tomo_b", "without a folder"]),
        (lambda root: _remove(root / "train_labels.csv"), ["train_labels.csv", "no such file"]),
        (lambda root: _empty_split(root / "train"), ["train", "no tomogram folders"]),
    ],
    ids=["gap", "extra-slice", "duplicate-number", "bad-name", "corrupt-header", "no-label-row",
         "label-without-folder", "no-labels-file", "empty-split"],
)
def test_bad_folders(dataset: Path, damage, expected: list[str]) -> None:
    damage(dataset)
    with pytest.raises(DataError) as info:
        read_kaggle(dataset)
    for text in expected:
        assert text in str(info.value)


def write_tomogram_slice(path: Path, size_yx: tuple[int, int]) -> None:
    Image.fromarray(np.full(size_yx, 99, np.uint8)).save(path, quality=95)


def _remove_all(folder: Path) -> None:
    for path in folder.iterdir():
        path.unlink()
    folder.rmdir()


def _empty_split(folder: Path) -> None:
    for tomo in list(folder.iterdir()):
        _remove_all(tomo)


def test_slice_of_another_size_fails_on_load(dataset: Path) -> None:
    write_tomogram_slice(dataset / "train/tomo_a/slice_0002.jpg", (16, 20))
    record = read_kaggle(dataset)[0]
    with pytest.raises(DataError, match=r"slice_0002\.jpg: slice is 16x20 pixels .* slice_0000 is 16x24"):
        record.load()


def test_truncated_jpeg_fails_on_load(dataset: Path) -> None:
    path = dataset / "train/tomo_a/slice_0003.jpg"
    path.write_bytes(path.read_bytes()[:200])
    record = read_kaggle(dataset)[0]
    with pytest.raises(DataError, match=r"tomo_a/slice_0003\.jpg: cannot decode the JPEG slice"):
        record.load()


@pytest.mark.parametrize(
    ("rows", "header", "expected"),
    [
        (["0,t,1,2,3,4,16,24,13.1,1"], HEADER.replace(",Voxel spacing", ""), ["missing column(s) 'Voxel spacing'"]),
        (["0,t,1,abc,3,4,16,24,13.1,1"], HEADER, ["line 2", "tomo_id=t", "`Motor axis 1` must be a number", "'abc'"]),
        (["0,t,1,2,3,4,16,24,13.1,1", "1,t,1,2,3,4,16,24,nan,1"], HEADER, ["line 3", "`Voxel spacing` must be finite"]),
        (["0,t,1,2,3,4,16,24,0,1"], HEADER, ["line 2", "`Voxel spacing` must be positive", "Voxel spacing=0"]),
        (["0,t,1,2,3,4,16,24,-2.5,1"], HEADER, ["Voxel spacing=-2.5"]),
        (["0,t,1,2,24,4,16,24,13.1,1"], HEADER, ["line 2", "`Motor axis 2`=24 lies outside the array", "[-0.5, 23.5)"]),
        (["0,t,-1,2,3,4,16,24,13.1,1"], HEADER, ["`Motor axis 0`=-1 lies outside the array"]),
        (["0,t,1,2,3,4,16.5,24,13.1,1"], HEADER, ["`Array shape (axis 1)` must be a positive whole number", "16.5"]),
        (["0,t,1,2,3,4,16,24,13.1,-1"], HEADER, ["`Number of motors` must be a whole number >= 0"]),
        (["0,,1,2,3,4,16,24,13.1,1"], HEADER, ["line 2", "`tomo_id` is empty"]),
        (["0,t,1,2,3,4,16,24,13.1,2", "1,t,1,2,3,4,16,24,14,2"], HEADER,
         ["line 3", "disagree with an earlier row", "Voxel spacing=13.1"]),
    ],
    ids=["missing-column", "not-a-number", "nan", "zero-spacing", "negative-spacing", "outside",
         "partial-minus-one", "fractional-shape", "negative-count", "empty-id", "inconsistent"],
)
def test_bad_label_rows(tmp_path: Path, rows: list[str], header: str, expected: list[str]) -> None:
    path = write_csv(tmp_path / "train_labels.csv", rows, header=header)
    with pytest.raises(DataError) as info:
        read_labels_csv(path)
    message = str(info.value)
    assert message.startswith(str(path))
    for text in expected:
        assert text in message


def test_column_order_does_not_matter(tmp_path: Path) -> None:
    columns = list(reversed(LABEL_COLUMNS))
    path = write_csv(tmp_path / "l.csv", ["1,13.1,24,16,4,3,2,1,t,0"], header=",".join(columns))
    labels = read_labels_csv(path)
    np.testing.assert_array_equal(labels["t"].motors, [[1, 2, 3]])
    assert labels["t"].shape == (4, 16, 24) and labels["t"].spacing == 13.1
