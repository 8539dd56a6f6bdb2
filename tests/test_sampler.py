"""PatchDataset: determinism, the mix of patch kinds, patch/target alignment, padding, DataLoader workers."""

import pickle

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from motorsearch.config import AugmentConfig, SamplingConfig, TargetConfig
from motorsearch.data.cache import prepare_records
from motorsearch.data.preprocess import normalize
from motorsearch.data.records import TomogramRecord
from motorsearch.data.sampler import PatchDataset
from motorsearch.data.targets import heatmap

STRIDE = 16
SIGMA_A = 200.0
SPACING = 16.0  # the records are already at the cache spacing: voxels are copied as they are
MARKER = 0  # the darkest voxel of a volume sits exactly on each motor


def marked_record(tomo_id, shape, motors, seed):
    rng = np.random.default_rng(seed)
    volume = rng.integers(100, 160, size=shape, dtype=np.uint8)
    for z, y, x in motors:
        volume[z, y, x] = MARKER
    motors = np.asarray(motors, dtype=np.float64).reshape(-1, 3)
    return TomogramRecord(tomo_id, shape, SPACING, motors, lambda: volume, f"/data/{tomo_id}")


@pytest.fixture(scope="module")
def tomograms(tmp_path_factory):
    records = [
        marked_record("tomo_a", (48, 200, 200), [(20, 40, 50), (30, 160, 150)], 0),
        marked_record("tomo_b", (40, 180, 220), [(12, 90, 100)], 1),
        marked_record("tomo_c", (48, 160, 160), [], 2),
        marked_record("tomo_small", (20, 40, 40), [(9, 17, 22)], 3),  # smaller than a patch
    ]
    cache = prepare_records(lambda: records, identity={"test": "sampler", "split": "train"},
                            cache_dir=tmp_path_factory.mktemp("cache"), spacing=SPACING, n_folds=2)
    return cache.tomograms


def make_dataset(tomograms, *, augment=None, seed=0, patch_size=(32, 64, 64), n=64, **sampling):
    return PatchDataset(
        tomograms,
        sampling=SamplingConfig(patch_size=list(patch_size), patches_per_epoch=n, **sampling),
        augment=augment or AugmentConfig(), target=TargetConfig(sigma_a=SIGMA_A),
        stride=STRIDE, normalization="fixed", seed=seed,
    )


def test_shapes_and_dtypes(tomograms):
    dataset = make_dataset(tomograms)
    image, target = dataset[0]
    assert len(dataset) == 64
    assert image.shape == (1, 32, 64, 64) and target.shape == (1, 2, 4, 4)
    assert image.dtype == torch.float32 and target.dtype == torch.float32
    assert 0.0 <= float(target.min()) and float(target.max()) <= 1.0
    with pytest.raises(IndexError):
        dataset[64]


def test_item_is_a_pure_function_of_seed_epoch_and_index(tomograms):
    first, second = make_dataset(tomograms), make_dataset(tomograms)
    for i in (0, 5, 63):
        a, b = first.draw(i, epoch=3), second.draw(i, epoch=3)
        np.testing.assert_array_equal(a.image, b.image)
        np.testing.assert_array_equal(a.target, b.target)
    second.draw(7, epoch=9)  # drawing other items in between changes nothing
    np.testing.assert_array_equal(second.draw(5, epoch=3).image, first.draw(5, epoch=3).image)
    first.set_epoch(3)
    np.testing.assert_array_equal(first[5][0].numpy()[0], second.draw(5, epoch=3).image)
    differ = [not np.array_equal(first.draw(i, epoch=3).image, first.draw(i, epoch=4).image) for i in range(8)]
    assert all(differ)
    other_seed = make_dataset(tomograms, seed=1)
    assert not np.array_equal(other_seed.draw(0, epoch=3).image, first.draw(0, epoch=3).image)


@pytest.mark.parametrize("positive, hard, n", [(0.5, 0.25, 64), (0.3, 0.3, 10), (1.0, 0.0, 8), (0.0, 0.0, 8)])
def test_kinds_follow_the_configured_fractions(tomograms, positive, hard, n):
    dataset = make_dataset(tomograms, n=n, positive_fraction=positive, hard_negative_fraction=hard)
    kinds = [dataset.kind(i, epoch=2) for i in range(n)]
    assert kinds.count("positive") == round(n * positive)
    assert kinds.count("hard_negative") == round(n * hard)
    assert kinds != [dataset.kind(i, epoch=3) for i in range(n)] or len(set(kinds)) == 1


def test_positives_hold_a_peak_and_hard_negatives_do_not(tomograms):
    large = [t for t in tomograms if t.tomo_id != "tomo_small"]  # a patch of tomo_small always holds its motor
    dataset = make_dataset(large, n=48, positive_fraction=0.5, hard_negative_fraction=0.5)
    kinds = []
    for i in range(len(dataset)):
        patch = dataset.draw(i, epoch=0)
        kinds.append(patch.kind)
        if patch.kind == "positive":
            assert patch.target.max() > 0.5
        else:  # 1500 Å from a motor, with 2 sigma of room to every motor: the heatmap stays ~0
            assert patch.target.max() < 0.05
            assert patch.tomo_id != "tomo_c"  # hard negatives are drawn near motors
    assert kinds.count("positive") == kinds.count("hard_negative") == 24


@pytest.mark.parametrize(
    "augment",
    [AugmentConfig(enabled=False), AugmentConfig(flip=True, rotate90=False), AugmentConfig(flip=False, rotate90=True),
     AugmentConfig(flip=True, rotate90=True, intensity_scale=0.2, intensity_shift=0.2)],
)
def test_marker_sits_where_the_target_peaks(tomograms, augment):
    dataset = make_dataset(tomograms, augment=augment, n=40, positive_fraction=1.0, hard_negative_fraction=0.0)
    out_shape = dataset.out_shape
    sigma_vox = SIGMA_A / SPACING
    for i in range(len(dataset)):
        patch = dataset.draw(i, epoch=1)
        # the marker (the only voxel at 0) is the motor, wherever flips and rotations put it
        marker = np.unravel_index(int(np.argmin(patch.image)), patch.image.shape)
        assert patch.image[marker] < patch.image.min() + 1e-6 < np.partition(patch.image.ravel(), 1)[1]
        expected = heatmap(np.asarray(marker, dtype=float)[None], (0, 0, 0), out_shape, STRIDE, sigma_vox)
        np.testing.assert_allclose(patch.target, expected, atol=1e-3)


def test_image_is_the_normalised_volume_under_the_drawn_augmentation(tomograms):
    dataset = make_dataset(tomograms, n=24, augment=AugmentConfig(intensity_scale=0.2, intensity_shift=0.2))
    by_id = {t.tomo_id: t for t in tomograms}
    turned = 0
    for i in range(len(dataset)):
        patch = dataset.draw(i, epoch=5)
        tomogram = by_id[patch.tomo_id]
        if tomogram.tomo_id == "tomo_small":
            continue
        region = tuple(slice(o, o + s) for o, s in zip(patch.origin, dataset.patch_size, strict=True))
        plain = normalize(tomogram.volume()[region], "fixed")
        aug = patch.augmentation
        expected = aug.geometry(plain) * np.float32(aug.scale) + np.float32(aug.shift)
        np.testing.assert_allclose(patch.image, expected, rtol=1e-5, atol=1e-5)
        turned += aug.quarter_turns % 2
    assert turned > 0


def test_small_volume_is_padded_with_its_mean_and_stays_aligned(tomograms):
    small = [t for t in tomograms if t.tomo_id == "tomo_small"]
    dataset = make_dataset(small, augment=AugmentConfig(enabled=False), n=16, positive_fraction=0.5,
                           hard_negative_fraction=0.0)
    fill = normalize(np.float32(round(small[0].mean)), "fixed")
    for i in range(len(dataset)):
        patch = dataset.draw(i)
        # the whole volume lies inside the patch: origin in [volume - patch, 0] per axis
        assert all(n - s <= o <= 0 for o, s, n in zip(patch.origin, (32, 64, 64), (20, 40, 40), strict=True))
        inside = tuple(slice(-o, -o + n) for o, n in zip(patch.origin, small[0].shape, strict=True))
        np.testing.assert_array_equal(patch.image[inside], normalize(small[0].volume(), "fixed"))
        padding = np.ones(patch.image.shape, dtype=bool)
        padding[inside] = False
        np.testing.assert_allclose(patch.image[padding], fill)
        motor = np.asarray([9, 17, 22]) - np.asarray(patch.origin)
        expected = heatmap(motor[None], (0, 0, 0), dataset.out_shape, STRIDE, SIGMA_A / SPACING)
        np.testing.assert_allclose(patch.target, expected, atol=1e-6)


def test_rejects_bad_arguments(tomograms):
    with pytest.raises(ValueError, match="multiples of stride"):
        make_dataset(tomograms, patch_size=(24, 64, 64))
    with pytest.raises(ValueError, match="empty"):
        make_dataset([])
    with pytest.raises(ValueError, match="normalization"):
        PatchDataset(tomograms, sampling=SamplingConfig(), augment=AugmentConfig(), target=TargetConfig(),
                     stride=STRIDE, normalization="minmax", seed=0)


def test_pickles_without_volumes_and_works_in_dataloader_workers(tomograms):
    dataset = make_dataset(tomograms, n=8)
    dataset.set_epoch(2)
    expected = [dataset[i] for i in range(8)]  # opens memory maps in this process
    assert len(pickle.dumps(dataset)) < 100_000  # no volume travels with it
    loader = DataLoader(dataset, batch_size=2, num_workers=2, shuffle=False)
    images, targets = zip(*loader, strict=True)
    torch.testing.assert_close(torch.cat(images), torch.stack([e[0] for e in expected]))
    torch.testing.assert_close(torch.cat(targets), torch.stack([e[1] for e in expected]))


def blob_record(tomo_id, shape, motor, seed, sigma_vox=2.0):
    """A flat grey volume with one dark Gaussian blob centred at ``motor`` (sub-voxel)."""
    rng = np.random.default_rng(seed)
    grid = np.stack(np.meshgrid(*[np.arange(n, dtype=np.float64) for n in shape], indexing="ij"), axis=-1)
    depth = np.exp(-((grid - np.asarray(motor)) ** 2).sum(-1) / (2 * sigma_vox**2))
    volume = np.clip(np.rint(200 - 150 * depth + rng.normal(0, 0.3, shape)), 0, 255).astype(np.uint8)
    return TomogramRecord(tomo_id, shape, SPACING, np.asarray([motor], dtype=np.float64), lambda: volume,
                          f"/data/{tomo_id}")


@pytest.fixture(scope="module")
def blob_tomograms(tmp_path_factory):
    records = [blob_record("blob_a", (64, 96, 96), (30.0, 41.0, 52.0), 0),
               blob_record("blob_b", (56, 90, 110), (25.0, 60.0, 33.0), 1)]
    cache = prepare_records(lambda: records, identity={"test": "sampler-zoom", "split": "train"},
                            cache_dir=tmp_path_factory.mktemp("zoom_cache"), spacing=SPACING, n_folds=2)
    return cache.tomograms


def dark_centroid(image: np.ndarray) -> np.ndarray:
    """Sub-voxel centre of the dark blob: the darkness-weighted mean position near the darkest voxel."""
    darkness = np.clip(image.max() - image, 0, None)
    darkness[darkness < 0.3 * darkness.max()] = 0
    grid = np.indices(image.shape).reshape(3, -1).astype(np.float64)
    return (grid * darkness.ravel()).sum(axis=1) / darkness.sum()


@pytest.mark.parametrize(("zoom_min", "zoom_max"), [(0.6, 0.6), (1.3, 1.3), (0.6, 1.25)])
def test_zoomed_patches_keep_the_motor_and_its_target_aligned(blob_tomograms, zoom_min, zoom_max):
    """The sub-voxel alignment property with zoom: where the image shows the motor, the target peaks,
    with a sigma that is the same Å on the zoomed grid (sigma_a * zoom / spacing voxels)."""
    augment = AugmentConfig(zoom_min=zoom_min, zoom_max=zoom_max, intensity_scale=0.0, intensity_shift=0.0)
    dataset = make_dataset(blob_tomograms, augment=augment, n=12, patch_size=(32, 48, 48), positive_fraction=1.0,
                           hard_negative_fraction=0.0)
    by_id = {t.tomo_id: t for t in blob_tomograms}
    zooms = []
    for i in range(len(dataset)):
        patch = dataset.draw(i, epoch=2)
        zooms.append(patch.zoom)
        assert zoom_min - 1e-9 <= patch.zoom <= zoom_max + 1e-9
        motor = (by_id[patch.tomo_id].motors[0] - patch.origin + 0.5) * patch.zoom - 0.5
        undo = patch.augmentation  # flips and turns come after the zoom: undo them on the image
        image = np.rot90(patch.image, k=-undo.quarter_turns, axes=(1, 2))
        image = np.flip(image, axis=undo.flip_axes) if undo.flip_axes else image
        if not all(4 <= m <= n - 5 for m, n in zip(motor, image.shape, strict=True)):
            continue  # the blob is cut by the patch border: its centroid is biased
        np.testing.assert_allclose(dark_centroid(image), motor, atol=0.35)
        target = np.rot90(patch.target, k=-undo.quarter_turns, axes=(1, 2))
        target = np.flip(target, axis=undo.flip_axes) if undo.flip_axes else target
        expected = heatmap(motor[None], (0, 0, 0), dataset.out_shape, STRIDE, SIGMA_A * patch.zoom / SPACING)
        np.testing.assert_allclose(target, expected, atol=1e-5)
    assert len(set(zooms)) == (1 if zoom_min == zoom_max else len(zooms))

