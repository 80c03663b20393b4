"""Checkpoint directories: weights as a ``state_dict``, configs as JSON, never pickled modules.

Layout of a checkpoint directory::

    model.pt            state_dict (tensors only; loaded with weights_only=True)
    config.json         model name, dim, model/solver/training configs, metrics, extra
    optimizer.pt        optimizer state (optional, for resuming)
    training_state.pt   iteration, RNG state, history, wall clock, early-stopping state (best
                        score and weights), the weight average and, with one, the raw weights
                        (model.pt then holds the average; optional, for resuming)
    manifest.json       format version and the sha256 of every file; written last

The directory is assembled beside its target, fsynced, and moved into place by rename, so a reader
never sees a half-written checkpoint. ``digest`` (sha256 over the file hashes) is what the service
stores to verify a checkpoint before serving it.

The checkpoint being replaced is kept beside the new one as ``.<name>.prev-<digest>`` until the
caller has committed the new digest to the database and calls :func:`discard_previous`. A crash in
between (kill -9, a database drop, a time limit) leaves the database naming the previous digest, and
:func:`load_checkpoint` finds that checkpoint by its digest: no progress is lost.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from pydantic import BaseModel

from service.ml.errors import CheckpointError, OdeServeError
from service.ml.models import DensityModel, build_model, stored_model_config
from service.ml.ode import SolverConfig
from service.ml.training import TrainConfig, TrainState

__all__ = [
    "FORMAT_VERSION",
    "LoadedCheckpoint",
    "checkpoint_digest",
    "discard_previous",
    "load_checkpoint",
    "save_checkpoint",
]

FORMAT_VERSION = 1
MANIFEST = "manifest.json"


@dataclass
class LoadedCheckpoint:
    model: DensityModel
    meta: dict[str, Any]
    state: TrainState | None = None
    metrics: dict[str, Any] = field(default_factory=dict)
    digest: str = ""

    @property
    def train_config(self) -> TrainConfig | None:
        raw = self.meta.get("training")
        return TrainConfig.model_validate(raw) if raw else None


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _combine(files: dict[str, str]) -> str:
    text = "\n".join(f"{name}:{files[name]}" for name in sorted(files))
    return hashlib.sha256(text.encode()).hexdigest()


def _jsonable(value: Any) -> Any:
    return value.model_dump(mode="json") if isinstance(value, BaseModel) else value


def save_checkpoint(
    directory: Path | str,
    model: DensityModel,
    *,
    train_config: TrainConfig | None = None,
    state: TrainState | None = None,
    metrics: dict[str, Any] | None = None,
    extra: dict[str, Any] | None = None,
) -> str:
    """Write a checkpoint atomically (replacing any previous one); returns its digest."""
    target = Path(directory)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = target.parent / f".{target.name}.tmp-{uuid.uuid4().hex}"
    staging.mkdir()
    try:
        torch.save({k: v.detach().cpu() for k, v in model.state_dict().items()}, staging / "model.pt")
        config = {
            "format_version": FORMAT_VERSION,
            **model.describe(),
            "training": _jsonable(train_config),
            "metrics": metrics or {},
            "extra": extra or {},
        }
        (staging / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True))
        if state is not None:
            torch.save(state.optimizer_state, staging / "optimizer.pt")
            torch.save(
                {
                    "iteration": state.iteration,
                    "generator_state": state.generator_state,
                    "history": state.history,
                    "wall_s": state.wall_s,
                    "early_stopping": state.early_stopping,
                    # With an EMA, model.pt holds the averaged (served) weights and the optimizer's
                    # raw weights travel here, so a resumed run continues from them exactly.
                    **({"ema": state.ema, "train_weights": state.model_state} if state.ema else {}),
                },
                staging / "training_state.pt",
            )
        files = {p.name: _sha256(p) for p in sorted(staging.iterdir())}
        digest = _combine(files)
        manifest = {"format_version": FORMAT_VERSION, "files": files, "digest": digest}
        (staging / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True))
        for path in staging.iterdir():
            _fsync(path)
        _fsync(staging)
        _swap_into_place(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return digest


def _fsync(path: Path) -> None:
    """Flush a file's or a directory's contents to disk (directories: their entries)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _recorded_digest(directory: Path) -> str | None:
    try:
        digest = json.loads((directory / MANIFEST).read_text()).get("digest")
    except (OSError, ValueError, AttributeError):
        return None
    return digest if isinstance(digest, str) and digest.isalnum() else None


def _previous(target: Path, digest: str) -> Path:
    return target.parent / f".{target.name}.prev-{digest}"


def _swap_into_place(staging: Path, target: Path) -> None:
    """Move ``staging`` to ``target``, keeping the replaced checkpoint as ``.<name>.prev-<digest>``."""
    if target.exists():
        digest = _recorded_digest(target)
        old = target.parent / f".{target.name}.old-{uuid.uuid4().hex}"
        kept = _previous(target, digest) if digest else old
        if kept.exists():  # the same checkpoint kept before (a retried save): the older copy goes
            shutil.rmtree(kept, ignore_errors=True)
        target.rename(kept)
    staging.rename(target)
    _fsync(target.parent)


def discard_previous(directory: Path | str) -> int:
    """Remove kept previous checkpoints and leftovers of interrupted saves beside ``directory``.

    Call it once the digest of the checkpoint now at ``directory`` is committed. Returns how many
    entries were removed.
    """
    target = Path(directory)
    if not target.parent.is_dir():
        return 0
    removed = 0
    for kind in ("prev", "old", "tmp"):
        for path in target.parent.glob(f".{target.name}.{kind}-*"):
            shutil.rmtree(path, ignore_errors=True)
            removed += 1
    return removed


def _locate(directory: Path, expected_digest: str | None) -> Path:
    """``directory``, or the kept previous checkpoint when that one has the expected digest."""
    if expected_digest is None or _recorded_digest(directory) == expected_digest:
        return directory
    if expected_digest.isalnum():
        kept = _previous(directory, expected_digest)
        if (kept / MANIFEST).is_file():
            return kept
    return directory


def _read_manifest(directory: Path) -> dict[str, Any]:
    path = directory / MANIFEST
    if not path.is_file():
        raise CheckpointError(
            f"no checkpoint at {directory.name}: {MANIFEST} is missing",
            fix="train the run to completion or point at a directory written by odeserve",
        )
    try:
        manifest = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"corrupt {MANIFEST}: {exc}", fix="retrain the run") from None
    if manifest.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(
            f"unsupported checkpoint format {manifest.get('format_version')!r}",
            value=manifest.get("format_version"),
            fix=f"this version reads format {FORMAT_VERSION}; retrain or upgrade odeserve",
        )
    return manifest


def checkpoint_digest(directory: Path | str) -> str:
    """Digest recomputed from the files on disk (not read from the manifest)."""
    directory = Path(directory)
    files = _read_manifest(directory)["files"]
    return _combine({name: _sha256(directory / name) for name in files})


def _verify(directory: Path, manifest: dict[str, Any], expected_digest: str | None) -> str:
    for name, recorded in manifest["files"].items():
        path = directory / name
        if not path.is_file() or _sha256(path) != recorded:
            raise CheckpointError(
                f"checkpoint file {name} is missing or does not match its checksum",
                fix="the checkpoint is corrupt; retrain the run",
            )
    digest = _combine(manifest["files"])
    if expected_digest is not None and digest != expected_digest:
        raise CheckpointError(
            "checkpoint digest does not match the recorded one",
            value=digest,
            fix="the checkpoint was replaced or tampered with; retrain the run",
        )
    return digest


def _torch_load(path: Path, map_location: str | torch.device) -> Any:
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # torch raises many types for corrupt files
        raise CheckpointError(f"cannot read {path.name}: {exc}", fix="retrain the run") from None


def load_checkpoint(
    directory: Path | str,
    *,
    map_location: str | torch.device = "cpu",
    expected_digest: str | None = None,
    with_state: bool = False,
) -> LoadedCheckpoint:
    """Verify and load a checkpoint; the model is returned in eval mode.

    With ``expected_digest``, a kept previous checkpoint with that digest is loaded when the one at
    ``directory`` is newer but not yet committed (see the module doc).
    """
    directory = _locate(Path(directory), expected_digest)
    manifest = _read_manifest(directory)
    digest = _verify(directory, manifest, expected_digest)
    meta = json.loads((directory / "config.json").read_text())
    try:
        config = stored_model_config(meta["model"], meta["model_config"])
        model = build_model(meta["model"], config, int(meta["dim"]), SolverConfig(**meta["solver"]))
        model.load_state_dict(_torch_load(directory / "model.pt", map_location))
    except (KeyError, TypeError, ValueError, RuntimeError, OdeServeError) as exc:
        raise CheckpointError(
            f"checkpoint config does not match its weights: {exc}", fix="retrain the run"
        ) from None
    model.to(map_location).eval()
    state = None
    if with_state and (directory / "training_state.pt").is_file():
        raw = _torch_load(directory / "training_state.pt", "cpu")
        weights = raw.get("train_weights") or model.state_dict()
        state = TrainState(
            iteration=int(raw["iteration"]),
            model_state={k: v.clone() for k, v in weights.items()},
            optimizer_state=_torch_load(directory / "optimizer.pt", "cpu"),
            generator_state=raw["generator_state"],
            history=list(raw["history"]),
            wall_s=float(raw["wall_s"]),
            early_stopping=raw.get("early_stopping"),
            ema=raw.get("ema"),
        )
    return LoadedCheckpoint(
        model=model, meta=meta, state=state, metrics=meta.get("metrics", {}), digest=digest
    )
