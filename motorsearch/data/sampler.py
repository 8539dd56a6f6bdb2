"""Training patches cut from cached tomograms at random (not strided) origins, with heatmap targets.

Each epoch has ``sampling.patches_per_epoch`` items. Their kinds are fixed per epoch by a
shuffle: ``round(n * positive_fraction)`` positives, ``round(n * hard_negative_fraction)`` hard
negatives, the rest random. Item ``i`` of epoch ``e`` is a pure function of (``seed``, ``e``,
``i``): everything it draws comes from ``np.random.default_rng([seed, e, i])``, so a resumed run
sees exactly the patches an uninterrupted one would, whatever the worker count or order.

- positive: a motor drawn uniformly among all motors, placed uniformly in the patch at least
  ``min(stride, (side - 1) // 4)`` voxels from each face (before clipping the origin to the volume).
- hard negative: the patch centre about ``hard_negative_distance_a`` Å from a drawn motor in a
  random direction; up to 16 directions are tried for one whose patch keeps every motor at least
  2 sigma outside it (else the one with the most room). Its target is then ~0.
- random: a tomogram drawn uniformly, the origin uniform over the positions inside the volume.

Where a volume is smaller than the patch along an axis, the origin is negative or zero so the
whole volume lies inside the patch, and the rest is filled with the tomogram's mean grey level
(rounded; about 0 after "zscore" normalisation); the target uses the same origin, so it stays
aligned. Augmentation (see ``augment``) moves image and target together.

Zoom (``augment.zoom_min``/``zoom_max``, off at 1/1): a factor ``z`` is drawn log-uniformly
first, and the patch is cut from a source box of ``patch_size / z`` cached voxels, resampled
(trilinear) to ``patch_size``. Patch voxel ``j`` (centre ``j``) shows source coordinate
``origin - 0.5 + (j + 0.5) / z`` per axis, so a motor at source ``m`` sits at patch coordinate
``(m - origin + 0.5) * z - 0.5``; the target is built there with sigma ``sigma_a * z / spacing``
voxels, i.e. the same Å on the zoomed grid (whose spacing is ``spacing / z``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import torch
from scipy import ndimage
from torch.utils.data import Dataset

from motorsearch.config import NORMALIZATIONS, AugmentConfig, SamplingConfig, TargetConfig
from motorsearch.data import preprocess
from motorsearch.data.augment import Augmentation, draw_augmentation
from motorsearch.data.cache import CachedTomogram
from motorsearch.data.targets import heatmap

KINDS = ("positive", "hard_negative", "random")
_HARD_NEGATIVE_TRIES = 16
_KIND_STREAM = 0x6B696E64  # keeps the per-epoch kind shuffle apart from every item's stream


@dataclass
class Patch:
    """One drawn training example before conversion to tensors.

    ``image`` (D, H, W) float32 normalised; ``target`` (D/s, H/s, W/s) float32 in [0, 1];
    ``origin`` (z, y, x) cached-grid voxel index of the patch's first voxel before
    ``augmentation``, which was then applied to image and target; ``zoom`` the magnification
    (the patch shows ``patch_size / zoom`` cached voxels from ``origin``; see the module docstring).
    """

    image: np.ndarray
    target: np.ndarray
    kind: str
    tomo_id: str
    origin: tuple[int, int, int]
    augmentation: Augmentation
    zoom: float = 1.0


class PatchDataset(Dataset):
    """Random training patches and their heatmaps from labelled cached tomograms.

    ``__getitem__(i)`` returns ``(image, target)``: float32 tensors of shape (1, D, H, W) and
    (1, D/stride, H/stride, W/stride), (D, H, W) = ``sampling.patch_size``. Call ``set_epoch``
    before each epoch (DataLoader workers get the new epoch when they are started for the epoch,
    i.e. without ``persistent_workers``). Memory maps are opened lazily in each process and never
    pickled, so any number of DataLoader workers can be used.
    """

    def __init__(self, tomograms: list[CachedTomogram], *, sampling: SamplingConfig, augment: AugmentConfig,
                 target: TargetConfig, stride: int, normalization: str, seed: int):
        if not tomograms:
            raise ValueError("`tomograms` is empty; a PatchDataset needs at least one labelled tomogram.")
        unlabelled = [t.tomo_id for t in tomograms if not t.labelled]
        if unlabelled:
            raise ValueError(f"PatchDataset needs labelled tomograms, but got unlabelled {unlabelled[:3]}.")
        patch_size = tuple(int(p) for p in sampling.patch_size)
        if len(patch_size) != 3 or any(p < stride or p % stride for p in patch_size):
            raise ValueError(f"`patch_size` must be 3 multiples of stride={stride}, but got patch_size={patch_size}.")
        if normalization not in NORMALIZATIONS:
            raise ValueError(f"`normalization` must be one of {', '.join(NORMALIZATIONS)}, "
                             f"but got normalization={normalization!r}.")
        if seed < 0:
            raise ValueError(f"`seed` cannot be negative, but got seed={seed}.")
        self.tomograms = list(tomograms)
        self.sampling, self.augment, self.target = sampling, augment, target
        self.stride, self.normalization, self.seed = stride, normalization, seed
        self.patch_size = patch_size
        self.out_shape = tuple(p // stride for p in patch_size)
        self.epoch = 0
        self._motors = [(ti, mi) for ti, t in enumerate(self.tomograms) for mi in range(len(t.motors))]
        self._kinds: tuple[int, np.ndarray] | None = None
        self._volumes: dict[int, np.ndarray] = {}
        self._stats: dict[int, tuple[float, float]] = {}
        self._pid = os.getpid()

    def __len__(self) -> int:
        return self.sampling.patches_per_epoch

    def set_epoch(self, epoch: int) -> None:
        if epoch < 0:
            raise ValueError(f"`epoch` cannot be negative, but got epoch={epoch}.")
        self.epoch = epoch

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        patch = self.draw(i)
        return torch.from_numpy(patch.image)[None], torch.from_numpy(patch.target)[None]

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_volumes"] = {}  # memory maps are reopened in the receiving process
        return state

    def kind(self, i: int, epoch: int | None = None) -> str:
        """Which kind of patch item ``i`` of ``epoch`` (default: the current one) is."""
        self._check_index(i)
        return KINDS[int(self._epoch_kinds(self.epoch if epoch is None else epoch)[i])]

    def draw(self, i: int, epoch: int | None = None) -> Patch:
        """Item ``i`` of ``epoch`` (default: the current one) as NumPy arrays, with how it was drawn."""
        epoch = self.epoch if epoch is None else epoch
        kind = self.kind(i, epoch)
        rng = np.random.default_rng([self.seed, epoch, i])
        if kind != "random" and not self._motors:
            kind = "random"  # no motor to sample around in these tomograms
        zoom = draw_zoom(rng, self.augment)
        size = np.asarray(self.patch_size, dtype=np.float64) / zoom  # the source box, cached voxels
        if kind == "positive":
            ti, origin = self._positive_origin(rng, size)
        elif kind == "hard_negative":
            ti, origin = self._hard_negative_origin(rng, size)
        else:
            ti = int(rng.integers(len(self.tomograms)))
            low, high = self._origin_range(ti, size)
            origin = tuple(int(rng.integers(lo, hi + 1)) for lo, hi in zip(low, high, strict=True))
        tomogram = self.tomograms[ti]
        motors = (np.asarray(tomogram.motors, dtype=np.float64).reshape(-1, 3) - origin + 0.5) * zoom - 0.5
        target = heatmap(motors, (0, 0, 0), self.out_shape, self.stride, self.target.sigma_a * zoom / tomogram.spacing)
        augmentation = draw_augmentation(rng, self.augment, square=self.patch_size[1] == self.patch_size[2])
        # flips and turns on the raw patch, then one pass for normalisation and intensity jitter
        mean, std = self._intensity_stats(ti)
        alpha, beta = preprocess.normalization_affine(self.normalization, mean=mean, std=std)
        scale, shift = augmentation.scale, augmentation.shift
        raw = augmentation.geometry(self._read(ti, origin) if zoom == 1.0 else self._read_zoomed(ti, origin, zoom))
        image = np.multiply(raw, np.float32(alpha * scale), dtype=np.float32, order="C")
        image += np.float32(beta * scale + shift)
        target = np.ascontiguousarray(augmentation.geometry(target))
        return Patch(image=image, target=target, kind=kind, tomo_id=tomogram.tomo_id, origin=origin,
                     augmentation=augmentation, zoom=zoom)

    # -----------------------------------------------------------------------------------------

    def _check_index(self, i: int) -> None:
        if not 0 <= i < len(self):
            raise IndexError(f"patch index {i} out of range for {len(self)} patches per epoch.")

    def _epoch_kinds(self, epoch: int) -> np.ndarray:
        if self._kinds is None or self._kinds[0] != epoch:
            n = len(self)
            n_positive = min(n, round(n * self.sampling.positive_fraction))
            n_hard = min(n - n_positive, round(n * self.sampling.hard_negative_fraction))
            codes = np.repeat([0, 1, 2], [n_positive, n_hard, n - n_positive - n_hard])
            rng = np.random.default_rng([self.seed, epoch, n, _KIND_STREAM])
            self._kinds = (epoch, rng.permutation(codes))
        return self._kinds[1]

    def _origin_range(self, ti: int, size: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Lowest and highest allowed origin per axis of a ``size`` box: inside the volume, or
        around it if it is smaller."""
        spare = np.asarray(self.tomograms[ti].shape) - np.ceil(size).astype(np.int64)
        return np.minimum(spare, 0), np.maximum(spare, 0)

    def _clip_origin(self, ti: int, origin: np.ndarray, size: np.ndarray) -> tuple[int, int, int]:
        low, high = self._origin_range(ti, size)
        return tuple(int(v) for v in np.clip(origin, low, high))

    def _positive_origin(self, rng: np.random.Generator, size: np.ndarray) -> tuple[int, tuple[int, int, int]]:
        ti, mi = self._motors[int(rng.integers(len(self._motors)))]
        motor = self.tomograms[ti].motors[mi]
        margin = np.minimum(self.stride, (size - 1) // 4)
        offset = rng.uniform(margin, size - margin)
        return ti, self._clip_origin(ti, np.floor(motor - offset + 0.5), size)

    def _hard_negative_origin(self, rng: np.random.Generator, size: np.ndarray) -> tuple[int, tuple[int, int, int]]:
        ti, mi = self._motors[int(rng.integers(len(self._motors)))]
        tomogram = self.tomograms[ti]
        distance = self.sampling.hard_negative_distance_a / tomogram.spacing
        wanted_gap = 2.0 * self.target.sigma_a / tomogram.spacing
        best, best_gap = None, -np.inf
        for _ in range(_HARD_NEGATIVE_TRIES):
            direction = rng.normal(size=3)
            direction /= max(float(np.linalg.norm(direction)), 1e-12)
            centre = tomogram.motors[mi] + distance * direction
            origin = self._clip_origin(ti, np.floor(centre - size / 2 + 0.5), size)
            gap = _gap_to_box(tomogram.motors, np.asarray(origin), size)
            if gap > best_gap:
                best, best_gap = origin, gap
            if gap >= wanted_gap:
                break
        return ti, best

    def _volume(self, ti: int) -> np.ndarray:
        if self._pid != os.getpid():  # a forked worker: do not share the parent's maps
            self._volumes, self._pid = {}, os.getpid()
        if ti not in self._volumes:
            self._volumes[ti] = self.tomograms[ti].volume()
        return self._volumes[ti]

    def _intensity_stats(self, ti: int) -> tuple[float, float]:
        tomogram = self.tomograms[ti]
        if tomogram.mean is not None and tomogram.std is not None:
            return tomogram.mean, tomogram.std
        if ti not in self._stats:
            self._stats[ti] = preprocess.volume_stats(self._volume(ti))
        return self._stats[ti]

    def _read(self, ti: int, origin: tuple[int, ...], size: tuple[int, ...] | None = None) -> np.ndarray:
        """The raw uint8 box of ``size`` (default: the patch) at ``origin``, padded with the rounded
        mean outside the volume."""
        size = self.patch_size if size is None else tuple(size)
        volume = self._volume(ti)
        source, inside = [], []
        for start, side, n in zip(origin, size, volume.shape, strict=True):
            lo, hi = max(start, 0), min(start + side, n)
            source.append(slice(lo, hi))
            inside.append(slice(lo - start, hi - start))
        region = volume[tuple(source)]
        if region.shape == size:
            return np.array(region)  # read it now: a view would keep pages of the map alive
        patch = np.full(size, round(self._intensity_stats(ti)[0]), dtype=np.uint8)
        patch[tuple(inside)] = region
        return patch

    def _read_zoomed(self, ti: int, origin: tuple[int, int, int], zoom: float) -> np.ndarray:
        """The (D, H, W) float32 patch showing ``patch_size / zoom`` cached voxels from ``origin``,
        resampled trilinearly (see the module docstring for the coordinates)."""
        first = np.asarray(origin) - 1  # one voxel of margin on each side for the interpolation
        size = tuple(int(v) for v in np.ceil(np.asarray(self.patch_size) / zoom) + 3)
        box = self._read(ti, tuple(int(v) for v in first), size).astype(np.float32)
        # patch voxel j reads source coordinate origin - 0.5 + (j + 0.5) / zoom, i.e. box coordinate + 1
        offset = 1.0 - 0.5 + 0.5 / zoom
        return ndimage.affine_transform(box, np.full(3, 1.0 / zoom), offset=offset, output_shape=self.patch_size,
                                        order=1, mode="nearest")


def draw_zoom(rng: np.random.Generator, config: AugmentConfig) -> float:
    """A magnification drawn log-uniformly from ``[zoom_min, zoom_max]``; 1.0 (and no draw, so the
    other draws stay as they were) when augmentation or zoom is off."""
    if not config.enabled or config.zoom_min == config.zoom_max == 1.0:
        return 1.0
    return float(np.exp(rng.uniform(np.log(config.zoom_min), np.log(config.zoom_max))))


def _gap_to_box(points: np.ndarray, origin: np.ndarray, size: np.ndarray) -> float:
    """Smallest distance (voxels) from (N, 3) points to the box of voxels [origin, origin + size)."""
    low, high = origin - 0.5, origin + size - 0.5
    outside = np.maximum(np.maximum(low - points, points - high), 0.0)
    return float(np.sqrt((outside**2).sum(axis=1)).min())
