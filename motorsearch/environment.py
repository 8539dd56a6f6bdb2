"""Environment variables set for a while and then put back as they were."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

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
