"""open_records: dispatch on data.format, and the shared, built-once synthetic dataset."""

from __future__ import annotations

import multiprocessing
from pathlib import Path

import mrcfile
import numpy as np
import pytest

from motorsearch.config import DataConfig, SyntheticConfig
from motorsearch.data.kaggle import read_labels_csv
from motorsearch.data.simulate import simulate_dataset
from motorsearch.data.sources import ensure_synthetic, open_records, synthetic_key, synthetic_root
from motorsearch.errors import DataError


def small_synthetic(cache_dir: Path, seed: int = 11) -> DataConfig:
    return DataConfig(cache_dir=str(cache_dir), synthetic=SyntheticConfig(n_train=2, n_test=1, seed=seed))


def _open_in_child(cache_dir: str, barrier, results) -> None:
    barrier.wait()  # both processes ask for the dataset at the same moment
    cfg = small_synthetic(Path(cache_dir))
    root, built = ensure_synthetic(cfg)
    records = open_records(cfg)
    results.put((built, str(root), [(r.tomo_id, r.shape, r.motors.tolist(), int(r.load().sum())) for r in records]))


def test_concurrent_processes_build_once_and_read_the_same(tmp_path: Path) -> None:
    context = multiprocessing.get_context("spawn")
    barrier, results = context.Barrier(2), context.Queue()
    workers = [context.Process(target=_open_in_child, args=(str(tmp_path), barrier, results)) for _ in range(2)]
    for worker in workers:
        worker.start()
    outcomes = [results.get(timeout=120) for _ in workers]
    for worker in workers:
        worker.join(timeout=60)
        assert worker.exitcode == 0
    assert sorted(built for built, _, _ in outcomes) == [False, True]  # exactly one build
    assert outcomes[0][1:] == outcomes[1][1:]
    assert len(outcomes[0][2]) == 2
    synthetic = tmp_path / "synthetic"
    assert sorted(p.name for p in synthetic.iterdir() if not p.name.endswith(".lock")) == [Path(outcomes[0][1]).name]


def test_synthetic_root_is_reused_and_keyed(tmp_path: Path) -> None:
    cfg = small_synthetic(tmp_path, seed=12)
    stale = tmp_path / "synthetic" / synthetic_key(cfg.synthetic)
    stale.mkdir(parents=True)
    (stale / "half-written").write_text("no completion marker")  # e.g. left by a crashed copy
    root, built = ensure_synthetic(cfg)
    assert built and root == stale and not (root / "half-written").exists()
    assert synthetic_root(cfg) == root and ensure_synthetic(cfg) == (root, False)
    solution = read_labels_csv(root / "test_solution.csv")
    test = open_records(cfg, split="test")
    assert [r.tomo_id for r in test] == sorted(solution) and test[0].motors is None
    other = small_synthetic(tmp_path, seed=13)
    assert synthetic_key(other.synthetic) != synthetic_key(cfg.synthetic)
    harder = DataConfig(synthetic=SyntheticConfig(n_train=2, n_test=1, seed=12, difficulty=2.0))
    assert synthetic_key(harder.synthetic) != synthetic_key(cfg.synthetic)


def test_kaggle_root_and_labels_override(tmp_path: Path) -> None:
    root = simulate_dataset(tmp_path / "kaggle", n_train=2, n_test=1, seed=3, scale=0.3)
    cfg = DataConfig(root=str(root), format="kaggle")
    train = open_records(cfg)
    assert [r.tomo_id for r in train] == sorted(p.name for p in (root / "train").iterdir())
    assert all(r.motors is not None and r.spacing is not None for r in train)
    relabelled = tmp_path / "relabelled.csv"
    lines = (root / "train_labels.csv").read_text().splitlines()
    first = lines[1].split(",")
    first[2:5] = ["0", "0", "0"]
    relabelled.write_text("\n".join([lines[0], ",".join(first), *lines[2:]]) + "\n")
    cfg.labels = str(relabelled)
    assert open_records(cfg)[0].motors.tolist()[0] == [0.0, 0.0, 0.0]
    assert open_records(cfg, split="test")[0].motors is None  # labels apply to train only


def _mrc(path: Path, shape: tuple[int, int, int], voxel_size: float) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with mrcfile.new(path) as mrc:
        mrc.set_data(np.zeros(shape, np.float32))
        mrc.voxel_size = voxel_size


def test_mrc_folders_train_and_test(tmp_path: Path) -> None:
    _mrc(tmp_path / "flat" / "a.mrc", (6, 8, 10), 10.0)
    labels = tmp_path / "motors.csv"
    labels.write_text("tomo_id,z,y,x\na,20,30,40\n")
    cfg = DataConfig(root=str(tmp_path / "flat"), format="mrc", labels=str(labels), labels_unit="angstrom")
    (record,) = open_records(cfg)
    assert record.motors.tolist() == [[2.0, 3.0, 4.0]] and record.spacing == 10.0
    cfg.source_spacing = 5.0  # overrides the header: the same Å now lands on other voxels
    assert open_records(cfg)[0].motors.tolist() == [[4.0, 6.0, 8.0]]
    with pytest.raises(DataError, match=r"flat/test: no such folder; mrc volumes of the test split go in"):
        open_records(cfg, split="test")

    split_root = tmp_path / "split"
    _mrc(split_root / "train" / "a.mrc", (6, 8, 8), 10.0)
    _mrc(split_root / "test" / "t.mrc", (4, 4, 4), 12.0)
    cfg = DataConfig(root=str(split_root), format="mrc", labels=str(labels), labels_unit="angstrom")
    assert [r.tomo_id for r in open_records(cfg)] == ["a"]
    (test,) = open_records(cfg, split="test")
    assert (test.tomo_id, test.spacing, test.motors) == ("t", 12.0, None)
