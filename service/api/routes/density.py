"""``GET /density?run_id=&x=0.5,1.2&x=-1,0`` and ``POST /density`` (large batches).

Point queries are ``async``: small requests are parsed on the event loop and await the model's
batcher (``service.serving.batching``) there, so a hot 1-point query takes no threadpool round trip; large
inputs are parsed in the threadpool so the loop is never blocked for long.
"""

from __future__ import annotations

import math
import uuid
from array import array
from collections.abc import Callable
from typing import Annotated, Any

import torch
from fastapi import APIRouter, Query, Request
from fastapi.responses import Response
from starlette.concurrency import run_in_threadpool
from torch import Tensor

from service.api.deps import ModelCacheDep, SessionFactoryDep, SettingsDep
from service.api.serving import log_density_async, model_json, served_model, served_model_async
from service.db import SessionFactory
from service.ml.data import FLOAT32_OVERFLOW, MAX_DIM, points_from_rows
from service.ml.errors import DataError
from service.schemas.runs import MAX_DENSITY_POINTS, DensityOut, DensityRequest, Problem
from service.serving.model_cache import ModelCache
from service.serving.series_queries import series_log_density

__all__ = ["LOOP_PARSE_MAX_POINTS", "parse_points_param", "parse_query_points", "router"]

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
async def density_get(
    request: Request,
    run_id: uuid.UUID,
    sessions: SessionFactoryDep,
    cache: ModelCacheDep,
    x: Annotated[
        list[str],
        Query(
            min_length=1,
            max_length=MAX_DENSITY_POINTS,
            description="One point per parameter, coordinates comma-separated: x=0.5,1.2&x=-1,0",
        ),
    ],
) -> Response:
    """Natural-log density of each point under a succeeded run's model."""
    points = await _off_loop_if_large(len(x), parse_query_points, x)
    row, entry = await served_model_async(sessions, cache, run_id)
    values = await log_density_async(entry, points, "x", request.client)
    return model_json(DensityOut.model_construct(run_id=row.id, log_density=values))


@router.post("/density", response_model=DensityOut, responses=ERRORS)
async def density_post(
    request: Request,
    body: DensityRequest,
    sessions: SessionFactoryDep,
    cache: ModelCacheDep,
    settings: SettingsDep,
) -> DensityOut | Response:
    """Like ``GET /density`` for up to ``MAX_DENSITY_POINTS`` points in a JSON body.

    For a latent ODE run send ``series`` instead: each gets a lower bound on its log-likelihood.
    """
    if body.series is not None:
        budget = settings.query_memory_bytes
        return await run_in_threadpool(_series_density, body, sessions, cache, budget)
    points = await _off_loop_if_large(len(body.points), _parse_post, body.points)
    row, entry = await served_model_async(sessions, cache, body.run_id)
    values = await log_density_async(entry, points, "points", request.client)
    return model_json(DensityOut.model_construct(run_id=row.id, log_density=values))


def _series_density(
    body: DensityRequest, sessions: SessionFactory, cache: ModelCache, budget: int
) -> DensityOut:
    with sessions() as session:
        row, entry = served_model(session, cache, body.run_id, kind="series")
        assert body.series is not None
        return DensityOut(run_id=row.id, log_density=series_log_density(entry, body.series, budget))


LOOP_PARSE_MAX_POINTS = 64  # larger inputs are parsed in the threadpool (about 2 us per point)


async def _off_loop_if_large(count: int, parse: Callable[[Any], Tensor], rows: Any) -> Tensor:
    return parse(rows) if count <= LOOP_PARSE_MAX_POINTS else await run_in_threadpool(parse, rows)


def parse_query_points(x: list[str]) -> Tensor:
    """``GET /density``'s ``x`` values as an ``(N, D)`` tensor; DataError naming ``x`` otherwise."""
    points = _plain_query_points(x)
    if points is None:  # something to report: the checking parser names it
        points = points_from_rows(parse_points_param(x), field="x", max_dim=MAX_DIM)
    return points


def _plain_query_points(x: list[str]) -> Tensor | None:
    """The common case fast: rows of one width (at most ``MAX_DIM``) of finite float32 numbers,
    parsed into one ``array('f')`` and one ``torch.frombuffer`` (the checking parser's nested lists
    and ``torch.tensor`` cost a 1-point query ~7 % of its CPU under load); None for anything else."""
    if not x:
        return None
    width = x[0].count(",") + 1
    if width > MAX_DIM:
        return None
    flat = array("f")
    for text in x:
        cells = text.split(",")
        if len(cells) != width:
            return None
        for cell in cells:
            try:
                value = float(cell)
            except ValueError:
                return None
            if not abs(value) < FLOAT32_OVERFLOW:  # NaN, infinities, beyond float32
                return None
            flat.append(value)
    return torch.frombuffer(flat, dtype=torch.float32).view(len(x), width)


def _parse_post(rows: list[list[float]]) -> Tensor:
    return points_from_rows(rows, field="points", max_points=MAX_DENSITY_POINTS)
