"""Run resources: list with cursor pagination, read, cancel, per-iteration metrics, delete."""

from __future__ import annotations

import base64
import binascii
import json
import uuid
from datetime import datetime
from typing import Annotated
from urllib.parse import urlencode

from fastapi import APIRouter, Query, Response

from service.api.auth import RequireWriteKey
from service.api.deps import ModelCacheDep, SessionDep, StoreDep
from service.api.errors import ApiError
from service.api.serving import get_run_or_404
from service.db import RunRow, RunStatus
from service.db import repository as repo
from service.schemas.runs import MetricPoint, ModelName, Problem, RunList, RunOut

__all__ = ["router"]

router = APIRouter(tags=["runs"])

NOT_FOUND = {404: {"model": Problem, "description": "Unknown run"}}
MAX_LIMIT = 500
DEFAULT_METRICS_LIMIT = 1000
MAX_METRICS_LIMIT = 10_000


def _encode_cursor(row: RunRow) -> str:
    raw = json.dumps([row.created_at.isoformat(), row.id]).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _decode_cursor(cursor: str) -> tuple[datetime, str]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        created, run_id = json.loads(raw)
        return datetime.fromisoformat(created), str(uuid.UUID(run_id))
    except (binascii.Error, ValueError, TypeError, UnicodeDecodeError):
        raise ApiError(
            422, "invalid_cursor", "cursor is not one this API issued", errors=[("cursor", "invalid cursor")]
        ) from None


@router.get("/runs", response_model=RunList, responses={422: {"model": Problem}})
def list_runs(
    session: SessionDep,
    status: RunStatus | None = None,
    model: ModelName | None = None,
    dataset: Annotated[str | None, Query(max_length=200, description="Dataset name or id.")] = None,
    sweep_id: Annotated[uuid.UUID | None, Query()] = None,
    limit: Annotated[int, Query(ge=1, le=MAX_LIMIT)] = 50,
    cursor: Annotated[str | None, Query(max_length=400)] = None,
) -> RunList:
    """Runs, newest first. Follow ``next`` for the following page."""
    filters = {
        "status": status.value if status else None,
        "model": model.value if model else None,
        "dataset": dataset,
        "sweep_id": str(sweep_id) if sweep_id else None,
    }
    after = _decode_cursor(cursor) if cursor else None
    rows = repo.list_runs(session, limit=limit + 1, after=after, **filters)
    next_link = None
    if len(rows) > limit:
        rows = rows[:limit]
        query = {k: v for k, v in filters.items() if v is not None}
        query |= {"limit": limit, "cursor": _encode_cursor(rows[-1])}
        next_link = f"/runs?{urlencode(query)}"
    return RunList(items=[RunOut.from_row(r) for r in rows], next=next_link)


@router.get("/runs/{run_id}", response_model=RunOut, responses=NOT_FOUND)
def get_run(run_id: uuid.UUID, session: SessionDep) -> RunOut:
    """The run resource, with progress (fraction, ETA) and metrics."""
    return RunOut.from_row(get_run_or_404(session, run_id))


@router.post("/runs/{run_id}/cancel", status_code=202, response_model=RunOut, responses=NOT_FOUND)
def cancel_run(run_id: uuid.UUID, session: SessionDep, _: RequireWriteKey) -> RunOut:
    """Queued runs end ``canceled`` at once; running ones stop at their next iteration."""
    get_run_or_404(session, run_id)
    row = repo.request_cancel(session, str(run_id))
    if row is None:
        raise ApiError(404, "run_not_found", f"no run with id {run_id}")
    return RunOut.from_row(row)


@router.get(
    "/runs/{run_id}/metrics",
    response_model=list[MetricPoint],
    responses={
        200: {
            "description": "One page of the history, by iteration",
            "headers": {
                "Link": {
                    "description": 'rel="next": the following page (absent on the last one)',
                    "schema": {"type": "string"},
                }
            },
        },
        **NOT_FOUND,
        422: {"model": Problem, "description": "limit or after out of range"},
    },
)
def run_metrics(
    run_id: uuid.UUID,
    response: Response,
    session: SessionDep,
    limit: Annotated[
        int, Query(ge=1, le=MAX_METRICS_LIMIT, description="Iterations per page.")
    ] = DEFAULT_METRICS_LIMIT,
    after: Annotated[
        int | None, Query(ge=0, description="Start after this iteration (the next link sets it).")
    ] = None,
) -> list[MetricPoint]:
    """Per-iteration loss, wall clock and NFE (written every few iterations while running).

    The body stays a list (``API.md``); it holds at most ``limit`` iterations, and a ``Link``
    header with ``rel="next"`` points at the following page while there is one."""
    get_run_or_404(session, run_id)
    rows = repo.run_metrics(session, str(run_id), limit=limit + 1, after=after)
    if len(rows) > limit:
        rows = rows[:limit]
        query = urlencode({"limit": limit, "after": rows[-1].iteration})
        response.headers["Link"] = f'</runs/{run_id}/metrics?{query}>; rel="next"'
    return [MetricPoint.from_row(r) for r in rows]


@router.delete(
    "/runs/{run_id}",
    status_code=204,
    response_class=Response,
    responses={**NOT_FOUND, 409: {"model": Problem, "description": "Run is running"}},
)
def delete_run(
    run_id: uuid.UUID, session: SessionDep, store: StoreDep, cache: ModelCacheDep, _: RequireWriteKey
) -> Response:
    """Remove a run, its metrics and its checkpoint (cancel a running run first)."""
    outcome = repo.delete_run(session, str(run_id))
    if outcome == "missing":
        raise ApiError(
            404, "run_not_found", f"no run with id {run_id}", errors=[("run_id", "unknown run id")]
        )
    if outcome == "busy":
        row = repo.get_run(session, str(run_id))
        status = row.status if row else "running"
        raise ApiError(
            409,
            "run_active",
            f"run {run_id} is {status}; cancel it and wait for it to stop before deleting",
            errors=[("run_id", f"run status is {status}")],
            extra={"run_status": status},
        )
    cache.discard(str(run_id))
    store.remove_run(run_id)
    return Response(status_code=204)
