"""Data benchmark: cache size, JPEG-folder -> cache conversion speed, patch sampling throughput.

``python -m benchmarks.bench_data [--quick]`` prints a table; ``run(quick)`` returns its rows
(dicts with ``metric``, ``value``, ``unit``, ``note``) for a combined report. Everything runs on
one thread (``torch.set_num_threads(1)``, one JPEG decoding thread) so numbers compare across
machines per core, except the cache build with N workers (N = the CPUs available, at most one
per tomogram), compared with N x the one-core Pillow read. The data are written fresh into a
temporary folder, so reads hit the page cache: these are CPU costs, not disk speeds.
"""

from __future__ import annotations

import argparse
import math
import os
import resource
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from benchmarks.table import format_table, row
from motorsearch.cli.prepare import available_cpus
from motorsearch.config import AugmentConfig, DataConfig, SamplingConfig, TargetConfig
from motorsearch.data.cache import TomogramCache, cache_bytes_per_voxel, prepare, prepare_records
from motorsearch.data.kaggle import TomogramLabels, write_labels_csv
from motorsearch.data.records import TomogramRecord
from motorsearch.data.sampler import PatchDataset

MB = 1e6
SOURCE_SPACING = 13.1  # the most common Kaggle spacing; resampled to 16 Å like the best solutions


def run(quick: bool = False) -> list[dict]:
    """Run every measurement; ``quick`` shrinks the data about 20x (seconds instead of a minute)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with tempfile.TemporaryDirectory(prefix="bench_data-") as work:
            work = Path(work)
            rows = _conversion(work, quick)
            rows += _sampling(work, quick)
    finally:
        torch.set_num_threads(threads)
    return rows



# ---------------------------------------------------------------------------------------------
# JPEG folder -> cache


def _conversion(work: Path, quick: bool) -> list[dict]:
    n_tomograms, shape = (2, (40, 256, 256)) if quick else (4, (100, 512, 512))
    root = work / "download"
    jpeg_bytes = _write_jpeg_dataset(root, n_tomograms, shape)
    voxel_mb = n_tomograms * math.prod(shape) / MB
    paths = sorted((root / "train").glob("*/slice_*.jpg"))

    seconds_pillow = _time(lambda: [np.asarray(Image.open(p).convert("L")) for p in paths])
    rows = [row("JPEG dataset", voxel_mb, "MB of voxels",
                 f"{n_tomograms} x {shape[0]}x{shape[1]}x{shape[2]}, {voxel_mb * MB / jpeg_bytes:.1f}:1 JPEG q90"),
            row("plain Pillow read of the slices", voxel_mb / seconds_pillow, "MB/s", "decode only, 1 thread")]
    for spacing, label in ((None, "native grid"), (16.0, f"resampled {SOURCE_SPACING} -> 16 Å")):
        for workers in dict.fromkeys((1, min(available_cpus(), n_tomograms))):
            cfg = DataConfig(root=str(root), spacing=spacing, cache_dir=str(work / f"cache-{workers}"))
            started, cpu_before = time.perf_counter(), _cpu_seconds()
            cache = prepare(cfg, workers=workers)
            seconds, cpu = time.perf_counter() - started, _cpu_seconds() - cpu_before
            rows.append(row(f"JPEG folder -> cache, {label}, {workers} worker(s)", voxel_mb / seconds, "MB/s",
                            f"{seconds_pillow / seconds / workers:.2f}x {workers} x the Pillow read rate; "
                            f"{voxel_mb / cpu:.0f} MB per CPU-second; load average {os.getloadavg()[0]:.1f} "
                            "on the machine; MB of source voxels"))
        rows.append(row(f"cache bytes per voxel, {label}", cache_bytes_per_voxel(cache), "B/voxel",
                         f"{sum(math.prod(t.shape) for t in cache.tomograms) / MB:.1f} MB of voxels kept"))
    return rows


def _write_jpeg_dataset(root: Path, n_tomograms: int, shape: tuple[int, int, int]) -> int:
    """A Kaggle-layout dataset of smooth blobs plus noise (compresses about like a tomogram)."""
    rng = np.random.default_rng(0)
    labels = {}
    for index in range(n_tomograms):
        volume = _texture(rng, shape)
        folder = root / "train" / f"tomo_{index:04d}"
        folder.mkdir(parents=True)
        for z, plane in enumerate(volume):
            Image.fromarray(plane).save(folder / f"slice_{z:04d}.jpg", format="JPEG", quality=90)
        motor = np.array([[shape[0] / 2, shape[1] / 3, shape[2] / 2]])
        labels[folder.name] = TomogramLabels(motor, SOURCE_SPACING, shape)
    write_labels_csv(root / "train_labels.csv", labels)
    return sum(p.stat().st_size for p in root.rglob("*.jpg"))


def _texture(rng: np.random.Generator, shape: tuple[int, int, int]) -> np.ndarray:
    coarse = torch.from_numpy(rng.normal(size=tuple(max(2, n // 8) for n in shape)).astype(np.float32))
    smooth = F.interpolate(coarse[None, None], size=shape, mode="trilinear", align_corners=False)[0, 0].numpy()
    noisy = 128 + 30 * smooth + rng.normal(0, 12, size=shape).astype(np.float32)
    return np.clip(noisy, 0, 255).astype(np.uint8)


# ---------------------------------------------------------------------------------------------
# patch sampling


def _sampling(work: Path, quick: bool) -> list[dict]:
    cache = sampling_cache(work)
    rows = []
    for patch_size, count in (((64, 128, 128), 24 if quick else 300), ((160, 288, 288), 3 if quick else 30)):
        rate = patches_per_second(cache, patch_size, count)
        size = "x".join(map(str, patch_size))
        rows.append(row(f"patch sampling {size}", rate, "patches/s",
                         "1 core; read + normalise + heatmap + flips/rot90/jitter"))
        rows.append(row(f"patch sampling {size}", rate * math.prod(patch_size) * 4 / MB, "MB/s",
                        "float32 patches produced"))
    return rows


def sampling_cache(work: Path, shape: tuple[int, int, int] = (192, 400, 400)) -> TomogramCache:
    """A cache of one textured tomogram of ``shape`` at 16 Å with two motors, in ``work/cache``."""
    volume = _texture(np.random.default_rng(1), shape)
    motors = np.array([[0.5, 0.375, 0.5], [0.3125, 0.75, 0.3]]) * np.array(shape)  # (96, 150, 200), (60, 300, 120)
    record = TomogramRecord("bench", shape, 16.0, motors, lambda: volume, "<benchmark volume>")
    return prepare_records(lambda: [record], identity={"benchmark": "sampling", "split": "train"},
                           cache_dir=work / "cache", spacing=16.0, n_folds=2)


def patches_per_second(cache: TomogramCache, patch_size: tuple[int, int, int], count: int) -> float:
    """Training patches (with heatmaps and augmentation) ``PatchDataset`` draws per second on this thread."""
    dataset = PatchDataset(cache.tomograms, sampling=SamplingConfig(patch_size=list(patch_size),
                                                                    patches_per_epoch=count),
                           augment=AugmentConfig(), target=TargetConfig(), stride=16,
                           normalization="fixed", seed=0)
    dataset[0]  # open the memory map
    return count / _time(lambda: _draw_all(dataset, count))


def _draw_all(dataset: PatchDataset, count: int) -> None:
    for i in range(count):
        dataset[i]  # dropped at once, as a DataLoader would after collating: memory is reused


def _cpu_seconds() -> float:
    """CPU time of this process and its finished children (the cache's worker processes)."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def _time(work) -> float:
    started = time.perf_counter()
    work()
    return time.perf_counter() - started



def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bench_data", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small data: a smoke run in seconds")
    args = parser.parse_args(argv)
    print(format_table(run(quick=args.quick)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
