"""Live progress of a run: ``GET /runs/{id}/events`` as Server-Sent Events (``text/event-stream``).

The stream is built from what the worker already writes to the database: every
``ODESERVE_EVENTS_POLL_S`` the route reads the run's row and its new metric rows in the threadpool
(a session per poll, closed before the next sleep: no connection is held while waiting) and sends

- ``progress``: ``{"iteration", "total", "fraction", "eta_s"}`` whenever the counters change;
- ``metrics``: ``{"points": [MetricPoint, ...], "summary": {...}}`` with the new per-iteration rows
  (the run's ``metrics`` object as ``summary``); its ``id:`` is the newest iteration sent;
- ``status``: ``{"status", "error"}`` whenever the status changes, after the other two of the same
  poll (a client may close at a terminal status: it has the final progress and metrics).

A connection first gets ``retry:`` and a snapshot of all three (``metrics`` holds the newest point,
or with ``Last-Event-ID: <iteration>`` every point after that iteration, at most 1000). A comment
line keeps an idle stream alive every ``ODESERVE_EVENTS_HEARTBEAT_S``. The stream ends after it has
sent a terminal status (succeeded, failed, canceled), when the run is deleted (a ``: run deleted``
comment) or after ``ODESERVE_EVENTS_MAX_S``; EventSource then reconnects on its own with
``Last-Event-ID``, and a finished run answers with its final snapshot and ends.

Authentication: EventSource cannot send headers, so when reads are protected this route also takes
the key as ``?api_key=`` (the ``Authorization`` header still works). Only this route reads it.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from dataclasses import dataclass, field
from typing import Annotated, Any

from anyio import to_thread
from fastapi import APIRouter, Depends, Header, Query, Request
from fastapi.responses import StreamingResponse
from fastapi.security import HTTPAuthorizationCredentials
from sqlalchemy import select

from service.api.auth import Credentials, require_read_key
from service.api.errors import ApiError
from service.config import Settings
from service.db import RunMetricRow, RunStatus, SessionFactory
from service.db import repository as repo
from service.schemas.runs import MetricPoint, Problem, RunOut

__all__ = ["MAX_BACKLOG", "router"]

router = APIRouter(tags=["runs"])

MAX_BACKLOG = 1000
"""Most metric points one poll sends (a reconnect far behind catches up over several polls)."""
RETRY_MS = 2000


async def read_key_header_or_query(
    request: Request,
    credentials: Credentials,
    api_key: Annotated[
        str | None,
        Query(
            max_length=500,
            description="API key for EventSource clients, which cannot send headers "
            "(only needed when reads are protected).",
        ),
    ] = None,
) -> None:
    if credentials is None and api_key:
        credentials = HTTPAuthorizationCredentials(scheme="Bearer", credentials=api_key)
    await require_read_key(request, credentials)


@dataclass
class _Poll:
    """One read of a run: its API resource and the metric rows after the cursor."""

    run: RunOut
    points: list[dict[str, Any]] = field(default_factory=list)


def _poll(sessions: SessionFactory, run_id: str, after: int | None) -> _Poll | None:
    """Read the run and its metric points after ``after`` (``None``: the newest one only)."""
    with sessions() as session:
        row = repo.get_run(session, run_id)
        if row is None:
            return None
        if after is None:
            query = select(RunMetricRow).where(RunMetricRow.run_id == run_id)
            rows = list(session.scalars(query.order_by(RunMetricRow.iteration.desc()).limit(1)))
        else:
            rows = repo.run_metrics(session, run_id, limit=MAX_BACKLOG, after=after)
        return _Poll(RunOut.from_row(row), [MetricPoint.from_row(r).model_dump() for r in rows])


def _event(name: str, data: Any, event_id: int | None = None) -> str:
    head = f"id: {event_id}\n" if event_id is not None else ""
    return f"{head}event: {name}\ndata: {json.dumps(data, separators=(',', ':'), allow_nan=False)}\n\n"


class _Stream:
    """What this connection has sent so far, and the next events to send."""

    def __init__(self, after: int | None) -> None:
        self.after = after
        self.status: str | None = None
        self.progress: dict[str, Any] | None = None
        self.summary: dict[str, Any] | None = None

    def events(self, poll: _Poll) -> list[str]:
        run, out = poll.run, []
        progress = run.progress.model_dump()
        if progress != self.progress:
            self.progress = progress
            out.append(_event("progress", progress))
        if poll.points or run.metrics != self.summary:
            if poll.points:
                self.after = int(poll.points[-1]["iteration"])
            self.summary = run.metrics
            out.append(_event("metrics", {"points": poll.points, "summary": run.metrics}, self.after))
        if run.status.value != self.status:  # last: a client may stop reading at a terminal status
            self.status = run.status.value
            error = run.error.model_dump() if run.error else None
            out.append(_event("status", {"status": self.status, "error": error}))
        return out

    @property
    def ended(self) -> bool:
        return self.status is not None and RunStatus(self.status).terminal


async def _stream(request: Request, sessions: SessionFactory, run_id: str, first: _Poll, after: int | None):
    settings: Settings = request.app.state.settings
    state = _Stream(after)
    deadline = time.monotonic() + settings.events_max_s
    yield f"retry: {RETRY_MS}\n\n"
    poll: _Poll | None = first
    last_sent = time.monotonic()
    while True:
        if poll is None:
            yield ": run deleted\n\n"
            return
        chunk = "".join(state.events(poll))
        if chunk:
            yield chunk
            last_sent = time.monotonic()
        if state.ended and len(poll.points) < MAX_BACKLOG:
            return
        now = time.monotonic()
        if now >= deadline:
            yield ": stream lifetime reached; reconnect with Last-Event-ID\n\n"
            return
        if now - last_sent >= settings.events_heartbeat_s:
            yield ": keepalive\n\n"
            last_sent = now
        await asyncio.sleep(min(settings.events_poll_s, max(deadline - now, 0.0)))
        if await request.is_disconnected():
            return
        cursor = state.after if state.after is not None else -1
        poll = await to_thread.run_sync(_poll, sessions, run_id, cursor)


def _last_event_id(value: str | None) -> int | None:
    if value is None or not value.strip():
        return None
    try:
        after = int(value.strip())
    except ValueError:
        after = -1
    if after < 0:
        raise ApiError(
            422,
            "invalid_last_event_id",
            "Last-Event-ID must be an iteration number this stream sent",
            errors=[("Last-Event-ID", "expected a non-negative integer")],
        )
    return after


@router.get(
    "/runs/{run_id}/events",
    response_class=StreamingResponse,
    dependencies=[Depends(read_key_header_or_query)],
    responses={
        200: {
            "content": {"text/event-stream": {}},
            "description": "Events status, progress and metrics; ends after a terminal status",
        },
        404: {"model": Problem, "description": "Unknown run"},
        422: {"model": Problem, "description": "Last-Event-ID is not an iteration number"},
    },
)
async def run_events(
    run_id: uuid.UUID,
    request: Request,
    last_event_id: Annotated[str | None, Header(max_length=40)] = None,
) -> StreamingResponse:
    """Server-Sent Events of one run's progress, metrics and status (see the module docs)."""
    after = _last_event_id(last_event_id)
    sessions: SessionFactory = request.app.state.session_factory
    first = await to_thread.run_sync(_poll, sessions, str(run_id), after)
    if first is None:
        raise ApiError(
            404, "run_not_found", f"no run with id {run_id}", errors=[("run_id", "unknown run id")]
        )
    headers = {"Cache-Control": "no-store", "X-Accel-Buffering": "no"}
    return StreamingResponse(
        _stream(request, sessions, str(run_id), first, after), media_type="text/event-stream", headers=headers
    )
