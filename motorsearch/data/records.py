"""The record every reader yields: one tomogram, lazily loaded, with its labels.

Readers (Kaggle JPEG folders, MRC, zarr) all return ``list[TomogramRecord]`` so the cache and
everything after it never care where a volume came from.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np


@dataclass
class TomogramRecord:
    """One tomogram as found on disk.

    Attributes:
        tomo_id: unique name within its dataset (Kaggle folder name or file stem).
        shape: (z, y, x) in voxels of the original grid.
        spacing: Å per voxel, or None when the source does not say (e.g. the Kaggle test split).
        motors: (N, 3) float64 motor centres in voxels (z, y, x) of the original grid; shape
            (0, 3) for a tomogram without motors; None when the tomogram is unlabelled.
        load: returns the volume as a C-contiguous (z, y, x) uint8 array; may take seconds.
        source: path shown in error messages.
    """

    tomo_id: str
    shape: tuple[int, int, int]
    spacing: float | None
    motors: np.ndarray | None
    load: Callable[[], np.ndarray]
    source: str

    @property
    def labelled(self) -> bool:
        return self.motors is not None
