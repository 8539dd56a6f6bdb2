"""Writing a file or a folder so that no reader ever sees half of it.

The one rule, used by every writer in motorsearch: write under a temporary name in the same
folder (``.<name>.tmp-<pid>-<random>``, so the same filesystem and a name no one reads), then
``os.replace`` it onto the target in one step. When anything fails the temporary goes and the
target is as it was. A folder replaces an existing folder of that name (removed just before the
rename: the only moment it is absent).
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

TEMPORARY_MARK = ".tmp-"  # in every temporary name: ``.<name>.tmp-<pid>-<random>``


def temporary_name(path: str | Path) -> Path:
    """A fresh temporary path beside ``path``: ``.<name>.tmp-<pid>-<8 hex digits>``."""
    path = Path(path)
    return path.with_name(f".{path.name}{TEMPORARY_MARK}{os.getpid()}-{uuid.uuid4().hex[:8]}")


@contextmanager
def replacing(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; what the block writes there (a file, or a folder it
    makes) replaces ``path`` when the block ends without error. The parent folder is created."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_name(path)
    try:
        yield tmp
        if tmp.is_dir() and path.is_dir():
            shutil.rmtree(path)
        os.replace(tmp, path)
    finally:
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            tmp.unlink(missing_ok=True)


def write_text(path: str | Path, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically; returns ``path``."""
    with replacing(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def copy_folder(source: str | Path, path: str | Path) -> Path:
    """Copy the folder ``source`` to ``path`` atomically (an existing ``path`` is replaced); returns ``path``."""
    with replacing(path) as tmp:
        shutil.copytree(source, tmp)
    return Path(path)
