"""The machine a command runs on: environment variables set for a while and then put back as they
were, and whether a folder could be made, asked before anything is written."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

_KEEP = object()


@contextlib.contextmanager
def restored(name: str, value: str | object = _KEEP) -> Iterator[None]:
    """Within the block ``name`` is ``value`` (left alone when no value is given: code inside may
    change it); afterwards it is as it was before the block, unset if it was unset."""
    before = os.environ.get(name)
    if value is not _KEEP:
        os.environ[name] = str(value)
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = before


def folder_problem(folder: str | Path) -> str | None:
    """Why ``folder`` could not be made or written, checked without making anything: its nearest
    existing ancestor is not a folder, or not writable. None when it could."""
    folder = Path(folder).absolute()
    existing = next((f for f in (folder, *folder.parents) if f.exists()), folder)
    if not existing.is_dir():
        return f"{existing} is not a folder"
    if not os.access(existing, os.W_OK | os.X_OK):
        return f"{existing} is not writable"
    return None
