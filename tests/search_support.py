"""Tiny real data and space files for the search tests (CPU, seconds per trial)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

TINY_OVERRIDES = {
    "device": "cpu",
    "data.format": "kaggle",
    "data.n_folds": 2,
    "data.spacing": 16.0,
    "sampling.patch_size": [32, 64, 64],
    "sampling.batch_size": 2,
    "sampling.patches_per_epoch": 4,
    "model.preset": "tiny",
    "optim.precision": "fp32",
    "validation.window_batch_size": 4,
    "validation.overlap": 0.25,
}
# Two sampled values, one continuous and one categorical: the parameters of the searches that
# check how trials are tracked (Optuna, MLflow, resumes).
LR_AND_LOSS = {
    "optim.lr": {"type": "float", "low": 1.0e-4, "high": 3.0e-2, "log": True},
    "loss.name": {"type": "categorical", "choices": ["weighted_bce", "focal"]},
}


def tiny_dataset(root: Path) -> Path:
    """Six small simulated tomograms (about 40 x 100 x 100 voxels at 16 Å) in the Kaggle layout."""
    from motorsearch.data.simulate import simulate_dataset

    if not (root / "simulation.json").is_file():
        simulate_dataset(root, n_train=6, n_test=0, seed=3, scale=0.5)
    return root


def write_space(path: Path, *, data: Path, cache: Path, storage: Path, epochs: int = 2,
                parameters: dict[str, Any] | None = None, **settings: Any) -> Path:
    """A space file over the tiny dataset; ``settings`` replace top-level keys."""
    overrides = {**TINY_OVERRIDES, "data.root": str(data), "data.cache_dir": str(cache), "optim.epochs": epochs}
    overrides.update(settings.pop("overrides", {}))
    space = {
        "name": "tiny",
        "overrides": overrides,
        "num_samples": 2,
        "max_concurrent": 2,
        "resources": {"cpu": 1},
        "scheduler": {"type": "none"},
        "searcher": {"sampler": "random", "seed": 0},
        "storage_path": str(storage),
        "max_failures": 0,
        "parameters": parameters if parameters is not None else {
            "optim.lr": {"type": "float", "low": 1.0e-4, "high": 1.0e-2, "log": True},
        },
        **settings,
    }
    path.write_text(yaml.safe_dump(space, sort_keys=False))
    return path
