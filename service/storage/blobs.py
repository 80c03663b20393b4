"""The storage-backend interface: named byte strings ("blobs") under keys the store derives.

A key is a relative POSIX path built by :class:`~service.storage.models_store.ModelStore` from
validated UUIDs, hex digests and enum words only (``datasets/<uuid>.pt``), never from user text.
Two backends implement it: ``LocalBlobs`` (files below a directory, ``models_store.py``) and
``S3Blobs`` (an ``s3://bucket/prefix`` through fsspec + s3fs, ``s3_blobs.py``).
"""

from __future__ import annotations

import re
from typing import Protocol

__all__ = ["Blobs", "check_key"]

_KEY = re.compile(r"[a-z0-9_-]+(?:\.[a-z0-9]+)?(?:/[a-z0-9_-]+(?:\.[a-z0-9]+)?)*")


def check_key(key: str) -> str:
    """``key`` if it is a plain relative path of lowercase words (no ``..``, no leading ``/``)."""
    if not _KEY.fullmatch(key):
        raise ValueError(f"not a plain store key: {key!r}")
    return key


class Blobs(Protocol):
    """Where the bytes of record live."""

    local: bool
    """True when keys are files below the store's own directory (checkpoints need no publishing)."""

    def read(self, key: str) -> bytes:
        """The blob's bytes; ``FileNotFoundError`` when there is none."""
        ...

    def write(self, key: str, data: bytes) -> str:
        """Store ``data`` atomically (readers see the old blob or all of the new); returns its sha256."""
        ...

    def keys(self, prefix: str) -> list[str]:
        """Keys starting with the directory ``prefix`` (no trailing ``/``)."""
        ...

    def remove(self, key: str) -> None:
        """Delete one blob (no error if it is gone)."""
        ...

    def remove_prefix(self, prefix: str) -> None:
        """Delete every blob below the directory ``prefix``."""
        ...
