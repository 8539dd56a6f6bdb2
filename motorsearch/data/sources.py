"""From a ``DataConfig`` to tomogram records, whatever the source.

- ``data.root: null``: the built-in synthetic dataset (``data.synthetic``), simulated once into
  ``<data.cache_dir>/synthetic/<key>`` and read like a Kaggle download. The key hashes the
  synthetic settings and ``SIMULATOR_VERSION``; concurrent processes share one build (a file
  lock plus the simulator's atomic rename: the others wait, then reuse it).
- ``data.format: kaggle``: ``read_kaggle(root, split)``; ``data.labels``, when set, replaces
  ``<root>/train_labels.csv`` for the train split.
- ``data.format: mrc | zarr``: split "train" reads ``<root>/train`` if that folder exists, else
  ``root`` itself, with ``data.labels`` (coordinates in ``data.labels_unit``) when set; any other
  split reads ``<root>/<split>`` unlabelled. ``data.source_spacing`` overrides the files' spacing.

A relative ``cache_dir`` or ``root`` is taken relative to the current working directory.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

from filelock import FileLock

from motorsearch.config import DataConfig, SyntheticConfig
from motorsearch.data.kaggle import read_kaggle
from motorsearch.data.records import TomogramRecord
from motorsearch.data.simulate import SIMULATOR_VERSION, simulate_dataset
from motorsearch.data.volumes import read_volume_folder
from motorsearch.errors import DataError

COMPLETE_MARKER = "simulation.json"  # the simulator writes it last, inside its atomic rename


def open_records(cfg: DataConfig, split: str = "train") -> list[TomogramRecord]:
    """Records of ``split`` ("train" or "test") for the data ``cfg`` describes; see the module docstring."""
    if cfg.root is None:
        return read_kaggle(synthetic_root(cfg), split)
    root = Path(cfg.root).expanduser()
    if cfg.format == "kaggle":
        labels = Path(cfg.labels).expanduser() if cfg.labels and split == "train" else None
        return read_kaggle(root, split, labels=labels)
    if split == "train":
        folder = root / "train" if (root / "train").is_dir() else root
        labels = Path(cfg.labels).expanduser() if cfg.labels else None
    else:
        folder, labels = root / split, None
        if not folder.is_dir():
            raise DataError(f"{folder}: no such folder; {cfg.format} volumes of the {split} split go in <root>/{split}/.")
    return read_volume_folder(folder, fmt=cfg.format, labels=labels, labels_unit=cfg.labels_unit,
                              spacing=cfg.source_spacing)


def synthetic_root(cfg: DataConfig) -> Path:
    """Folder of the built-in dataset for ``cfg.synthetic`` (Kaggle layout plus ``test_solution.csv``).

    Simulates it on first use (see ``ensure_synthetic``).
    """
    return ensure_synthetic(cfg)[0]


def ensure_synthetic(cfg: DataConfig) -> tuple[Path, bool]:
    """(folder of the synthetic dataset, whether this call simulated it). Safe across processes."""
    root = Path(cfg.cache_dir).expanduser() / "synthetic" / synthetic_key(cfg.synthetic)
    if (root / COMPLETE_MARKER).is_file():
        return root, False
    root.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(root.parent / f"{root.name}.lock")):
        if (root / COMPLETE_MARKER).is_file():
            return root, False
        if root.exists():  # not ours to keep: a complete dataset always has the marker
            shutil.rmtree(root)
        s = cfg.synthetic
        simulate_dataset(root, n_train=s.n_train, n_test=s.n_test, seed=s.seed, difficulty=s.difficulty)
    return root, True


def synthetic_key(synthetic: SyntheticConfig) -> str:
    """``seed<S>-<12 hex digits>``: a hash of the synthetic settings and the simulator version."""
    settings = {"n_train": synthetic.n_train, "n_test": synthetic.n_test, "seed": synthetic.seed,
                "difficulty": float(synthetic.difficulty), "version": SIMULATOR_VERSION}
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:12]
    return f"seed{synthetic.seed}-{digest}"
