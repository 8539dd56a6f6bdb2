"""The built-in simulator: exact Kaggle layout, determinism, labels inside arrays, visible motors."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest

from motorsearch.cli import main
from motorsearch.data.kaggle import LABEL_COLUMNS, SUBMISSION_COLUMNS, read_kaggle, read_labels_csv
from motorsearch.data.phantom import SHAPE_AT_16A, SPACING_RANGE_A, simulate_tomogram
from motorsearch.data.simulate import simulate_dataset
from motorsearch.errors import ConfigError, InputError

TINY = {"n_train": 4, "n_test": 3, "scale": 0.3}


def tree_digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return simulate_dataset(tmp_path_factory.mktemp("sim") / "data", seed=5, **TINY)


def test_exact_kaggle_layout(tiny: Path) -> None:
    assert sorted(p.name for p in tiny.iterdir()) == [
        "sample_submission.csv", "simulation.json", "test", "test_solution.csv", "train", "train_labels.csv",
    ]
    for name in ("train_labels.csv", "test_solution.csv"):
        assert (tiny / name).read_text().splitlines()[0] == ",".join(LABEL_COLUMNS)
    submission = (tiny / "sample_submission.csv").read_text().splitlines()
    assert submission[0] == ",".join(SUBMISSION_COLUMNS)
    test_ids = sorted(p.name for p in (tiny / "test").iterdir())
    assert submission[1:] == [f"{tomo_id},-1,-1,-1" for tomo_id in test_ids]
    for folder in [*(tiny / "train").iterdir(), *(tiny / "test").iterdir()]:
        assert folder.name.startswith("tomo_") and len(folder.name) == 11
        int(folder.name[5:], 16)
        names = sorted(p.name for p in folder.iterdir())
        assert names == [f"slice_{z:04d}.jpg" for z in range(len(names))]
    rows = (tiny / "train_labels.csv").read_text().splitlines()[1:]
    assert [int(row.split(",")[0]) for row in rows] == list(range(len(rows)))  # row_id


def test_labels_read_back_inside_arrays(tiny: Path) -> None:
    train = read_kaggle(tiny)  # the reader cross-checks every shape against the slices
    assert len(train) == TINY["n_train"]
    counts = [len(r.motors) for r in train]
    assert sum(c == 0 for c in counts) == TINY["n_train"] // 2 and all(c <= 3 for c in counts)
    solution = read_labels_csv(tiny / "test_solution.csv")
    test = read_kaggle(tiny, "test")
    assert sorted(solution) == [r.tomo_id for r in test] and all(r.motors is None for r in test)
    assert sorted(len(s.motors) for s in solution.values()) == [0, 1, 1]  # 0 or 1, half (rounded up) with one
    for record in train:
        assert SPACING_RANGE_A[0] <= record.spacing <= SPACING_RANGE_A[1]
        at_16a = np.array(record.shape) * record.spacing / 16
        for n, (lo, hi) in zip(at_16a, SHAPE_AT_16A, strict=True):
            assert lo * TINY["scale"] - 1 <= n <= hi * TINY["scale"] + 1
        if len(record.motors):
            assert np.all(record.motors >= 0) and np.all(record.motors <= np.array(record.shape) - 1)
            assert np.array_equal(record.motors, np.rint(record.motors))


def test_same_seed_same_bytes_other_seed_differs(tiny: Path, tmp_path: Path) -> None:
    again = simulate_dataset(tmp_path / "again", seed=5, **TINY)
    assert tree_digest(again) == tree_digest(tiny)
    other = simulate_dataset(tmp_path / "other", seed=6, **TINY)
    assert tree_digest(other) != tree_digest(tiny)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["again", "other"]  # no temporary folders left


def ball_mean(volume: np.ndarray, centre: np.ndarray, radius: float) -> float:
    z, y, x = np.ogrid[: volume.shape[0], : volume.shape[1], : volume.shape[2]]
    inside = (z - centre[0]) ** 2 + (y - centre[1]) ** 2 + (x - centre[2]) ** 2 <= radius**2
    return float(volume[inside].mean())


@pytest.mark.parametrize("seed", [0, 1])
def test_motors_are_dark_where_labelled(seed: int) -> None:
    phantom = simulate_tomogram((seed,), n_motors=2, difficulty=1.0)
    volume, spacing = phantom.volume.astype(np.float64), phantom.spacing
    at_16a = np.array(volume.shape) * spacing / 16
    assert all(lo - 1 <= n <= hi + 1 for n, (lo, hi) in zip(at_16a, SHAPE_AT_16A, strict=True))
    assert len(phantom.motors) == 2
    mean, std = volume.mean(), volume.std()
    for motor in phantom.motors:
        near = ball_mean(volume, motor, 150 / spacing)
        assert near < mean - 1.0 * std  # dense (dark) matter at the label
        # 600 Å away along y or x (staying inside) it is much lighter than at the motor itself.
        for axis in (1, 2):
            step = 600 / spacing * (1 if motor[axis] < volume.shape[axis] / 2 else -1)
            away = motor + np.eye(3)[axis] * step
            assert ball_mean(volume, away, 150 / spacing) > near + 0.5 * std


def test_difficulty_raises_noise() -> None:
    def roughness(difficulty: float) -> float:
        volume = simulate_tomogram((3,), n_motors=1, difficulty=difficulty, scale=0.4).volume.astype(np.float64)
        return float(np.abs(np.diff(volume, axis=2)).mean() / volume.std())

    easy, default, hard = roughness(0.0), roughness(1.0), roughness(3.0)
    assert easy < 0.5 * default and default < hard


def test_bad_arguments(tmp_path: Path) -> None:
    for n_train in (-1, 0):  # an empty train split trains nothing
        with pytest.raises(ConfigError, match=f"`n_train` must be at least 1 .*, but got n_train={n_train}"):
            simulate_dataset(tmp_path / "x", n_train=n_train, n_test=1, seed=0)
    with pytest.raises(ConfigError, match="`difficulty` cannot be negative"):
        simulate_dataset(tmp_path / "x", n_train=1, n_test=1, seed=0, difficulty=-0.5)
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep.txt").write_text("mine")
    with pytest.raises(InputError, match="full: already exists and is not an empty folder"):
        simulate_dataset(tmp_path / "full", n_train=1, n_test=0, seed=0)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["full"]


def test_cli_writes_and_reports(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "cli"
    assert main(["simulate", "--out", str(out), "--n-train", "1", "--n-test", "1", "--seed", "3"]) == 0
    printed = capsys.readouterr().out
    assert "train: 1 tomograms" in printed and "test: 1 tomograms" in printed and str(out) in printed
    assert len(read_kaggle(out)) == 1
    assert main(["simulate", "--out", str(out), "--n-train", "1", "--n-test", "1"]) == 2
    assert main(["simulate", "--out", str(tmp_path / "neg"), "--n-train", "-2"]) == 2
    assert main(["simulate", "--out", str(tmp_path / "empty"), "--n-train", "0"]) == 2
    err = capsys.readouterr().err
    assert "already exists" in err and "Traceback" not in err
    assert "`--n-train` must be at least 1 (an empty train split trains nothing), but got --n-train=-2." in err
    assert "but got --n-train=0." in err
    assert not (tmp_path / "neg").exists() and not (tmp_path / "empty").exists()
