"""The models store: where checkpoints and uploaded datasets live on disk.

Layout (every name below the root is derived from a validated UUID, never from user text)::

    <MODELS_STORE>/runs/<run uuid>/          checkpoint directory (see service.ml.checkpoint)
    <MODELS_STORE>/datasets/<dataset uuid>.pt uploaded points, a float32 (N, D) tensor
    <MODELS_STORE>/runs/<run uuid>/plots/     cached figures (kind and digest from the API, see below)
    <MODELS_STORE>/sweeps/<sweep uuid>/       cached sweep charts

Files are written to a temporary sibling and renamed into place, so readers never see half a file.

Datasets and plots go through ``blobs`` (:mod:`service.storage.blobs`), under keys equal to the
paths above relative to the root. With the default ``LocalBlobs`` those *are* the files above. With
an object store (``open_store("s3://bucket/prefix", cache_dir)``) the blobs live there and the
directory is a local cache: a checkpoint is saved into ``run_dir`` as always, then published as one
object ``runs/<uuid>/checkpoint-<digest>.tar`` (``publish_checkpoint``) before the database records
its digest; ``checkpoint_dir`` brings the recorded checkpoint into the cache when it is not there.
"""

from __future__ import annotations

import hashlib
import io
import os
import re
import shutil
import tempfile
import threading
import uuid
from collections.abc import Callable
from pathlib import Path

import torch
from torch import Tensor

from service.ml.checkpoint import checkpoint_digest
from service.ml.errors import CheckpointError
from service.storage.blobs import Blobs, check_key
from service.storage.single_flight import SingleFlight

__all__ = ["LocalBlobs", "ModelStore", "atomic_write", "open_store"]


_PLAIN = re.compile(r"[a-z0-9_]{1,64}")
_DIGEST = re.compile(r"[0-9a-f]{64}")


def _uuid(value: uuid.UUID | str) -> str:
    """Canonical form of a UUID; raises ValueError for anything else (so no path tricks pass)."""
    return str(value if isinstance(value, uuid.UUID) else uuid.UUID(str(value)))


def atomic_write(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` via a temporary file in the same directory and ``os.replace``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class LocalBlobs:
    """Blobs as files below ``root`` (the default backend: ``MODELS_STORE`` is a directory)."""

    local = True

    def __init__(self, root: Path) -> None:
        self.root = root

    def read(self, key: str) -> bytes:
        return (self.root / check_key(key)).read_bytes()

    def write(self, key: str, data: bytes) -> str:
        atomic_write(self.root / check_key(key), data)
        return hashlib.sha256(data).hexdigest()

    def keys(self, prefix: str) -> list[str]:
        base = self.root / check_key(prefix)
        return sorted(p.relative_to(self.root).as_posix() for p in base.rglob("*") if p.is_file())

    def remove(self, key: str) -> None:
        (self.root / check_key(key)).unlink(missing_ok=True)

    def remove_prefix(self, prefix: str) -> None:
        shutil.rmtree(self.root / check_key(prefix), ignore_errors=True)


def open_store(location: Path | str, cache_dir: Path | str, endpoint_url: str | None = None) -> ModelStore:
    """The store ``MODELS_STORE`` names: a directory, or ``s3://bucket/prefix`` cached in ``cache_dir``."""
    if isinstance(location, str) and location.startswith("s3://"):
        from service.storage.s3_blobs import S3Blobs

        return ModelStore(cache_dir, S3Blobs(location, endpoint_url))
    return ModelStore(location)


class ModelStore:
    """Paths and file operations below one root directory; blobs of record in ``blobs``."""

    def __init__(self, root: Path | str, blobs: Blobs | None = None) -> None:
        self.root = Path(root).resolve()
        self.blobs: Blobs = blobs if blobs is not None else LocalBlobs(self.root)
        self._fetching = threading.Lock()
        self._rendering: SingleFlight[bytes] = SingleFlight()

    @property
    def remote(self) -> bool:
        """True when the blobs of record are elsewhere and ``root`` only caches checkpoints."""
        return not self.blobs.local

    def run_dir(self, run_id: uuid.UUID | str) -> Path:
        return self.root / "runs" / _uuid(run_id)

    def dataset_key(self, dataset_id: uuid.UUID | str) -> str:
        return f"datasets/{_uuid(dataset_id)}.pt"

    def dataset_path(self, dataset_id: uuid.UUID | str) -> Path:
        return self.root / self.dataset_key(dataset_id)

    def plot_key(self, run_id: uuid.UUID | str, kind: str, digest: str, suffix: str = "png") -> str:
        """Cached figure ``runs/<uuid>/plots/<kind>-<digest>.<suffix>``.

        ``kind`` and ``suffix`` come from the API's enums and ``digest`` from the run row; all are
        checked to be plain lowercase words or hex anyway, so no user text reaches the path.
        """
        for part in (kind, suffix, digest):
            if not _PLAIN.fullmatch(part):
                raise ValueError(f"not a plain path component: {part!r}")
        return f"runs/{_uuid(run_id)}/plots/{kind}-{digest[:16]}.{suffix}"

    def plot_path(self, run_id: uuid.UUID | str, kind: str, digest: str, suffix: str = "png") -> Path:
        return self.root / self.plot_key(run_id, kind, digest, suffix)

    def sweep_plot_key(self, sweep_id: uuid.UUID | str, content: str) -> str:
        """Cached chart of a sweep, keyed by a hash of what it shows (``content``)."""
        key = hashlib.sha256(content.encode()).hexdigest()[:16]
        return f"sweeps/{_uuid(sweep_id)}/plot-{key}.png"

    def sweep_plot_path(self, sweep_id: uuid.UUID | str, content: str) -> Path:
        return self.root / self.sweep_plot_key(sweep_id, content)

    def checkpoint_key(self, run_id: uuid.UUID | str, digest: str) -> str:
        if not _DIGEST.fullmatch(digest):
            raise ValueError(f"not a checkpoint digest: {digest!r}")
        return f"runs/{_uuid(run_id)}/checkpoint-{digest}.tar"

    def cached(self, key: str, make: Callable[[], bytes]) -> bytes:
        """The blob at ``key`` if there is one, else ``make()`` stored there and returned.

        For figures of immutable things (keys carry the checkpoint digest). Concurrent callers in
        this process share one ``make()`` (:class:`SingleFlight`); across processes the write is
        atomic, so the last one wins with a complete blob.
        """
        return self._rendering.do(key, lambda: self._read_or_make(key, make))

    def _read_or_make(self, key: str, make: Callable[[], bytes]) -> bytes:
        try:
            return self.blobs.read(key)
        except FileNotFoundError:
            pass
        data = make()
        self.blobs.write(key, data)
        return data

    def publish_checkpoint(self, run_id: uuid.UUID | str, digest: str) -> None:
        """Make the checkpoint saved in ``run_dir`` durable before its digest is recorded (no-op
        locally, where ``run_dir`` is the store of record)."""
        if self.remote:
            from service.storage.checkpoint_archive import pack_checkpoint

            self.blobs.write(self.checkpoint_key(run_id, digest), pack_checkpoint(self.run_dir(run_id)))

    def retire_checkpoints(self, run_id: uuid.UUID | str, keep: str) -> None:
        """Delete published checkpoints of the run other than ``keep`` (after the DB recorded it)."""
        if not self.remote:
            return
        kept = self.checkpoint_key(run_id, keep)
        for key in self.blobs.keys(f"runs/{_uuid(run_id)}"):
            if key != kept and key.rsplit("/", 1)[-1].startswith("checkpoint-"):
                self.blobs.remove(key)

    def checkpoint_dir(self, run_id: uuid.UUID | str, digest: str) -> Path:
        """A local directory holding the run's checkpoint ``digest`` (fetched when needed).

        Locally that is ``run_dir``, verified by ``load_checkpoint`` as before. With an object
        store, the cached copy is used when its files hash to ``digest``; otherwise the published
        object is fetched and verified before it replaces the copy.
        """
        directory = self.run_dir(run_id)
        if not self.remote:
            return directory
        with self._fetching:
            if _digest_or_none(directory) == digest:
                return directory
            from service.storage.checkpoint_archive import unpack_checkpoint

            try:
                data = self.blobs.read(self.checkpoint_key(run_id, digest))
            except FileNotFoundError:
                raise CheckpointError(
                    f"checkpoint {digest[:12]} of run {_uuid(run_id)} is not in the object store",
                    fix="retrain the run",
                ) from None
            unpack_checkpoint(data, directory, digest)
        return directory

    def remove_run(self, run_id: uuid.UUID | str) -> None:
        """Remove the run's directory and any kept previous checkpoints or leftovers beside it."""
        target = self.run_dir(run_id)
        shutil.rmtree(target, ignore_errors=True)
        for leftover in target.parent.glob(f".{target.name}.*"):
            shutil.rmtree(leftover, ignore_errors=True)
        if self.remote:
            self.blobs.remove_prefix(f"runs/{_uuid(run_id)}")

    def write_dataset(self, dataset_id: uuid.UUID | str, data: bytes) -> str:
        """Store an uploaded dataset's bytes atomically; returns their sha256."""
        return self.blobs.write(self.dataset_key(dataset_id), data)

    def read_dataset(self, dataset_id: uuid.UUID | str) -> bytes:
        try:
            return self.blobs.read(self.dataset_key(dataset_id))
        except FileNotFoundError:
            raise CheckpointError(
                f"dataset file for {_uuid(dataset_id)} is missing", fix="upload the dataset again"
            ) from None

    def save_points(self, dataset_id: uuid.UUID | str, points: Tensor) -> str:
        """Store ``(N, D)`` points atomically; returns the file's sha256."""
        buffer = io.BytesIO()
        torch.save(points.detach().to("cpu", torch.float32).contiguous(), buffer)
        return self.write_dataset(dataset_id, buffer.getvalue())

    def load_points(self, dataset_id: uuid.UUID | str, expected_sha256: str | None = None) -> Tensor:
        data = self.read_dataset(dataset_id)
        if expected_sha256 is not None and hashlib.sha256(data).hexdigest() != expected_sha256:
            raise CheckpointError(
                f"dataset file for {_uuid(dataset_id)} does not match its checksum",
                fix="upload the dataset again",
            )
        points = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
        if not isinstance(points, Tensor) or points.dim() != 2:
            raise CheckpointError("stored dataset is not an (N, D) tensor", fix="upload it again")
        return points


def _digest_or_none(directory: Path) -> str | None:
    if not (directory / "manifest.json").is_file():
        return None
    try:
        return checkpoint_digest(directory)
    except (CheckpointError, OSError):
        return None
