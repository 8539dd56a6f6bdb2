"""``python -m motorsearch prepare``: convert a dataset once into the voxel cache and say where it is.

The flags are shorthands for ``data.*`` fields of the experiment config and win over ``--set``.
"""

from __future__ import annotations

import argparse
import math
import os

from motorsearch.cli import add_overrides
from motorsearch.config import DATA_FORMATS


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "prepare", help="build (once) the memory-mapped voxel cache of a dataset",
        description="Convert a dataset into the voxel cache used for training (run implicitly by training). "
                    "Without --data, the built-in synthetic dataset is used.",
    )
    parser.add_argument("--config", metavar="EXPERIMENT.yaml", help="experiment config to read data.* from")
    parser.add_argument("--data", metavar="ROOT", help="dataset folder (data.root)")
    parser.add_argument("--format", choices=DATA_FORMATS, help="dataset layout (data.format)")
    parser.add_argument("--labels", metavar="CSV", help="motor coordinates CSV (data.labels)")
    parser.add_argument("--spacing", metavar="A",
                        help="resample to this many Å per voxel, or 'native' to keep each grid (data.spacing)")
    parser.add_argument("--assume-spacing", metavar="A", type=float,
                        help="Å per voxel for tomograms whose source gives none (the Kaggle test split)")
    parser.add_argument("--split", choices=("train", "test"), default="train", help="which split to cache")
    parser.add_argument("--cache-dir", metavar="DIR", help="where caches live (data.cache_dir)")
    parser.add_argument("--workers", metavar="N", type=int, default=available_cpus(),
                        help=f"processes converting tomograms in parallel (default: the CPUs available, "
                             f"here {available_cpus()})")
    add_overrides(parser)
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from motorsearch.config import apply_overrides, from_dict, read_yaml, set_dotted
    from motorsearch.data.cache import cache_bytes_per_voxel, prepare
    from motorsearch.errors import ConfigError

    raw = {} if args.config is None else read_yaml(args.config) or {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{args.config}: expected a mapping of config sections at the top level.")
    apply_overrides(raw, args.overrides)
    flags = {"data.root": args.data, "data.format": args.format, "data.labels": args.labels,
             "data.cache_dir": args.cache_dir}
    if args.spacing is not None:
        flags["data.spacing"] = _parse_spacing(args.spacing)
    for key, value in flags.items():
        if value is not None:
            set_dotted(raw, key, value)
    cfg = from_dict(raw, source=args.config or "command line")
    if args.workers < 1:
        raise ConfigError(f"`--workers` must be at least 1, but got --workers={args.workers}.")
    if args.assume_spacing is not None and not (args.assume_spacing > 0 and math.isfinite(args.assume_spacing)):
        raise ConfigError(f"`--assume-spacing` must be positive, but got --assume-spacing={args.assume_spacing}.")

    cache = prepare(cfg.data, split=args.split, progress=True, assume_spacing=args.assume_spacing,
                    workers=args.workers)
    voxels = sum(math.prod(t.shape) for t in cache.tomograms)
    motors = sum(len(t.motors) for t in cache.tomograms if t.motors is not None)
    print(f"cache: {cache.root}")
    print(f"tomograms: {len(cache.tomograms)} ({motors} motors)")
    print(f"voxels: {voxels:,}  bytes/voxel: {cache_bytes_per_voxel(cache):.4f}")
    return 0


def available_cpus() -> int:
    """CPUs this process may run on (its affinity mask, which container limits shrink), at least 1."""
    return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)


def _parse_spacing(text: str) -> float | None:
    from motorsearch.errors import ConfigError

    if text.strip().lower() in ("native", "none", "null"):
        return None
    try:
        return float(text)
    except ValueError:
        raise ConfigError(f"`--spacing` must be a number of Å per voxel or 'native', but got --spacing={text!r}.") \
            from None
