"""Shared steps of the query routes: find a run, check it can serve, run the model under its lock."""

from __future__ import annotations

import math
import uuid

import torch
from sqlalchemy.orm import Session
from torch import Tensor

from service.api.errors import ApiError
from service.db import RunRow, RunStatus
from service.db import repository as repo
from service.ml.errors import DataError
from service.ml.models import MODELS
from service.model_cache import CachedModel, ModelCache

__all__ = ["as_json_floats", "get_run_or_404", "log_density", "sample", "served_model"]


def get_run_or_404(session: Session, run_id: uuid.UUID, field: str = "run_id") -> RunRow:
    row = repo.get_run(session, str(run_id))
    if row is None:
        raise ApiError(404, "run_not_found", f"no run with id {run_id}", errors=[(field, "unknown run id")])
    return row


def served_model(session: Session, cache: ModelCache, run_id: uuid.UUID) -> tuple[RunRow, CachedModel]:
    """The loaded model of a succeeded point-density run (404 unknown, 409 not succeeded)."""
    row = get_run_or_404(session, run_id)
    if row.status != RunStatus.succeeded or not row.checkpoint_sha256:
        raise ApiError(
            409,
            "run_not_ready",
            f"run {row.id} is {row.status}; densities and samples need a succeeded run",
            errors=[("run_id", f"run status is {row.status}")],
            extra={"run_status": row.status},
        )
    if MODELS[row.model].data_kind != "points":
        raise ApiError(
            422,
            "wrong_model_kind",
            f"run {row.id} is a {row.model} model of time series; this endpoint serves point densities",
            errors=[("run_id", f"{row.model} runs are queried with POST /predict")],
        )
    return row, cache.get(row.id, row.checkpoint_sha256)


def _model_dtype(entry: CachedModel) -> torch.dtype:
    return next(entry.model.parameters()).dtype


def log_density(entry: CachedModel, points: Tensor, field: str) -> list[float | None]:
    """Log-density of ``points`` ``(N, D)``; 422 naming ``field`` when ``D`` is not the model's."""
    dim = entry.model.dim
    if points.shape[1] != dim:
        raise DataError(
            f"points have {points.shape[1]} coordinates but this run's model is {dim}-dimensional",
            value=int(points.shape[1]),
            fix=f"give exactly {dim} coordinates per point (expected dim {dim})",
            field=field,
        )
    with entry.lock, torch.no_grad():
        values = entry.model.log_prob(points.to(_model_dtype(entry)))
    return as_json_floats(values.tolist())


def sample(entry: CachedModel, n: int, seed: int) -> list[list[float | None]]:
    generator = torch.Generator().manual_seed(seed)
    with entry.lock, torch.no_grad():
        samples = entry.model.sample(n, generator)
    return [as_json_floats(row) for row in samples.tolist()]


def as_json_floats(values: list[float]) -> list[float | None]:
    """JSON has no NaN or infinity: such values become null."""
    return [v if math.isfinite(v) else None for v in values]
