"""Run resources: list (sorted, filtered, cursor-paginated), read, label, cancel, retry, metrics, delete."""

from __future__ import annotations

import base64
import binascii
import json
import uuid
from typing import Annotated, Any, Literal
from urllib.parse import urlencode

from fastapi import APIRouter, Query, Response

from service.api.auth import Principal, RequireWriteKey
from service.api.deps import DispatcherDep, ModelCacheDep, SessionDep, SettingsDep, StoreDep
from service.api.errors import ApiError
from service.api.routes.train import IdempotencyKey, submit, submit_responses
from service.api.serving import get_run_or_404, run_not_ready
from service.db import RunRow, RunStatus
from service.db import repository as repo
from service.db.run_sort import DEFAULT_SORT, RunSort, parse_sort
from service.schemas.runs import (
    MAX_TAGS,
    MetricPoint,
    ModelName,
    Problem,
    RunList,
    RunOut,
    RunPatch,
    Tag,
    stored_request,
)

__all__ = ["router"]

router = APIRouter(tags=["runs"])

NOT_FOUND = {404: {"model": Problem, "description": "Unknown run"}}
MAX_LIMIT = 500
DEFAULT_METRICS_LIMIT = 1000
MAX_METRICS_LIMIT = 10_000


def _encode_cursor(sort: RunSort, row: RunRow) -> str:
    raw = json.dumps([sort.key, sort.order, sort.encode_value(sort.row_value(row)), row.id]).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _decode_cursor(cursor: str, sort: RunSort) -> tuple[Any, str]:
    """``(sort value, id)`` of the row a page ended on; 422 for a cursor of another sort."""
    invalid = ApiError(
        422, "invalid_cursor", "cursor is not one this API issued", errors=[("cursor", "invalid cursor")]
    )
    try:
        raw = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
        if len(raw) == 2:  # issued before sorting existed: newest first
            raw = [DEFAULT_SORT, "desc", *raw]
        key, order, value, run_id = raw
    except (binascii.Error, ValueError, TypeError, UnicodeDecodeError):
        raise invalid from None
    if (key, order) != (sort.key, sort.order):
        raise ApiError(
            422,
            "invalid_cursor",
            f"this cursor continues sort={key}&order={order}, not sort={sort.key}&order={sort.order}",
            errors=[("cursor", "follow the next link as given, or drop cursor to start over")],
        )
    try:
        return sort.decode_value(value), str(uuid.UUID(run_id))
    except (ValueError, TypeError, AttributeError):
        raise invalid from None


@router.get("/runs", response_model=RunList, responses={422: {"model": Problem}})
def list_runs(
    session: SessionDep,
    status: RunStatus | None = None,
    model: ModelName | None = None,
    dataset: Annotated[str | None, Query(max_length=200, description="Dataset name or id.")] = None,
    sweep_id: Annotated[uuid.UUID | None, Query()] = None,
    name: Annotated[
        str | None, Query(max_length=200, description="Case-insensitive substring of the run's name.")
    ] = None,
    tag: Annotated[
        list[Tag], Query(max_length=MAX_TAGS, description="Repeatable: runs carrying every tag given.")
    ] = [],  # noqa: B006 (FastAPI copies the default)
    sort: Annotated[
        str | None,
        Query(
            max_length=100,
            description="A column (created_at, updated_at, started_at, finished_at, name, status, "
            "model, dataset, wall_s, iteration, attempt), metrics.<key> (e.g. metrics.test_nll) or a "
            "setting (solver.rtol, training.iterations, model_config.<field>, dataset.n_train). "
            "Runs without the value come last in both orders. Default created_at.",
            examples=["metrics.test_nll"],
        ),
    ] = None,
    order: Annotated[
        Literal["asc", "desc"] | None,
        Query(description="Default: desc for times (newest first), asc for everything else."),
    ] = None,
    limit: Annotated[int, Query(ge=1, le=MAX_LIMIT)] = 50,
    cursor: Annotated[str | None, Query(max_length=600)] = None,
) -> RunList:
    """Runs, newest first unless ``sort`` says otherwise. Follow ``next`` for the following page."""
    parsed = parse_sort(sort, order)
    filters = {
        "status": status.value if status else None,
        "model": model.value if model else None,
        "dataset": dataset,
        "sweep_id": str(sweep_id) if sweep_id else None,
        "name": name or None,
    }
    after = _decode_cursor(cursor, parsed) if cursor else None
    rows = repo.list_runs(session, limit=limit + 1, tags=tag, sort=parsed, after=after, **filters)
    next_link = None
    if len(rows) > limit:
        rows = rows[:limit]
        query: dict[str, Any] = {k: v for k, v in filters.items() if v is not None}
        query |= {"tag": list(tag)} if tag else {}
        query |= {"sort": parsed.key, "order": parsed.order} if sort or order else {}
        query |= {"limit": limit, "cursor": _encode_cursor(parsed, rows[-1])}
        next_link = f"/runs?{urlencode(query, doseq=True)}"
    return RunList(items=[RunOut.from_row(r) for r in rows], next=next_link)


@router.get("/runs/{run_id}", response_model=RunOut, responses=NOT_FOUND)
def get_run(run_id: uuid.UUID, session: SessionDep) -> RunOut:
    """The run resource, with progress (fraction, ETA) and metrics."""
    return RunOut.from_row(get_run_or_404(session, run_id))


@router.patch(
    "/runs/{run_id}",
    response_model=RunOut,
    responses={**NOT_FOUND, 422: {"model": Problem, "description": "Invalid name or tags"}},
)
def patch_run(run_id: uuid.UUID, body: RunPatch, session: SessionDep, _: RequireWriteKey) -> RunOut:
    """Change a run's ``name`` and/or ``tags`` (the rest of a run is fixed once it is created)."""
    row = repo.update_labels(session, str(run_id), **body.changes())
    if row is None:
        raise ApiError(
            404, "run_not_found", f"no run with id {run_id}", errors=[("run_id", "unknown run id")]
        )
    return RunOut.from_row(row)


RETRYABLE = (RunStatus.failed.value, RunStatus.canceled.value)


@router.post(
    "/runs/{run_id}/retry",
    status_code=202,
    response_model=RunOut,
    responses={
        **NOT_FOUND,
        **submit_responses(
            "The stored request no longer validates",
            conflict="Run not failed or canceled, or Idempotency-Key reused",
        ),
    },
)
def retry_run(
    run_id: uuid.UUID,
    response: Response,
    session: SessionDep,
    dispatcher: DispatcherDep,
    settings: SettingsDep,
    principal: Principal,
    idempotency_key: IdempotencyKey = None,
) -> RunOut:
    """Start a new run with the request of a ``failed`` or ``canceled`` one (``retry_of`` names it).

    It goes through ``POST /train``'s checks and queueing; the old run stays as it is."""
    old = get_run_or_404(session, run_id)
    if old.status not in RETRYABLE:
        raise run_not_ready(
            old,
            "only failed or canceled runs can be retried",
            slug="run_not_retryable",
            hint="retry needs failed or canceled",
        )
    request = stored_request(old)
    return submit(
        session, dispatcher, settings, request, response, principal, idempotency_key, retry_of=old.id
    )


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
