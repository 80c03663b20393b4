"""``GET /sample?run_id=&n=&seed=``: draws from a succeeded run's model (same seed, same samples)."""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter, Query

from service.api.deps import ModelCacheDep, SessionDep
from service.api.serving import sample, served_model
from service.schemas import MAX_SAMPLE_N, Problem, SampleOut

__all__ = ["router"]

router = APIRouter(tags=["queries"])


@router.get(
    "/sample",
    response_model=SampleOut,
    responses={
        404: {"model": Problem, "description": "Unknown run"},
        409: {"model": Problem, "description": "Run has not succeeded"},
        422: {"model": Problem, "description": f"Invalid parameters (n above {MAX_SAMPLE_N})"},
    },
)
def sample_get(
    run_id: uuid.UUID,
    session: SessionDep,
    cache: ModelCacheDep,
    n: Annotated[int, Query(ge=1, le=MAX_SAMPLE_N, description=f"At most {MAX_SAMPLE_N}.")] = 1000,
    seed: Annotated[int, Query(ge=0, le=2**31 - 1)] = 0,
) -> SampleOut:
    """``n`` samples ``(n, D)`` drawn with a generator seeded by ``seed``."""
    row, entry = served_model(session, cache, run_id)
    return SampleOut(run_id=row.id, seed=seed, samples=sample(entry, n, seed))
