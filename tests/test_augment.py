"""Augmentation: geometric transforms commute exactly with the heatmap grid; jitter; off switches."""

import numpy as np
import pytest

from motorsearch.config import AugmentConfig
from motorsearch.data.augment import augment_pair, flip, rotate90_yx
from motorsearch.data.targets import heatmap

STRIDE = 8
SIGMA = 5.0


def transform_point(point, shape, flips, k):
    """Where a continuous (z, y, x) voxel coordinate goes under ``flip`` then ``rotate90_yx``."""
    z, y, x = point
    d, h, w = shape
    z, y, x = (d - 1 - z if 0 in flips else z, h - 1 - y if 1 in flips else y, w - 1 - x if 2 in flips else x)
    for _ in range(k % 4):  # np.rot90(axes=(1, 2)): out[:, i, j] = in[:, j, w - 1 - i]
        y, x = w - 1 - x, y
        h, w = w, h
    return np.array([z, y, x])


@pytest.mark.parametrize("flips", [(), (0,), (1,), (2,), (0, 2), (0, 1, 2)])
@pytest.mark.parametrize("k", [0, 1, 2, 3])
def test_geometric_transforms_commute_with_the_heatmap_grid(flips, k):
    shape, out_shape = (16, 32, 32), (2, 4, 4)
    motor = np.array([5.3, 11.7, 20.2])
    moved = rotate90_yx(flip(heatmap(motor[None], (0, 0, 0), out_shape, STRIDE, SIGMA), flips), k)
    expected = heatmap(transform_point(motor, shape, flips, k)[None], (0, 0, 0), out_shape, STRIDE, SIGMA)
    np.testing.assert_allclose(moved, expected, atol=1e-6)


@pytest.mark.parametrize("k", [1, 3])
def test_quarter_turn_of_a_non_square_patch_maps_points_too(k):
    shape, out_shape = (8, 16, 32), (1, 2, 4)
    motor = np.array([3.0, 6.5, 25.0])
    moved = rotate90_yx(heatmap(motor[None], (0, 0, 0), out_shape, STRIDE, SIGMA), k)
    assert moved.shape == (1, 4, 2)
    expected = heatmap(transform_point(motor, shape, (), k)[None], (0, 0, 0), (1, 4, 2), STRIDE, SIGMA)
    np.testing.assert_allclose(moved, expected, atol=1e-6)


def marked_pair(shape=(16, 32, 32), motor=(5, 11, 20)):
    image = np.ones(shape, dtype=np.float32)
    image[motor] = -5.0
    target = heatmap(np.asarray(motor, dtype=float)[None], (0, 0, 0), tuple(s // STRIDE for s in shape), STRIDE, SIGMA)
    return image, target


def test_image_and_target_move_together():
    image, target = marked_pair()
    seen = set()
    for seed in range(40):
        new_image, new_target = augment_pair(image, target, np.random.default_rng(seed),
                                             AugmentConfig(intensity_scale=0.0, intensity_shift=0.0))
        assert new_image.flags.c_contiguous and new_target.flags.c_contiguous
        marker = np.unravel_index(int(np.argmin(new_image)), new_image.shape)
        expected = heatmap(np.asarray(marker, dtype=float)[None], (0, 0, 0), new_target.shape, STRIDE, SIGMA)
        np.testing.assert_allclose(new_target, expected, atol=1e-6)
        seen.add(marker)
    assert len(seen) >= 8  # flips and turns were actually applied (16 distinct outcomes possible)
    assert image[5, 11, 20] == -5.0 and image.sum() == image.size - 6.0  # the input is unchanged


def test_non_square_patches_only_turn_by_half():
    image, target = marked_pair(shape=(16, 32, 48), motor=(3, 4, 5))
    for seed in range(20):
        new_image, new_target = augment_pair(image, target, np.random.default_rng(seed), AugmentConfig())
        assert new_image.shape == image.shape and new_target.shape == target.shape


def test_intensity_jitter_stays_in_its_range_and_is_deterministic():
    image = np.zeros((8, 8, 8), dtype=np.float32)
    target = np.zeros((1, 1, 1), dtype=np.float32)
    config = AugmentConfig(flip=False, rotate90=False, intensity_scale=0.1, intensity_shift=0.3)
    values = set()
    for seed in range(30):
        new_image, _ = augment_pair(image + 1.0, target, np.random.default_rng(seed), config)
        value = float(new_image[0, 0, 0])
        assert np.all(new_image == value)  # one scale and shift for the whole patch
        assert 0.9 - 0.3 - 1e-6 <= value <= 1.1 + 0.3 + 1e-6
        values.add(value)
    assert len(values) == 30
    again, _ = augment_pair(image + 1.0, target, np.random.default_rng(7), config)
    first, _ = augment_pair(image + 1.0, target, np.random.default_rng(7), config)
    np.testing.assert_array_equal(again, first)


@pytest.mark.parametrize(
    "config",
    [AugmentConfig(enabled=False), AugmentConfig(flip=False, rotate90=False, intensity_scale=0.0, intensity_shift=0.0)],
)
def test_everything_can_be_switched_off(config):
    image, target = marked_pair()
    for seed in range(5):
        new_image, new_target = augment_pair(image, target, np.random.default_rng(seed), config)
        np.testing.assert_array_equal(new_image, image)
        np.testing.assert_array_equal(new_target, target)
