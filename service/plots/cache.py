"""Render-once cache for figures of immutable things (a finished run's checkpoint)."""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable
from pathlib import Path

__all__ = ["cached_png", "write_atomic"]


def cached_png(path: Path, make: Callable[[], bytes]) -> bytes:
    """Bytes of ``path`` if it exists, else ``make()`` written there atomically and returned.

    The caller picks ``path`` (under the run's models_store directory, from ids it controls, never
    from user strings). Concurrent callers may both render; ``os.replace`` makes the last one win
    with a complete file, and readers never see a partial one. Works for any bytes (PNG or GIF).
    """
    path = Path(path)
    if path.is_file():
        return path.read_bytes()
    data = make()
    write_atomic(path, data)
    return data


def write_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` via a temporary sibling and ``os.replace`` (no partial files)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex}")
    try:
        tmp.write_bytes(data)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
