"""One synthetic cryo-ET tomogram: a density scene imaged with a missing wedge and noise.

The scene is drawn in Å on a coarse grid (:data:`COARSE_SPACING_A`, fast to fill and to Fourier
filter), imaged (low-pass + a ±60° missing wedge about the y axis, the tilt axis), interpolated to
the tomogram's own voxel spacing and given fine noise there. Dense matter is DARK, as in real data.

What is in a scene (all sizes in Å):
- a bacterial cell envelope: inner and outer membrane 250 Å apart, a faint peptidoglycan layer,
  denser cytoplasm; the cell is a cylinder of radius 2500–6000 Å, its axis tilted up to 25° from z,
  so the envelope crosses x-y slices as a curved double line;
- flagellar motors on the inner membrane: a bell (C-ring of radius 200 Å at the bottom, about
  45 nm across, narrowing to the MS ring at the membrane), a central rod through the periplasm,
  and a filament of 200 Å diameter leaving outwards. The label is the motor's centre, 120 Å
  inside the inner membrane, on a whole voxel;
- distractors, more with ``difficulty``: ribosomes (two blobs, about 25 nm) in the cytoplasm,
  lumps on the inner membrane, outer-membrane vesicles, very dark gold beads (10 nm) near the
  ice surfaces, and at difficulty > 0.5 motor-like rings loose in the cytoplasm.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

SPACING_RANGE_A = (10.0, 20.0)
SHAPE_AT_16A = ((64, 96), (160, 224), (160, 224))  # (z, y, x) voxel ranges after resampling to 16 Å
COARSE_SPACING_A = 24.0
TILT_LIMIT_DEG = 60.0
BLUR_A = 18.0  # sigma of the imaging low-pass
MEMBRANE_GAP_A = 250.0  # inner to outer membrane
MOTOR_DEPTH_A = 120.0  # motor centre below the inner membrane
MIN_MOTOR_DISTANCE_A = 700.0
# Gaussians of width sigma spaced sigma/1.5 apart sum to a tube of 1.5*sqrt(2*pi) times their peak.
TUBE = 1.0 / (1.5 * math.sqrt(2 * math.pi))


@dataclass(frozen=True)
class Knobs:
    """What ``difficulty`` d sets (d = 0 trivial, 1 default, 2-3 hard)."""

    fine_noise: float  # sigma of the per-voxel noise, in units of membrane density
    texture_noise: float  # sigma of the coarse noise imaged with the wedge
    ribosomes_per_um3: float
    membrane_lumps: float  # mean count
    vesicles: float  # mean count
    gold_beads: float  # mean count
    decoys: float  # mean count of loose motor-like rings
    motor_contrast: float

    @classmethod
    def at(cls, difficulty: float) -> Knobs:
        d = float(difficulty)
        return cls(
            fine_noise=0.3 * d,
            texture_noise=0.12 * d,
            ribosomes_per_um3=12_000.0 * min(d, 2.0),
            membrane_lumps=5.0 * d,
            vesicles=0.5 * d,
            gold_beads=1.2 * d,
            decoys=max(0.0, d - 0.5),
            motor_contrast=1.0 if d <= 1 else 1.0 / (1.0 + 0.3 * (d - 1.0)),
        )


@dataclass
class Phantom:
    """A simulated tomogram: (z, y, x) uint8 ``volume``, ``spacing`` Å/voxel, ``motors`` (N, 3) voxels."""

    volume: np.ndarray
    spacing: float
    motors: np.ndarray


def simulate_tomogram(seed: int | tuple[int, ...], *, n_motors: int, difficulty: float = 1.0,
                      scale: float = 1.0) -> Phantom:
    """Simulate one tomogram with up to ``n_motors`` motors (fewer only if they cannot be placed).

    ``scale`` multiplies the physical extent (1.0: about 64-96 x 160-224 x 160-224 voxels at 16 Å);
    tests use small scales. Deterministic in ``seed``.
    """
    rng = np.random.default_rng(seed)
    knobs = Knobs.at(difficulty)
    spacing = round(float(rng.uniform(*SPACING_RANGE_A)), 1)
    extent = np.array([rng.integers(lo, hi + 1) for lo, hi in SHAPE_AT_16A], dtype=np.float64) * 16.0 * scale
    shape = tuple(max(8, int(round(e / spacing))) for e in extent)
    grid = _Grid(shape, spacing)
    cell = _Cell.random(rng, grid.extent)
    motors = _place_motors(rng, cell, shape, spacing, n_motors)

    density = np.zeros(grid.shape, dtype=np.float32)
    cytoplasm = cell.draw(density, grid)
    for centre, normal in motors:
        _draw_motor(rng, density, grid, centre, normal, knobs.motor_contrast)
    centres = np.array([c for c, _ in motors]).reshape(-1, 3)
    _draw_distractors(rng, density, grid, cell, centres, cytoplasm, knobs)

    image = _image(rng, density, grid, knobs)
    labels = np.rint(centres / spacing)
    return Phantom(image, spacing, labels)


# ---------------------------------------------------------------------------------------------
# Coarse grid and drawing primitives


class _Grid:
    """Coarse grid covering a tomogram: voxel j of an axis sits at j * COARSE_SPACING_A Å.

    Fine voxel i of the tomogram sits at i * spacing Å, so the coarse grid needs
    floor((n - 1) * spacing / coarse) + 2 points per axis to interpolate every fine voxel.
    """

    def __init__(self, fine_shape: tuple[int, ...], spacing: float):
        self.fine_shape = fine_shape
        self.spacing = spacing
        self.step = COARSE_SPACING_A
        self.extent = np.array([(n - 1) * spacing for n in fine_shape])
        self.shape = tuple(int(e // self.step) + 2 for e in self.extent)
        self.axes = [np.arange(n, dtype=np.float64) * self.step for n in self.shape]

    def box(self, centre: np.ndarray, radius: float) -> tuple[tuple[slice, ...], list[np.ndarray]] | None:
        """Index box of the grid within ``radius`` Å of ``centre`` and its axis coordinates."""
        slices, coords = [], []
        for axis, c in zip(self.axes, centre, strict=True):
            lo = max(0, int(math.floor((c - radius) / self.step)))
            hi = min(len(axis), int(math.ceil((c + radius) / self.step)) + 1)
            if hi <= lo:
                return None
            slices.append(slice(lo, hi))
            coords.append(axis[lo:hi] - c)
        return tuple(slices), coords

    def add_blobs(self, density: np.ndarray, centres: np.ndarray, sigma: float, peaks: np.ndarray | float) -> None:
        """Add isotropic Gaussians (peak value ``peaks``, width ``sigma`` Å) at (K, 3) Å ``centres``."""
        peaks = np.broadcast_to(np.asarray(peaks, dtype=np.float64), (len(centres),))
        scale = -0.5 / sigma**2
        for centre, peak in zip(centres, peaks, strict=True):
            found = self.box(centre, 3.5 * sigma)
            if found is None:
                continue
            slices, (dz, dy, dx) = found
            gz, gy, gx = (np.exp(scale * d * d).astype(np.float32) for d in (dz, dy, dx))
            density[slices] += np.float32(peak) * gz[:, None, None] * gy[None, :, None] * gx[None, None, :]

    def add_shell(self, density: np.ndarray, centre: np.ndarray, radius: float, sigma: float, peak: float) -> None:
        """A spherical membrane: Gaussian profile of width ``sigma`` around ``radius`` Å from ``centre``."""
        found = self.box(centre, radius + 4 * sigma)
        if found is None:
            return
        slices, (dz, dy, dx) = found
        distance = np.sqrt(dz[:, None, None] ** 2 + dy[None, :, None] ** 2 + dx[None, None, :] ** 2) - radius
        density[slices] += (peak * np.exp(-0.5 * (distance / sigma) ** 2)).astype(np.float32)


def _chain(points: np.ndarray, sigma: float) -> np.ndarray:
    """Blob centres every sigma/1.5 Å along a polyline; blobs of peak TUBE*p make a tube of peak p."""
    out = [points[:1]]
    for start, end in zip(points[:-1], points[1:], strict=True):
        count = max(1, int(math.ceil(np.linalg.norm(end - start) / (sigma / 1.5))))
        out.append(start + (end - start) * (np.arange(1, count + 1)[:, None] / count))
    return np.concatenate(out)


def _ring(centre: np.ndarray, normal: np.ndarray, radius: float, sigma: float) -> np.ndarray:
    """Closed circle of points (spaced about sigma/1.5) of ``radius`` Å around ``normal`` through ``centre``."""
    e1, e2 = _perpendiculars(normal)
    count = max(6, int(math.ceil(2 * math.pi * radius / (sigma / 1.5))))
    angle = np.arange(count) * (2 * math.pi / count)
    return centre + radius * (np.cos(angle)[:, None] * e1 + np.sin(angle)[:, None] * e2)


def _perpendiculars(normal: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    helper = np.array([1.0, 0.0, 0.0]) if abs(normal[0]) < 0.9 else np.array([0.0, 1.0, 0.0])
    e1 = np.cross(normal, helper)
    e1 /= np.linalg.norm(e1)
    return e1, np.cross(normal, e1)


def _unit(v: np.ndarray) -> np.ndarray:
    return v / np.linalg.norm(v)


# ---------------------------------------------------------------------------------------------
# The cell envelope


@dataclass
class _Cell:
    """A cylindrical cell: axis through ``origin`` along ``axis`` (unit), inner membrane at ``radius`` Å."""

    origin: np.ndarray
    axis: np.ndarray
    radius: float

    @classmethod
    def random(cls, rng: np.random.Generator, extent: np.ndarray) -> _Cell:
        tilt = math.radians(rng.uniform(0, 25))
        turn = rng.uniform(0, 2 * math.pi)
        axis = np.array([math.cos(tilt), math.sin(tilt) * math.sin(turn), math.sin(tilt) * math.cos(turn)])
        radius = rng.uniform(2500, 6000)
        # The envelope passes through a point in the central part of the field, bulging towards
        # a random in-plane direction.
        through = extent * np.array([0.5, rng.uniform(0.3, 0.7), rng.uniform(0.3, 0.7)])
        direction = rng.uniform(0, 2 * math.pi)
        outward = np.array([0.0, math.sin(direction), math.cos(direction)])
        outward = _unit(outward - axis * (outward @ axis))
        return cls(through - radius * outward, axis, radius)

    def signed_distance(self, points: np.ndarray) -> np.ndarray:
        """(..., 3) Å points -> distance to the inner membrane, negative inside the cytoplasm."""
        rel = points - self.origin
        along = rel @ self.axis
        radial = rel - along[..., None] * self.axis
        return np.linalg.norm(radial, axis=-1) - self.radius

    def outward(self, point: np.ndarray) -> np.ndarray:
        rel = point - self.origin
        return _unit(rel - (rel @ self.axis) * self.axis)

    def draw(self, density: np.ndarray, grid: _Grid) -> float:
        """Add the envelope to the coarse ``density``; returns the cytoplasm volume in Å^3."""
        z, y, x = grid.axes
        rz, ry, rx = z - self.origin[0], y - self.origin[1], x - self.origin[2]
        along = (rz * self.axis[0])[:, None, None] + (ry * self.axis[1])[None, :, None] + (rx * self.axis[2])[None, None, :]
        squared = rz[:, None, None] ** 2 + ry[None, :, None] ** 2 + rx[None, None, :] ** 2 - along**2
        d = np.sqrt(np.maximum(squared, 0)) - self.radius
        sigma = 22.0
        profile = 0.8 * np.exp(-0.5 * (d / sigma) ** 2)  # inner membrane
        profile += 0.8 * np.exp(-0.5 * ((d - MEMBRANE_GAP_A) / sigma) ** 2)  # outer membrane
        profile += 0.15 * np.exp(-0.5 * ((d - 0.6 * MEMBRANE_GAP_A) / 30.0) ** 2)  # peptidoglycan
        profile += 0.12 / (1 + np.exp(np.clip((d + 40.0) / 25.0, -50, 50)))  # cytoplasm
        density += profile.astype(np.float32)
        return float(np.count_nonzero(d < 0)) * grid.step**3


def _place_motors(rng: np.random.Generator, cell: _Cell, shape: tuple[int, ...], spacing: float,
                  count: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Up to ``count`` (centre Å on a whole voxel, outward normal) pairs on the inner membrane.

    Centres keep a margin from every face (300 Å, or a quarter of the extent if smaller) and
    MIN_MOTOR_DISTANCE_A from each other.
    """
    extent = np.array([(n - 1) * spacing for n in shape])
    margin = np.minimum(300.0, 0.25 * extent)
    placed: list[tuple[np.ndarray, np.ndarray]] = []
    for _ in range(400 * count):
        if len(placed) == count:
            break
        guess = rng.uniform(margin, extent - margin)
        normal = cell.outward(guess)
        on_membrane = guess - normal * cell.signed_distance(guess)
        centre = np.rint((on_membrane - MOTOR_DEPTH_A * normal) / spacing) * spacing
        inside = np.all(centre >= margin) and np.all(centre <= extent - margin)
        apart = all(np.linalg.norm(centre - other) >= MIN_MOTOR_DISTANCE_A for other, _ in placed)
        if inside and apart:
            placed.append((centre, cell.outward(centre)))
    return placed


def _draw_motor(rng: np.random.Generator, density: np.ndarray, grid: _Grid, centre: np.ndarray,
                normal: np.ndarray, contrast: float) -> None:
    """A flagellar motor whose centre is ``centre`` (Å) and whose axis points along ``normal`` (outwards)."""
    for u, radius, sigma, peak in (
        (-70.0, 200.0, 40.0, 1.0),  # C-ring, about 45 nm across
        (-10.0, 175.0, 35.0, 0.8),  # the bell's wall (stators), narrowing towards the membrane
        (45.0, 145.0, 35.0, 0.8),
        (MOTOR_DEPTH_A - 20.0, 110.0, 35.0, 0.8),  # MS ring in the inner membrane
    ):
        grid.add_blobs(density, _ring(centre + u * normal, normal, radius, sigma), sigma, TUBE * peak * contrast)
    grid.add_blobs(density, (centre - 30.0 * normal)[None], 60.0, 0.9 * contrast)  # export apparatus
    outer = centre + (MOTOR_DEPTH_A + MEMBRANE_GAP_A) * normal
    rod = _chain(np.array([centre - 80.0 * normal, outer]), 30.0)
    grid.add_blobs(density, rod, 30.0, TUBE * 0.8 * contrast)
    # Hook and filament: a gently curving tube of 20 nm diameter, kept near the ice plane.
    direction, path = normal.copy(), [outer]
    for _ in range(int(rng.integers(10, 30))):
        direction = _unit(direction + rng.normal(0, 0.12, 3) * np.array([0.5, 1.0, 1.0]))
        direction = _unit(direction * np.array([0.8, 1.0, 1.0]))
        path.append(path[-1] + 100.0 * direction)
    grid.add_blobs(density, _chain(np.array(path), 55.0), 55.0, TUBE * 0.7 * contrast)


def _draw_decoy(rng: np.random.Generator, density: np.ndarray, grid: _Grid, centre: np.ndarray,
                contrast: float) -> None:
    """A loose motor-like ring (no membrane, rod or filament) in a random orientation."""
    normal = _unit(rng.normal(size=3))
    grid.add_blobs(density, _ring(centre, normal, rng.uniform(150, 210), 40.0), 40.0, TUBE * 0.9 * contrast)
    grid.add_blobs(density, centre[None], 55.0, 0.7 * contrast)


# ---------------------------------------------------------------------------------------------
# Distractors


def _draw_distractors(rng: np.random.Generator, density: np.ndarray, grid: _Grid, cell: _Cell,
                      motors: np.ndarray, cytoplasm_a3: float, knobs: Knobs) -> None:
    """Ribosomes, membrane lumps, vesicles, gold beads and decoys, kept clear of the motors (Å)."""

    def sample(count: int, where: Callable[[np.ndarray], np.ndarray], clearance: float = 450.0) -> np.ndarray:
        """Up to ``count`` points (Å): uniform candidates moved by ``where`` (NaN rows drop out),
        at least ``clearance`` Å from every motor centre and inside the field."""
        if count == 0:
            return np.zeros((0, 3))
        points = where(rng.uniform(0, 1, (8 * count + 32, 3)) * grid.extent)
        keep = np.all((points >= 0) & (points <= grid.extent), axis=1)
        if len(motors):
            keep &= np.all(np.linalg.norm(points[:, None] - motors[None], axis=-1) >= clearance, axis=1)
        return points[keep][:count]

    def in_cytoplasm(depth: float) -> Callable[[np.ndarray], np.ndarray]:
        return lambda p: np.where((cell.signed_distance(p) < -depth)[:, None], p, np.nan)

    def under_membrane(p: np.ndarray) -> np.ndarray:
        normals = np.array([cell.outward(q) for q in p])
        return p - normals * (cell.signed_distance(p) + rng.uniform(40, 90, len(p)))[:, None]

    def near_ice_surface(p: np.ndarray) -> np.ndarray:
        fraction = np.where(rng.uniform(size=len(p)) < 0.5, 0.1, 0.9)
        return np.column_stack([fraction * grid.extent[0], p[:, 1:]])

    ribosomes = sample(int(rng.poisson(knobs.ribosomes_per_um3 * cytoplasm_a3 / 1e12)), in_cytoplasm(150.0))
    offsets = np.array([_unit(v) for v in rng.normal(size=(len(ribosomes), 3))]).reshape(-1, 3) * 85.0
    grid.add_blobs(density, ribosomes, 62.0, 0.75)  # large subunit
    grid.add_blobs(density, ribosomes + offsets, 48.0, 0.55)  # small subunit

    lumps = sample(int(rng.poisson(knobs.membrane_lumps)), under_membrane, clearance=500.0)
    grid.add_blobs(density, lumps, 45.0, rng.uniform(0.5, 0.8, len(lumps)))

    for _ in range(int(rng.poisson(knobs.vesicles))):
        radius = rng.uniform(250, 700)
        outside = MEMBRANE_GAP_A + radius + 100.0
        centre = sample(1, lambda p, d=outside: np.where((cell.signed_distance(p) > d)[:, None], p, np.nan))
        if len(centre):
            grid.add_shell(density, centre[0], radius, 22.0, 0.8)

    grid.add_blobs(density, sample(int(rng.poisson(knobs.gold_beads)), near_ice_surface), 32.0, 5.0)

    for centre in sample(int(rng.poisson(knobs.decoys)), in_cytoplasm(400.0), clearance=800.0):
        _draw_decoy(rng, density, grid, centre, knobs.motor_contrast)


# ---------------------------------------------------------------------------------------------
# Imaging


def _image(rng: np.random.Generator, density: np.ndarray, grid: _Grid, knobs: Knobs) -> np.ndarray:
    """Density (coarse grid) -> (z, y, x) uint8 tomogram at the fine spacing, dense = dark."""
    # Uneven ice: a smooth field varying over about 1000 Å.
    coarse_field = rng.normal(0, 0.06, tuple(int(e // 1000) + 2 for e in grid.extent)).astype(np.float32)
    density += _interpolate(coarse_field, 1000.0, grid.shape, grid.step)
    if knobs.texture_noise > 0:
        density += knobs.texture_noise * rng.standard_normal(grid.shape, dtype=np.float32)
    spectrum = np.fft.rfftn(density)
    spectrum *= _transfer(grid.shape, grid.step)
    imaged = np.fft.irfftn(spectrum, s=grid.shape).astype(np.float32)

    volume = _interpolate(imaged, grid.step, grid.fine_shape, grid.spacing)
    np.negative(volume, out=volume)  # dense matter is dark
    if knobs.fine_noise > 0:
        noise = _correlated_noise(rng, grid.fine_shape)
        noise *= knobs.fine_noise
        volume += noise
    sample = volume[::4]
    mean, std = float(sample.mean()), float(sample.std()) or 1.0
    target_mean, target_std = rng.uniform(112, 136), rng.uniform(40, 52)
    volume -= mean
    volume *= target_std / std
    volume += target_mean
    np.clip(volume, 0, 255, out=volume)
    return np.rint(volume).astype(np.uint8)


def _transfer(shape: tuple[int, ...], step: float) -> np.ndarray:
    """Fourier filter: Gaussian low-pass (sigma BLUR_A) times the missing wedge about the y axis.

    A tilt series over +-TILT_LIMIT_DEG about y measures the frequencies with
    |kz| <= tan(limit) * |kx|; the wedge around kz is lost (edge softened over 2 degrees).
    """
    kz = np.fft.fftfreq(shape[0], d=step)
    ky = np.fft.fftfreq(shape[1], d=step)
    kx = np.fft.rfftfreq(shape[2], d=step)
    blur = lambda k: np.exp(-2 * (math.pi * BLUR_A * k) ** 2)  # noqa: E731
    angle = np.degrees(np.arctan2(np.abs(kz)[:, None], kx[None, :]))
    wedge = np.clip((TILT_LIMIT_DEG + 2.0 - angle) / 4.0, 0.0, 1.0)
    lowpass = blur(kz)[:, None, None] * blur(ky)[None, :, None] * blur(kx)[None, None, :]
    return (lowpass * wedge[:, None, :]).astype(np.float32)


def _interpolate(array: np.ndarray, step: float, shape: tuple[int, ...], new_step: float) -> np.ndarray:
    """Linear interpolation of a grid with points every ``step`` Å onto one of ``shape`` every ``new_step`` Å.

    Point i of the new grid sits at i * new_step Å; positions past the old grid's last point are
    clamped to it.
    """
    out = array
    for axis, n in enumerate(shape):
        position = np.minimum(np.arange(n) * (new_step / step), out.shape[axis] - 1)
        low = np.minimum(np.floor(position).astype(np.intp), out.shape[axis] - 2)
        weight = (position - low).astype(np.float32).reshape([-1 if a == axis else 1 for a in range(3)])
        first = np.take(out, low, axis=axis)
        out = first + (np.take(out, low + 1, axis=axis) - first) * weight
    return out


def _correlated_noise(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    """Unit-variance Gaussian noise correlated over neighbouring voxels (white noise summed over 2x2x2)."""
    noise = rng.standard_normal(tuple(n + 1 for n in shape), dtype=np.float32)
    for axis in range(3):
        moved = np.moveaxis(noise, axis, 0)
        noise = np.moveaxis(moved[:-1] + moved[1:], 0, axis)
    noise *= 1.0 / math.sqrt(8.0)
    return noise
