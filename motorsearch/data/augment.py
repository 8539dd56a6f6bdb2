"""Training augmentation of a (patch, heatmap) pair: flips, 90° in-plane rotations, intensity jitter.

Geometric transforms act on the image (D, H, W) and on its target (D/s, H/s, W/s) alike. They
commute exactly with the output grid of ``targets``: with a patch side n a multiple of the stride
s, flipping maps input voxel j to n-1-j and output voxel i to n/s-1-i, and the centre of output
voxel i, s*i + (s-1)/2, goes to n-1-s*i-(s-1)/2 = s*(n/s-1-i) + (s-1)/2, the centre of its image.
A rotation by 90° in the y-x plane is a transpose plus a flip, so the same holds when H == W;
for H != W only 0° and 180° are drawn (a quarter turn would change the patch shape).

These are small pure NumPy functions rather than MONAI ``Flip``/``Rotate90`` transforms: one
random draw (an ``Augmentation``) must move a pair of arrays of different shapes together, and
``PatchDataset`` applies it to the raw uint8 patch as views before a single normalising pass.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from motorsearch.config import AugmentConfig


@dataclass(frozen=True)
class Augmentation:
    """One drawn augmentation: flip these axes, then turn ``quarter_turns`` times in (y, x),
    then map intensities ``v -> v * scale + shift`` (normalised units)."""

    flip_axes: tuple[int, ...] = ()
    quarter_turns: int = 0
    scale: float = 1.0
    shift: float = 0.0

    def geometry(self, array: np.ndarray) -> np.ndarray:
        """The flips and turns applied to a (D, H, W) array of any dtype (a view, not contiguous)."""
        return rotate90_yx(flip(array, self.flip_axes), self.quarter_turns)


def flip(array: np.ndarray, axes: tuple[int, ...]) -> np.ndarray:
    """Reverse ``array`` along each of ``axes`` (a view)."""
    return np.flip(array, axis=axes) if axes else array


def rotate90_yx(array: np.ndarray, k: int) -> np.ndarray:
    """Rotate a (D, H, W) array by ``k`` quarter turns in the (y, x) plane (a view; H, W swap if k odd)."""
    return np.rot90(array, k=k, axes=(1, 2)) if k % 4 else array


def draw_augmentation(rng: np.random.Generator, config: AugmentConfig, *, square: bool) -> Augmentation:
    """Draw an augmentation; ``square`` says whether H == W (else only 0 or 2 quarter turns).

    Draws, in this order and only for enabled transforms: a flip flag per axis (z, y, x; p=0.5
    each), a number of quarter turns in y-x, an intensity scale ``1 + U(-intensity_scale,
    intensity_scale)`` and a shift ``U(-intensity_shift, intensity_shift)``. ``config.enabled =
    False`` draws nothing and gives the identity.
    """
    if not config.enabled:
        return Augmentation()
    flip_axes: tuple[int, ...] = ()
    quarter_turns = 0
    scale, shift = 1.0, 0.0
    if config.flip:
        flip_axes = tuple(int(a) for a in np.flatnonzero(rng.random(3) < 0.5))
    if config.rotate90:
        quarter_turns = int(rng.integers(4)) if square else 2 * int(rng.integers(2))
    if config.intensity_scale:
        scale = 1.0 + float(rng.uniform(-config.intensity_scale, config.intensity_scale))
    if config.intensity_shift:
        shift = float(rng.uniform(-config.intensity_shift, config.intensity_shift))
    return Augmentation(flip_axes, quarter_turns, scale, shift)


def augment_pair(image: np.ndarray, target: np.ndarray, rng: np.random.Generator,
                 config: AugmentConfig) -> tuple[np.ndarray, np.ndarray]:
    """Randomly augment a float image (D, H, W) and its target (d, h, w) together.

    Returns new C-contiguous float32 arrays (the inputs are unchanged), or the inputs themselves
    when nothing is enabled. ``PatchDataset`` instead applies the geometry to the raw uint8 patch
    and folds the intensity map into normalisation, which is four times faster on big patches.
    """
    augmentation = draw_augmentation(rng, config, square=image.shape[1] == image.shape[2])
    if augmentation == Augmentation():
        return image, target
    image = np.ascontiguousarray(augmentation.geometry(image), dtype=np.float32)
    if augmentation.scale != 1.0 or augmentation.shift != 0.0:
        image *= np.float32(augmentation.scale)
        image += np.float32(augmentation.shift)
    return image, np.ascontiguousarray(augmentation.geometry(target), dtype=np.float32)
