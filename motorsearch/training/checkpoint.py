"""Training checkpoints: one folder per validation epoch, resumable bit for bit.

``<workdir>/checkpoints/epoch_NNNN/`` holds

- ``state.pt``: model, optimizer, schedule and GradScaler states, the epoch just finished, the
  optimizer steps taken, the RNG states of Python, NumPy, torch (and of the CUDA device trained
  on, when it is one), the best metric so
  far (and its epoch), the metric history and the experiment config dict. Plain values and
  tensors only: it loads with ``torch.load(weights_only=True)``.
- ``model.pt``: the self-contained model file of that epoch (``motorsearch.model_file``).

A folder is written under a temporary name and renamed into place, so a folder named
``epoch_NNNN`` is always complete.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from motorsearch.atomic import replacing
from motorsearch.errors import InputError

STATE_FILE = "state.pt"
MODEL_FILE = "model.pt"
STATE_VERSION = 1


def checkpoint_name(epoch: int) -> str:
    return f"epoch_{epoch:04d}"


def rng_state(device: torch.device | None = None) -> dict[str, Any]:
    """Every RNG the training step may draw from, as plain values and tensors.

    CUDA's generator is saved only when ``device`` is a CUDA device, and only that device's: a CPU
    trial on a GPU node never initialises CUDA, and a resume may see fewer cards than the save did.
    """
    kind, keys, position, has_gauss, cached = np.random.get_state()
    state: dict[str, Any] = {
        "python": _to_lists(random.getstate()),
        "numpy": {"kind": kind, "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)), "position": int(position),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
        "torch": torch.get_rng_state(),
    }
    if device is not None and device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def restore_rng_state(state: dict[str, Any], device: torch.device | None = None) -> None:
    """Inverse of :func:`rng_state`, onto ``device``'s generator; a saved CUDA state is ignored on a CPU.

    Checkpoints from before this rule hold a list with one state per visible device; the first is used.
    """
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    numpy = state["numpy"]
    np.random.set_state((numpy["kind"], numpy["keys"].numpy().astype(np.uint32), numpy["position"],
                         numpy["has_gauss"], numpy["cached_gaussian"]))
    torch.set_rng_state(state["torch"])
    cuda = state.get("cuda")
    if isinstance(cuda, (list, tuple)):
        cuda = cuda[0] if cuda else None
    if cuda is not None and device is not None and device.type == "cuda":
        torch.cuda.set_rng_state(cuda, device)


def write_checkpoint(folder: Path, state: dict[str, Any], write_model: Callable[[Path], None]) -> Path:
    """Write ``state`` as ``folder/state.pt`` and call ``write_model(path)`` for ``folder/model.pt``, atomically.

    An existing ``folder`` (from an earlier run in the same workdir) is replaced.
    """
    folder = Path(folder)
    with replacing(folder) as tmp:
        tmp.mkdir()
        torch.save({"version": STATE_VERSION, **state}, tmp / STATE_FILE)
        write_model(tmp / MODEL_FILE)
    return folder


def read_checkpoint(folder: str | Path) -> dict[str, Any]:
    """The state dict of a checkpoint folder; InputError when the folder is not a checkpoint."""
    folder = Path(folder)
    path = folder / STATE_FILE
    if not path.is_file():
        raise InputError(f"{folder}: not a training checkpoint (no {STATE_FILE}); pass an "
                         "<workdir>/checkpoints/epoch_NNNN folder.")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # truncated or foreign bytes
        raise InputError(f"{path}: cannot read the checkpoint ({type(exc).__name__}).") from None
    if not isinstance(state, dict) or state.get("version") != STATE_VERSION:
        raise InputError(f"{path}: not a checkpoint of this motorsearch (version {state.get('version')!r}, "
                         f"expected {STATE_VERSION}).")
    return state


def _to_lists(value: Any) -> Any:
    """Python's RNG state with tuples as lists (the weights-only unpickler takes both; lists are explicit)."""
    if isinstance(value, tuple):
        return [_to_lists(v) for v in value]
    return value
