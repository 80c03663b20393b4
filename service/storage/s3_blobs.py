"""Blobs in an S3-compatible object store (AWS, MinIO, moto) through fsspec + s3fs.

``MODELS_STORE=s3://bucket/prefix``. The endpoint comes from ``ODESERVE_S3_ENDPOINT_URL`` or
``AWS_ENDPOINT_URL`` (unset: AWS itself); credentials and region from the standard AWS variables
(``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, ``AWS_DEFAULT_REGION``) or an instance role.

S3 has no rename, so a write is published in three steps: upload to ``<prefix>/tmp/<random>``,
read that object back and check its sha256, then copy it server-side to the final key and delete
the temporary one. A writer that dies before the copy leaves only a ``tmp/`` object (expire them
with a bucket lifecycle rule); the final key is never half-written, and a key only appears once
its bytes are known good. s3fs is imported on first use, so the local store needs no s3 extra.
"""

from __future__ import annotations

import hashlib
import logging
import os
import uuid
from typing import Any

from service.ml.errors import CheckpointError, StoreUnavailable
from service.storage.blobs import check_key

__all__ = ["S3Blobs"]

log = logging.getLogger(__name__)


class S3Blobs:
    """Blobs below ``s3://bucket/prefix``; one s3fs filesystem per process (made after a fork)."""

    local = False

    def __init__(self, url: str, endpoint_url: str | None = None) -> None:
        if not url.startswith("s3://"):
            raise ValueError(f"not an s3:// URL: {url!r}")
        bucket, _, prefix = url[len("s3://") :].partition("/")
        if not bucket:
            raise ValueError(f"no bucket in {url!r}; use s3://bucket/prefix")
        self.url = url.rstrip("/")
        self.bucket, self.prefix = bucket, prefix.strip("/")
        self.endpoint_url = endpoint_url or os.environ.get("AWS_ENDPOINT_URL") or None
        self._fs: Any = None
        self._pid = -1

    @property
    def fs(self) -> Any:
        if self._fs is None or self._pid != os.getpid():
            try:
                import s3fs
            except ImportError:  # pragma: no cover - depends on the installed extras
                raise StoreUnavailable(
                    f"MODELS_STORE={self.url} needs s3fs", fix="pip install 'odeserve[s3]'"
                ) from None
            options = {"endpoint_url": self.endpoint_url} if self.endpoint_url else {}
            self._fs = s3fs.S3FileSystem(
                skip_instance_cache=True,
                use_listings_cache=False,
                client_kwargs=options,
                config_kwargs={"connect_timeout": 5, "read_timeout": 60, "retries": {"max_attempts": 2}},
            )
            self._fs.retries = 2  # s3fs's own retry loop (default 5, with back-off): fail in seconds
            self._pid = os.getpid()
        return self._fs

    def _path(self, key: str) -> str:
        check_key(key)
        return f"{self.bucket}/{self.prefix}/{key}" if self.prefix else f"{self.bucket}/{key}"

    def _unavailable(self, action: str, exc: Exception) -> StoreUnavailable:
        log.warning("object store %s failed: %s: %s", action, type(exc).__name__, exc)
        return StoreUnavailable(
            f"the object store could not {action} ({type(exc).__name__})",
            fix="check that the S3 endpoint is up and the credentials can read and write the bucket",
        )

    def read(self, key: str) -> bytes:
        path = self._path(key)
        try:
            return self.fs.cat_file(path)
        except FileNotFoundError:
            raise
        except Exception as exc:
            raise self._unavailable("read an object", exc) from None

    def write(self, key: str, data: bytes) -> str:
        final = self._path(key)
        temp = self._path(f"tmp/{uuid.uuid4().hex}")
        digest = hashlib.sha256(data).hexdigest()
        try:
            self.fs.pipe_file(temp, data)
            if hashlib.sha256(self.fs.cat_file(temp)).hexdigest() != digest:
                raise CheckpointError(
                    f"the upload of {key} does not match its sha256",
                    fix="retry; the object store or the network altered the bytes",
                )
            self.fs.copy(temp, final)
        except CheckpointError:
            raise
        except Exception as exc:
            raise self._unavailable("store an object", exc) from None
        finally:
            self._remove_quietly(temp)
        return digest

    def _remove_quietly(self, path: str) -> None:
        try:
            self.fs.rm_file(path)
        except FileNotFoundError:
            pass
        except Exception as exc:  # a leftover tmp/ object is harmless; the lifecycle rule expires it
            log.warning("could not delete %s: %s", path, exc)

    def keys(self, prefix: str) -> list[str]:
        root = self._path(prefix)
        try:
            found = self.fs.find(root)
        except FileNotFoundError:
            return []
        except Exception as exc:
            raise self._unavailable("list objects", exc) from None
        start = len(self._path(prefix)) - len(prefix)
        return sorted(path[start:] for path in found)

    def remove(self, key: str) -> None:
        try:
            self._remove_quietly(self._path(key))
        except ValueError:
            raise
        except Exception as exc:
            raise self._unavailable("delete an object", exc) from None

    def remove_prefix(self, prefix: str) -> None:
        paths = [self._path(key) for key in self.keys(prefix)]
        if not paths:
            return
        try:
            self.fs.rm(paths)
        except FileNotFoundError:
            pass
        except Exception as exc:
            raise self._unavailable("delete objects", exc) from None
