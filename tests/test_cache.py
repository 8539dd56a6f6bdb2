"""Resampling, coordinate mapping, normalisation and the voxel cache (build once, atomic, compact)."""

import json
import multiprocessing
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from motorsearch.atomic import temporary_name
from motorsearch.data import preprocess
from motorsearch.data.cache import cache_bytes_per_voxel, cache_key, load_cache, prepare_records
from motorsearch.data.records import TomogramRecord
from motorsearch.errors import DataError


def record(tomo_id, volume, spacing, motors, *, delay=0.0, fail=False):
    def load():
        time.sleep(delay)
        if fail:
            raise DataError(f"/data/{tomo_id}/slice_0003.jpg: not a readable JPEG.")
        return volume

    motors = None if motors is None else np.asarray(motors, dtype=np.float64).reshape(-1, 3)
    return TomogramRecord(tomo_id, tuple(volume.shape), spacing, motors, load, f"/data/{tomo_id}")


def random_volume(shape, seed):
    return np.random.default_rng(seed).integers(0, 256, size=shape, dtype=np.uint8)


def small_dataset(delay=0.0):
    return [
        record("tomo_a", random_volume((20, 40, 36), 0), 13.0, [[5.0, 10.5, 20.25]], delay=delay),
        record("tomo_b", random_volume((16, 32, 32), 1), 20.0, [[3, 4, 5], [10, 20, 30]], delay=delay),
        record("tomo_c", random_volume((24, 30, 40), 2), 16.0, [], delay=delay),
        record("tomo_d", random_volume((18, 36, 30), 3), 10.0, [], delay=delay),
    ]


IDENTITY = {"test": "small", "split": "train"}


def build(tmp_path, records=None, **kwargs):
    records = small_dataset() if records is None else records
    kwargs.setdefault("spacing", 16.0)
    kwargs.setdefault("n_folds", 2)
    return prepare_records(lambda: records, identity=kwargs.pop("identity", IDENTITY), cache_dir=tmp_path, **kwargs)


def leftovers(cache_dir: Path) -> list[str]:
    return sorted(p.name for p in cache_dir.iterdir() if p.is_dir())


# ---------------------------------------------------------------------------------------------
# preprocess


@pytest.mark.parametrize(
    "spacing, target, factor", [(13.0, 16.0, 0.8125), (16.0, 16.0, 1.0), (20.0, 10.0, 2.0), (7.0, None, 1.0)]
)
def test_resample_factor(spacing, target, factor):
    assert preprocess.resample_factor(spacing, target) == pytest.approx(factor)


@pytest.mark.parametrize("spacing, target", [(0.0, 16.0), (-1.0, 16.0), (13.0, 0.0)])
def test_resample_factor_rejects_non_positive(spacing, target):
    with pytest.raises(ValueError, match="must be positive"):
        preprocess.resample_factor(spacing, target)


@pytest.mark.parametrize(
    "coords, old_shape, new_shape, expected",
    [
        ([[0, 0, 0]], (10, 10, 10), (5, 5, 5), [[-0.25, -0.25, -0.25]]),
        ([[9, 4.5, -0.5]], (10, 10, 10), (5, 20, 10), [[4.25, 9.5, -0.5]]),
        ([[2, 2, 2]], (4, 4, 4), (4, 4, 4), [[2, 2, 2]]),
    ],
)
def test_coordinate_mapping_hand_worked(coords, old_shape, new_shape, expected):
    mapped = preprocess.to_resampled(np.array(coords, dtype=float), old_shape, new_shape)
    np.testing.assert_allclose(mapped, expected)
    np.testing.assert_allclose(preprocess.to_original(mapped, old_shape, new_shape), coords)


@pytest.mark.parametrize("shape, factor", [((20, 40, 36), 0.8125), ((7, 9, 11), 1.7), ((30, 16, 16), 0.5)])
def test_resample_matches_torch_trilinear_in_any_chunking(shape, factor):
    volume = random_volume(shape, 4)
    new_shape = preprocess.resampled_shape(shape, factor)
    reference = F.interpolate(torch.from_numpy(volume).float()[None, None], size=new_shape, mode="trilinear",
                              align_corners=False)[0, 0].numpy()
    for chunk in (1, 3, 64):
        result = preprocess.resample(volume, factor, chunk=chunk)
        assert result.dtype == np.uint8 and result.shape == new_shape
        assert np.abs(result.astype(float) - reference).max() <= 0.5 + 1e-3  # rounding only


def test_resampled_blob_lands_where_the_coordinate_mapping_says():
    old_shape, position = (40, 48, 44), np.array([17.3, 25.6, 20.2])
    grid = np.stack(np.meshgrid(*[np.arange(n) for n in old_shape], indexing="ij"), axis=-1)
    blob = 200.0 * np.exp(-((grid - position) ** 2).sum(-1) / (2 * 3.0**2))
    volume = np.round(blob).astype(np.uint8)
    for factor in (0.7, 1.3):
        resampled = preprocess.resample(volume, factor).astype(np.float64)
        new_grid = np.stack(np.meshgrid(*[np.arange(n) for n in resampled.shape], indexing="ij"), axis=-1)
        centroid = (new_grid * resampled[..., None]).sum((0, 1, 2)) / resampled.sum()
        expected = preprocess.to_resampled(position[None], old_shape, resampled.shape)[0]
        np.testing.assert_allclose(centroid, expected, atol=0.1)


def test_normalize_hand_worked():
    values = np.array([0, 255, 122.4], dtype=np.float32).reshape(1, 1, 3)
    np.testing.assert_allclose(preprocess.normalize(values, "fixed").ravel(), [-0.48 / 0.225, 0.52 / 0.225, 0.0],
                               atol=1e-5)
    np.testing.assert_allclose(preprocess.normalize(np.array([1, 3], np.uint8), "zscore"), [-1, 1])
    np.testing.assert_allclose(preprocess.normalize(np.array([10], np.uint8), "zscore", mean=6.0, std=2.0), [2.0])
    with pytest.raises(ValueError, match="normalization"):
        preprocess.normalize(values, "minmax")


def test_volume_stats_exact():
    volume = random_volume((9, 5, 7), 5)
    mean, std = preprocess.volume_stats(volume, chunk=2)
    assert mean == pytest.approx(volume.mean()) and std == pytest.approx(volume.std())


# ---------------------------------------------------------------------------------------------
# the cache


def test_cache_contents_motors_and_size(tmp_path):
    records = small_dataset()
    cache = build(tmp_path, records)
    assert cache.root == tmp_path / cache.key and (cache.root / "manifest.json").is_file()
    assert [t.tomo_id for t in cache.tomograms] == ["tomo_a", "tomo_b", "tomo_c", "tomo_d"]
    assert cache_bytes_per_voxel(cache) <= 1.05
    for source, cached in zip(records, cache.tomograms, strict=True):
        factor = source.spacing / 16.0
        expected = preprocess.resample(source.load(), factor)
        volume = cached.volume()
        assert isinstance(volume, np.memmap) and not volume.flags.writeable
        np.testing.assert_array_equal(volume, expected)
        assert cached.shape == expected.shape and cached.original_shape == source.shape
        assert cached.spacing == 16.0 and cached.original_spacing == source.spacing
        np.testing.assert_allclose(cached.motors, preprocess.to_resampled(source.motors, source.shape, cached.shape))
        np.testing.assert_allclose(cached.to_original(cached.motors), source.motors, atol=1e-9)
        np.testing.assert_allclose(cached.motors_a, source.motors * source.spacing)
        assert cached.mean == pytest.approx(expected.mean()) and cached.std == pytest.approx(expected.std())
    # tomo_a: 13 Å -> 16 Å gives round(20 * 0.8125) = 16 slices, and a motor at z=5 maps to 5.5*0.8-0.5 = 3.9
    assert cache.tomograms[0].shape == (16, 32, 29)
    assert cache.tomograms[0].motors[0, 0] == pytest.approx(3.9)


def test_native_spacing_keeps_voxels(tmp_path):
    records = small_dataset()
    cache = build(tmp_path, records, spacing=None)
    for source, cached in zip(records, cache.tomograms, strict=True):
        np.testing.assert_array_equal(cached.volume(), source.load())
        assert cached.spacing == source.spacing
        np.testing.assert_allclose(cached.motors, source.motors)


def test_folds_and_metadata(tmp_path):
    cache = build(tmp_path, n_folds=2, split_seed=0)
    folds = {t.tomo_id: t.fold for t in cache.tomograms}
    # two positives (a, b) and two negatives (c, d): each fold gets one of each
    assert sorted(folds[t] for t in ("tomo_a", "tomo_b")) == [0, 1]
    assert sorted(folds[t] for t in ("tomo_c", "tomo_d")) == [0, 1]
    val = {t.tomo_id for t in cache.val_tomograms(0)}
    train = {t.tomo_id for t in cache.train_tomograms(0)}
    assert len(val) == 2 and val | train == set(folds) and not val & train
    with pytest.raises(ValueError, match="fold"):
        cache.val_tomograms(2)
    rows = (cache.root / "metadata.csv").read_text().splitlines()
    assert rows[0].startswith("tomo_id,file,shape_z,shape_y,shape_x,spacing,") and len(rows) == 5
    assert (cache.root / "folds-k2-seed0.csv").read_text().splitlines()[0] == "tomo_id,fold"
    # another fold set-up reuses the voxels: same folder, no rebuild
    again = build(tmp_path, n_folds=3, split_seed=5)
    assert again.root == cache.root and again.manifest["build_id"] == cache.manifest["build_id"]
    assert {t.fold for t in again.tomograms} <= {0, 1, 2}


def test_settings_change_the_key(tmp_path):
    base = cache_key(IDENTITY, spacing=16.0, assume_spacing=None)
    assert base.startswith("train-")
    assert cache_key(IDENTITY, spacing=12.0, assume_spacing=None) != base
    assert cache_key(IDENTITY, spacing=16.0, assume_spacing=15.0) != base
    assert cache_key({**IDENTITY, "labels_stat": [1, 2]}, spacing=16.0, assume_spacing=None) != base
    assert cache_key(dict(reversed(list(IDENTITY.items()))), spacing=16.0, assume_spacing=None) == base


def test_unknown_spacing_needs_an_assumption(tmp_path):
    test_split = [record("tomo_x", random_volume((16, 20, 20), 6), None, None)]
    identity = {"test": "unlabelled", "split": "test"}
    with pytest.raises(DataError, match=r"/data/tomo_x: the voxel spacing of 'tomo_x' is unknown.*--assume-spacing"):
        build(tmp_path, test_split, identity=identity)
    assert leftovers(tmp_path) == []
    cache = build(tmp_path, test_split, identity=identity, assume_spacing=12.0)
    (tomogram,) = cache.tomograms
    assert tomogram.motors is None and tomogram.fold == -1 and tomogram.original_spacing == 12.0
    assert tomogram.shape == (12, 15, 15)
    assert cache.labelled() == []


@pytest.mark.parametrize(
    "bad, message",
    [
        (record("tomo_z", random_volume((8, 8, 8), 7), 16.0, [], fail=True), "slice_0003.jpg: not a readable JPEG"),
        (record("tomo_z", random_volume((8, 8, 8), 7), -2.0, []), "`spacing` must be positive, but got spacing=-2.0"),
        (record("tomo_z", random_volume((8, 8, 8), 7), 16.0, [[1, 9, 1]]), "outside the volume of shape"),
        (record("tomo_a", random_volume((8, 8, 8), 7), 16.0, []), "'tomo_a' appears more than once"),
    ],
)
def test_bad_tomogram_leaves_no_partial_cache(tmp_path, bad, message):
    with pytest.raises(DataError, match=message):
        build(tmp_path, small_dataset() + [bad])
    assert leftovers(tmp_path) == []


def test_wrong_volume_shape_is_a_data_error(tmp_path):
    liar = record("tomo_z", random_volume((8, 8, 8), 7), 16.0, [])
    liar.shape = (8, 8, 9)
    with pytest.raises(DataError, match=r"/data/tomo_z: volume shape \(8, 8, 8\) does not match"):
        build(tmp_path, small_dataset() + [liar])
    assert leftovers(tmp_path) == []


def test_stale_temporary_folder_is_removed(tmp_path):
    key = cache_key(IDENTITY, spacing=16.0, assume_spacing=None)
    stale = temporary_name(tmp_path / key)  # as a killed builder left it
    (stale / "volumes").mkdir(parents=True)
    cache = build(tmp_path)
    assert leftovers(tmp_path) == [cache.key]


def _concurrent_prepare(cache_dir: str, log: str, result: str) -> None:
    def records():
        with open(log, "a") as handle:
            handle.write("built\n")
        return small_dataset(delay=0.25)

    cache = prepare_records(records, identity=IDENTITY, cache_dir=cache_dir, spacing=16.0, n_folds=2)
    Path(result).write_text(json.dumps(cache.manifest["build_id"]))


def test_concurrent_prepare_builds_once(tmp_path):
    context = multiprocessing.get_context("spawn")  # a forked child of a torch process can hang in OpenMP
    log = tmp_path / "builds.log"
    cache_dir = tmp_path / "cache"
    workers = [context.Process(target=_concurrent_prepare, args=(str(cache_dir), str(log), str(tmp_path / f"r{i}")))
               for i in range(2)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=60)
        assert worker.exitcode == 0
    assert log.read_text() == "built\n"
    ids = {json.loads((tmp_path / f"r{i}").read_text()) for i in range(2)}
    (folder,) = leftovers(cache_dir)  # the cache, and no temporary folder
    assert ids == {load_cache(cache_dir / folder, n_folds=2, split_seed=0).manifest["build_id"]}


# ---------------------------------------------------------------------------------------------
# through the readers: prepare(cfg) and the CLI on a small simulated Kaggle download


@pytest.fixture(scope="module")
def kaggle_root(tmp_path_factory):
    from motorsearch.data.simulate import simulate_dataset

    return simulate_dataset(tmp_path_factory.mktemp("download") / "byu", n_train=4, n_test=2, seed=0, scale=0.25)


def test_prepare_reads_a_kaggle_download(tmp_path, kaggle_root):
    from motorsearch.config import DataConfig
    from motorsearch.data.cache import prepare, source_identity
    from motorsearch.data.kaggle import read_kaggle

    cfg = DataConfig(root=str(kaggle_root), cache_dir=str(tmp_path), n_folds=2)
    cache = prepare(cfg)
    records = read_kaggle(kaggle_root, "train")
    assert [t.tomo_id for t in cache.tomograms] == [r.tomo_id for r in records]
    for source, cached in zip(records, cache.tomograms, strict=True):
        np.testing.assert_array_equal(cached.volume(), preprocess.resample(source.load(), source.spacing / 16.0))
        np.testing.assert_allclose(cached.to_original(cached.motors), source.motors, atol=1e-9)
    assert {t.fold for t in cache.tomograms} == {0, 1}
    assert prepare(cfg).manifest["build_id"] == cache.manifest["build_id"]
    assert source_identity(cfg, "train")["labels_stat"][0] == (kaggle_root / "train_labels.csv").stat().st_size

    with pytest.raises(DataError, match="spacing of 'tomo_.*' is unknown"):
        prepare(cfg, split="test")
    test_cache = prepare(cfg, split="test", assume_spacing=15.0)
    assert len(test_cache.tomograms) == 2 and all(t.fold == -1 and t.motors is None for t in test_cache.tomograms)


def test_corrupt_jpeg_leaves_no_cache(tmp_path, kaggle_root):
    import shutil

    from motorsearch.config import DataConfig
    from motorsearch.data.cache import prepare

    root = tmp_path / "byu"
    shutil.copytree(kaggle_root, root)
    tomo = sorted((root / "train").iterdir())[-1]
    (tomo / "slice_0002.jpg").write_bytes(b"\xff\xd8\xff not a jpeg")
    cache_dir = tmp_path / "cache"
    with pytest.raises(DataError, match="slice_0002.jpg"):
        prepare(DataConfig(root=str(root), cache_dir=str(cache_dir)))
    assert not cache_dir.exists()  # the folder this call made goes too, lock file and all

    cache_dir.mkdir()  # a cache folder that was there before stays, with no cache and no temporary in it
    (cache_dir / "other.txt").write_text("kept")
    with pytest.raises(DataError, match="slice_0002.jpg"):
        prepare(DataConfig(root=str(root), cache_dir=str(cache_dir)))
    assert leftovers(cache_dir) == [] and (cache_dir / "other.txt").read_text() == "kept"


def test_synthetic_identity_follows_the_settings():
    from motorsearch.config import DataConfig, SyntheticConfig
    from motorsearch.data.cache import source_identity

    base = source_identity(DataConfig(), "train")
    assert base == source_identity(DataConfig(cache_dir="elsewhere"), "train")
    assert base != source_identity(DataConfig(synthetic=SyntheticConfig(seed=1)), "train")
    assert base != source_identity(DataConfig(), "test")


def test_cli_prepare(tmp_path, kaggle_root, capsys):
    from motorsearch.cli import main

    args = ["prepare", "--data", str(kaggle_root), "--cache-dir", str(tmp_path), "--set", "data.n_folds=2"]
    assert main(args + ["--spacing", "20"]) == 0
    out = capsys.readouterr().out
    assert f"cache: {tmp_path}/train-" in out and "tomograms: 4 (" in out and "bytes/voxel: 1.0" in out
    assert main(args + ["--split", "test"]) == 2
    assert "--assume-spacing" in capsys.readouterr().err
    assert main(args + ["--split", "test", "--assume-spacing", "14"]) == 0
    assert "tomograms: 2 (0 motors)" in capsys.readouterr().out
    assert main(args + ["--spacing", "-3"]) == 2
    assert "`data.spacing` must be positive, but got data.spacing=-3.0" in capsys.readouterr().err
    assert main(args + ["--spacing", "fine"]) == 2
    assert "--spacing" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------
# parallel builds


def cache_files(folder: Path) -> dict[str, bytes]:
    """Every file of a cache by relative path; the manifest without what names the build itself."""
    files = {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}
    manifest = json.loads(files.pop("manifest.json"))
    for field in ("build_id", "builder_pid", "build_seconds"):
        manifest.pop(field)
    files["manifest.json"] = json.dumps(manifest, sort_keys=True).encode()
    return files


def test_a_parallel_build_is_byte_identical_to_a_serial_one(tmp_path, kaggle_root):
    from motorsearch.config import DataConfig
    from motorsearch.data.cache import prepare

    serial = prepare(DataConfig(root=str(kaggle_root), cache_dir=str(tmp_path / "serial")))
    parallel = prepare(DataConfig(root=str(kaggle_root), cache_dir=str(tmp_path / "parallel")), workers=3)
    assert serial.key == parallel.key
    files = cache_files(serial.root)
    assert sum(name.startswith("volumes/") for name in files) == 4
    assert cache_files(parallel.root) == files
    assert leftovers(tmp_path / "parallel") == [parallel.key]


def test_a_failing_tomogram_in_a_worker_stops_the_build_and_leaves_nothing(tmp_path):
    records = small_dataset() + [record("tomo_e", random_volume((16, 32, 32), 4), 16.0, [], fail=True)]
    with pytest.raises(DataError, match=r"^/data/tomo_e/slice_0003.jpg: not a readable JPEG.$"):
        build(tmp_path, records, workers=2)
    assert leftovers(tmp_path) == []


def test_cli_prepare_workers(tmp_path, kaggle_root, capsys):
    from motorsearch.cli import main

    args = ["prepare", "--data", str(kaggle_root), "--cache-dir", str(tmp_path / "cache")]
    assert main(args + ["--workers", "0"]) == 2
    assert capsys.readouterr().err.strip().endswith("`--workers` must be at least 1, but got --workers=0.")
    assert not (tmp_path / "cache").exists()
    assert main(args + ["--workers", "2"]) == 0
    assert "tomograms: 4 (" in capsys.readouterr().out
