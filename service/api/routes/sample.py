"""``GET /sample?run_id=&n=&seed=``: draws from a succeeded run's model (same seed, same samples).

Latent ODE runs return trajectories from the prior at the times ``t`` (``TrajectoryOut``)."""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter, Query
from fastapi.responses import Response
from starlette.concurrency import run_in_threadpool

from service.api.deps import ModelCacheDep, SessionFactoryDep
from service.api.serving import model_json, sample_async, served_model_async
from service.ml.errors import DataError
from service.schemas.runs import MAX_SAMPLE_N, Problem, SampleOut
from service.schemas.series import MAX_TRAJECTORY_TIMES, MAX_TRAJECTORY_VALUES, TrajectoryOut
from service.serving.series_queries import parse_times_param, trajectories

__all__ = ["router"]

router = APIRouter(tags=["queries"])


@router.get(
    "/sample",
    response_model=SampleOut | TrajectoryOut,
    responses={
        404: {"model": Problem, "description": "Unknown run"},
        409: {"model": Problem, "description": "Run has not succeeded"},
        422: {"model": Problem, "description": f"Invalid parameters (n above {MAX_SAMPLE_N})"},
    },
)
async def sample_get(
    run_id: uuid.UUID,
    sessions: SessionFactoryDep,
    cache: ModelCacheDep,
    n: Annotated[int, Query(ge=1, le=MAX_SAMPLE_N, description=f"At most {MAX_SAMPLE_N}.")] = 1000,
    seed: Annotated[int, Query(ge=0, le=2**31 - 1)] = 0,
    t: Annotated[
        str | None,
        Query(
            description=(
                "Latent ODE runs only: comma-separated times since the series start, e.g. "
                f"t=0,0.5,1.0 (at most {MAX_TRAJECTORY_TIMES}; default 100 over the training span; "
                f"n x times at most {MAX_TRAJECTORY_VALUES})."
            ),
        ),
    ] = None,
) -> TrajectoryOut | Response:
    """``n`` samples ``(n, D)`` drawn with a generator seeded by ``seed``.

    For a latent ODE run: ``n`` trajectories ``(n, T, D)`` from the prior at the times ``t``.
    """
    row, entry = await served_model_async(sessions, cache, run_id, kind=None)
    if entry.model.data_kind == "series":
        wanted = None if t is None else parse_times_param(t)
        times, paths = await run_in_threadpool(trajectories, entry, n, seed, wanted)
        return TrajectoryOut(run_id=row.id, seed=seed, times=times, samples=paths)
    if t is not None:
        raise DataError(
            f"t applies to latent ODE runs; run {row.id} is a {row.model} model of points",
            fix="leave out t",
            field="t",
        )
    samples = await sample_async(entry, n, seed)
    return model_json(SampleOut.model_construct(run_id=row.id, seed=seed, samples=samples))
