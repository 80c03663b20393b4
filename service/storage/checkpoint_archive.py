"""A checkpoint directory as one object: an uncompressed tar of the files its manifest lists.

On an object store a checkpoint is published as ``runs/<uuid>/checkpoint-<digest>.tar``: one key,
so one atomic publish, named by the digest the database records (a new checkpoint never overwrites
the one the row still points at). Unpacking accepts only regular files with the plain names of a
checkpoint directory and checks the digest before the directory is moved into place, so a corrupt
or replaced object never reaches the local copy.
"""

from __future__ import annotations

import io
import json
import re
import shutil
import tarfile
import uuid
from pathlib import Path

from service.ml.checkpoint import checkpoint_digest
from service.ml.errors import CheckpointError

__all__ = ["pack_checkpoint", "unpack_checkpoint"]

MANIFEST = "manifest.json"
_NAME = re.compile(r"[a-z_]{1,32}\.(?:pt|json)")
_MAX_BYTES = 4 << 30


def pack_checkpoint(directory: Path) -> bytes:
    """The manifest's files and the manifest itself, as tar bytes (the digest is in the manifest)."""
    try:
        manifest = json.loads((directory / MANIFEST).read_text())
        names = sorted(manifest["files"]) + [MANIFEST]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise CheckpointError(f"no complete checkpoint to publish: {exc}", fix="retrain the run") from None
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name in names:
            tar.add(directory / name, arcname=name, recursive=False)
    return buffer.getvalue()


def unpack_checkpoint(data: bytes, target: Path, expected_digest: str) -> None:
    """Replace ``target`` by the checkpoint in ``data``, after checking it has ``expected_digest``."""
    fix = "the stored checkpoint is corrupt or was replaced; retrain the run"
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = target.parent / f".{target.name}.fetch-{uuid.uuid4().hex}"
    staging.mkdir()
    try:
        try:
            with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tar:
                for member in tar:
                    if not member.isfile() or not _NAME.fullmatch(member.name) or member.size > _MAX_BYTES:
                        raise CheckpointError(f"unexpected entry {member.name!r} in the checkpoint", fix=fix)
                    source = tar.extractfile(member)
                    assert source is not None
                    (staging / member.name).write_bytes(source.read())
        except tarfile.TarError as exc:
            raise CheckpointError(f"the stored checkpoint cannot be unpacked: {exc}", fix=fix) from None
        try:
            digest = checkpoint_digest(staging)
        except OSError:  # a file the manifest lists is not in the archive
            raise CheckpointError("the stored checkpoint is incomplete", fix=fix) from None
        if digest != expected_digest:
            raise CheckpointError(
                "the stored checkpoint does not match the recorded digest", value=digest, fix=fix
            )
        old = target.parent / f".{target.name}.old-{uuid.uuid4().hex}"
        if target.exists():
            target.rename(old)
        staging.rename(target)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
