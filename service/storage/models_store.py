"""The models store: where checkpoints and uploaded datasets live on disk.

Layout (every name below the root is derived from a validated UUID, never from user text)::

    <MODELS_STORE>/runs/<run uuid>/          checkpoint directory (see service.ml.checkpoint)
    <MODELS_STORE>/datasets/<dataset uuid>.pt uploaded points, a float32 (N, D) tensor
    <MODELS_STORE>/runs/<run uuid>/plots/     cached figures (kind and digest from the API, see below)
    <MODELS_STORE>/sweeps/<sweep uuid>/       cached sweep charts

Files are written to a temporary sibling and renamed into place, so readers never see half a file.
"""

from __future__ import annotations

import hashlib
import io
import os
import re
import shutil
import tempfile
import uuid
from pathlib import Path

import torch
from torch import Tensor

from service.ml.errors import CheckpointError

__all__ = ["ModelStore", "atomic_write"]


_PLAIN = re.compile(r"[a-z0-9_]{1,64}")


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


class ModelStore:
    """Paths and file operations below one root directory."""

    def __init__(self, root: Path | str) -> None:
        self.root = Path(root).resolve()

    def run_dir(self, run_id: uuid.UUID | str) -> Path:
        return self.root / "runs" / _uuid(run_id)

    def dataset_path(self, dataset_id: uuid.UUID | str) -> Path:
        return self.root / "datasets" / f"{_uuid(dataset_id)}.pt"

    def plot_path(self, run_id: uuid.UUID | str, kind: str, digest: str, suffix: str = "png") -> Path:
        """Cached figure ``runs/<uuid>/plots/<kind>-<digest>.<suffix>``.

        ``kind`` and ``suffix`` come from the API's enums and ``digest`` from the run row; all are
        checked to be plain lowercase words or hex anyway, so no user text reaches the path.
        """
        for part in (kind, suffix, digest):
            if not _PLAIN.fullmatch(part):
                raise ValueError(f"not a plain path component: {part!r}")
        return self.run_dir(run_id) / "plots" / f"{kind}-{digest[:16]}.{suffix}"

    def sweep_plot_path(self, sweep_id: uuid.UUID | str, content: str) -> Path:
        """Cached chart of a sweep, keyed by a hash of what it shows (``content``)."""
        key = hashlib.sha256(content.encode()).hexdigest()[:16]
        return self.root / "sweeps" / _uuid(sweep_id) / f"plot-{key}.png"

    def remove_run(self, run_id: uuid.UUID | str) -> None:
        """Remove the run's directory and any kept previous checkpoints or leftovers beside it."""
        target = self.run_dir(run_id)
        shutil.rmtree(target, ignore_errors=True)
        for leftover in target.parent.glob(f".{target.name}.*"):
            shutil.rmtree(leftover, ignore_errors=True)

    def save_points(self, dataset_id: uuid.UUID | str, points: Tensor) -> str:
        """Store ``(N, D)`` points atomically; returns the file's sha256."""
        buffer = io.BytesIO()
        torch.save(points.detach().to("cpu", torch.float32).contiguous(), buffer)
        data = buffer.getvalue()
        atomic_write(self.dataset_path(dataset_id), data)
        return hashlib.sha256(data).hexdigest()

    def load_points(self, dataset_id: uuid.UUID | str, expected_sha256: str | None = None) -> Tensor:
        path = self.dataset_path(dataset_id)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            raise CheckpointError(
                f"dataset file for {_uuid(dataset_id)} is missing", fix="upload the dataset again"
            ) from None
        if expected_sha256 is not None and hashlib.sha256(data).hexdigest() != expected_sha256:
            raise CheckpointError(
                f"dataset file for {_uuid(dataset_id)} does not match its checksum",
                fix="upload the dataset again",
            )
        points = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
        if not isinstance(points, Tensor) or points.dim() != 2:
            raise CheckpointError("stored dataset is not an (N, D) tensor", fix="upload it again")
        return points
