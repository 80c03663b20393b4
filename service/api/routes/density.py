"""``GET /density?run_id=&x=0.5,1.2&x=-1,0`` and ``POST /density`` (large batches)."""

from __future__ import annotations

import math
import uuid
from typing import Annotated

from fastapi import APIRouter, Query

from service.api.deps import ModelCacheDep, SessionDep
from service.api.serving import log_density, served_model
from service.ml.data import MAX_DIM, points_from_rows
from service.ml.errors import DataError
from service.schemas import MAX_DENSITY_POINTS, DensityOut, DensityRequest, Problem

__all__ = ["parse_points_param", "router"]

router = APIRouter(tags=["queries"])

ERRORS = {
    404: {"model": Problem, "description": "Unknown run"},
    409: {"model": Problem, "description": "Run has not succeeded"},
    422: {"model": Problem, "description": "Invalid points"},
}


def parse_points_param(values: list[str], field: str = "x") -> list[list[float]]:
    """``["0.5,1.2", "-1,0"]`` -> ``[[0.5, 1.2], [-1.0, 0.0]]``; non-numbers raise DataError."""
    rows = []
    for i, text in enumerate(values):
        row = []
        for j, cell in enumerate(text.split(",")):
            try:
                value = float(cell)
            except ValueError:
                raise DataError(
                    f"x[{i}] coordinate {j} is not a number: {cell.strip()[:40]!r}",
                    value=cell[:80],
                    fix="give comma-separated numbers, e.g. x=0.5,1.2",
                    field=field,
                ) from None
            if not math.isfinite(value):
                raise DataError(
                    f"x[{i}] coordinate {j} is {value}",
                    value=cell[:80],
                    fix="give finite numbers (no NaN or infinity)",
                    field=field,
                )
            row.append(value)
        rows.append(row)
    return rows


@router.get("/density", response_model=DensityOut, responses=ERRORS)
def density_get(
    run_id: uuid.UUID,
    session: SessionDep,
    cache: ModelCacheDep,
    x: Annotated[
        list[str],
        Query(
            min_length=1,
            max_length=MAX_DENSITY_POINTS,
            description="One point per parameter, coordinates comma-separated: x=0.5,1.2&x=-1,0",
        ),
    ],
) -> DensityOut:
    """Natural-log density of each point under a succeeded run's model."""
    points = points_from_rows(parse_points_param(x), field="x", max_dim=MAX_DIM)
    row, entry = served_model(session, cache, run_id)
    return DensityOut(run_id=row.id, log_density=log_density(entry, points, "x"))


@router.post("/density", response_model=DensityOut, responses=ERRORS)
def density_post(body: DensityRequest, session: SessionDep, cache: ModelCacheDep) -> DensityOut:
    """Like ``GET /density`` for up to ``MAX_DENSITY_POINTS`` points in a JSON body."""
    points = points_from_rows(body.points, field="points", max_points=MAX_DENSITY_POINTS)
    row, entry = served_model(session, cache, body.run_id)
    return DensityOut(run_id=row.id, log_density=log_density(entry, points, "points"))
