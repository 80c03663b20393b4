"""Sweeps: ``POST /sweeps`` (one ordinary run per grid combination), read, list, cancel, chart.

Every combination goes through the same validation as ``POST /train`` (``TrainRequest`` and
``run_fields``) before anything is stored; then the sweep and all its runs are inserted in one
transaction and each run id is published like a ``/train`` run (with the broker down the runs stay
``queued`` and the workers' reconciler publishes them). Errors name the field: ``grid.<path>``
for a bad grid path or value, ``base.<field>`` for a bad base request.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import uuid
from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Query, Response
from pydantic import ValidationError
from sqlalchemy.orm import Session

from service.api.auth import Principal, RequireWriteKey
from service.api.deps import DispatcherDep, SessionDep, SettingsDep, StoreDep
from service.api.errors import ApiError, validation_errors
from service.api.routes.plots import PngResponse
from service.api.routes.train import IdempotencyKey, request_digest, run_fields, scoped_key, submit_responses
from service.db import sweeps_repository as sweeps
from service.db.models import SweepRow
from service.jobs.sweeps import expand_grid
from service.ml.errors import OdeServeError, UnknownNameError
from service.plots import sweep_png
from service.schemas.runs import BUILTIN_DATASETS, Problem, TrainRequest
from service.schemas.sweeps import SweepList, SweepOut, SweepRequest, SweepSummary

__all__ = ["router"]

log = logging.getLogger(__name__)

router = APIRouter(tags=["sweeps"])

NOT_FOUND = {404: {"model": Problem, "description": "Unknown sweep"}}
MAX_LIMIT = 100
PNG = {200: {"content": {"image/png": {}}, "description": "The chart (image/png)"}}


def _sweep_or_404(session: Session, sweep_id: uuid.UUID) -> SweepRow:
    row = sweeps.get_sweep(session, str(sweep_id))
    if row is None:
        raise ApiError(
            404, "sweep_not_found", f"no sweep with id {sweep_id}", errors=[("sweep_id", "unknown sweep id")]
        )
    return row


def _field(loc: str, combo: dict[str, Any]) -> str:
    """``grid.<path>`` when ``loc`` (a request path) is set by the grid, else ``base.<loc>``."""
    for path in combo:
        section = "dataset" if path == "dataset.name" else path  # a grid name replaces the whole ref
        if loc == section or loc.startswith(f"{section}."):
            return f"grid.{path}"
    return f"base.{loc}"


def _combination(
    session: Session, request: dict[str, Any], combo: dict[str, Any], memory_budget: int
) -> dict[str, Any]:
    """Validate one combination like ``POST /train``; returns its run fields (errors name the field)."""
    try:
        parsed = TrainRequest.model_validate(request)
    except ValidationError as exc:
        errors = [(_field(f, combo), m) for f, m in validation_errors(exc.errors())]
        raise ApiError(
            422, "validation_error", f"invalid sweep combination {combo}: {errors[0][1]}", errors=errors
        ) from None
    try:
        return run_fields(session, parsed, memory_budget)
    except OdeServeError as exc:
        exc.field = _field(exc.field or "body", combo)
        raise
    except ApiError as exc:
        exc.errors = [(_field(f, combo), m) for f, m in exc.errors]
        raise


def _label(name: str | None, combo: dict[str, Any]) -> str:
    values = ", ".join(f"{k}={json.dumps(v)}" for k, v in combo.items())
    return f"{name or 'sweep'}: {values}"[:200]


@router.post(
    "/sweeps",
    status_code=202,
    response_model=SweepOut,
    responses=submit_responses("Invalid base request or grid (the field is named)"),
)
def create_sweep(
    body: SweepRequest,
    response: Response,
    session: SessionDep,
    dispatcher: DispatcherDep,
    settings: SettingsDep,
    principal: Principal,
    idempotency_key: IdempotencyKey = None,
) -> SweepOut:
    """Create one run per grid combination and queue them; poll ``Location`` for the table.

    ``Idempotency-Key`` works as on ``POST /train``: the same key and body return the first sweep
    (``Idempotent-Replayed: true``) without queueing anything again; another body is a 409."""
    scoped = None if idempotency_key is None else scoped_key(principal, idempotency_key)
    digest = request_digest(body)
    if scoped is not None and (existing := sweeps.get_sweep_by_idempotency_key(session, scoped)):
        return _replayed(session, existing, digest, response)
    base = body.base.model_dump(mode="json", by_alias=True, exclude_unset=True)
    try:
        combos = expand_grid(base, body.grid, datasets=list(BUILTIN_DATASETS))
    except UnknownNameError as exc:  # the base model is an enum already: this is a grid dataset
        exc.field = "grid.dataset.name"
        raise
    sweep_id = str(uuid.uuid4())
    runs = []
    for index, (request, combo) in enumerate(combos):
        fields = _combination(session, request, combo, settings.train_memory_bytes)
        fields |= {"name": _label(body.name, combo), "sweep_id": sweep_id, "sweep_index": index}
        runs.append(fields | {"sweep_values": combo})
    sweep = {
        "id": sweep_id,
        "name": body.name,
        "model": base["model"],
        "base": base,
        "grid": body.grid,
        "grid_keys": list(body.grid),
        "run_count": len(runs),
        "idempotency_key": scoped,
        "request_sha256": digest,
    }
    row, created = sweeps.create_sweep(session, sweep, runs)
    if not created:  # a concurrent request with the same key won
        return _replayed(session, row, digest, response)
    for fields in runs:
        try:
            dispatcher.enqueue(fields["id"], fields["device_request"])
        except Exception as exc:  # like POST /train: stays queued, the reconciler publishes it later
            log.warning("sweep=%s run=%s accepted but not published: %s", sweep_id, fields["id"], exc)
    log.info("sweep=%s queued %d runs", sweep_id, len(runs))
    response.headers["Location"] = f"/sweeps/{sweep_id}"
    row = sweeps.get_sweep(session, sweep_id)
    assert row is not None
    return SweepOut.from_rows(row, sweeps.sweep_runs(session, sweep_id))


def _replayed(session: Session, row: SweepRow, digest: str, response: Response) -> SweepOut:
    """The sweep an ``Idempotency-Key`` already made, when the body is the same; else 409."""
    if row.request_sha256 != digest:
        raise ApiError(
            409,
            "idempotency_conflict",
            f"Idempotency-Key was already used for sweep {row.id} with a different request",
            errors=[("Idempotency-Key", "reuse a key only to retry the identical request")],
        )
    response.headers["Location"] = f"/sweeps/{row.id}"
    response.headers["Idempotent-Replayed"] = "true"
    return SweepOut.from_rows(row, sweeps.sweep_runs(session, row.id))


def _encode_cursor(row: SweepRow) -> str:
    raw = json.dumps([row.created_at.isoformat(), row.id]).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _decode_cursor(cursor: str) -> tuple[datetime, str]:
    try:
        created, sweep_id = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
        return datetime.fromisoformat(created), str(uuid.UUID(sweep_id))
    except (binascii.Error, ValueError, TypeError, UnicodeDecodeError):
        raise ApiError(
            422, "invalid_cursor", "cursor is not one this API issued", errors=[("cursor", "invalid cursor")]
        ) from None


@router.get("/sweeps", response_model=SweepList, responses={422: {"model": Problem}})
def list_sweeps(
    session: SessionDep,
    limit: Annotated[int, Query(ge=1, le=MAX_LIMIT)] = 20,
    cursor: Annotated[str | None, Query(max_length=400)] = None,
) -> SweepList:
    """Sweeps, newest first, with derived status and run counts. Follow ``next`` for more."""
    rows = sweeps.list_sweeps(session, limit=limit + 1, after=_decode_cursor(cursor) if cursor else None)
    next_link = None
    if len(rows) > limit:
        rows = rows[:limit]
        next_link = f"/sweeps?limit={limit}&cursor={_encode_cursor(rows[-1])}"
    members = sweeps.runs_by_sweep(session, [row.id for row in rows])
    return SweepList(items=[SweepSummary.from_rows(r, members[r.id]) for r in rows], next=next_link)


@router.get("/sweeps/{sweep_id}", response_model=SweepOut, responses=NOT_FOUND)
def get_sweep(sweep_id: uuid.UUID, session: SessionDep) -> SweepOut:
    """Status derived from the runs, the runs in grid order and a comparison table."""
    row = _sweep_or_404(session, sweep_id)
    return SweepOut.from_rows(row, sweeps.sweep_runs(session, row.id))


@router.post("/sweeps/{sweep_id}/cancel", status_code=202, response_model=SweepOut, responses=NOT_FOUND)
def cancel_sweep(sweep_id: uuid.UUID, session: SessionDep, _: RequireWriteKey) -> SweepOut:
    """Cancel the runs not yet finished: queued ones at once, running ones at their next iteration."""
    _sweep_or_404(session, sweep_id)
    row = sweeps.cancel_sweep(session, str(sweep_id))
    if row is None:
        raise ApiError(404, "sweep_not_found", f"no sweep with id {sweep_id}")
    return SweepOut.from_rows(row, sweeps.sweep_runs(session, row.id))


@router.get(
    "/sweeps/{sweep_id}/plot.png",
    response_class=PngResponse,
    responses={**PNG, **NOT_FOUND, 409: {"model": Problem, "description": "The sweep has no runs"}},
)
def sweep_plot(sweep_id: uuid.UUID, session: SessionDep, store: StoreDep) -> Response:
    """Wall clock and test NLL against the first grid path, one line per other combination.

    The NLL panel draws ``test_nll`` (own solver) solid and ``test_nll_tight`` (1e-8) dashed.
    Drawn from the runs finished so far (unfinished runs leave gaps); cached once every run is done.
    """
    row = _sweep_or_404(session, sweep_id)
    sweep = SweepOut.from_rows(row, sweeps.sweep_runs(session, row.id))
    rows = [{k: v for k, v in r.items() if k != "run_id"} for r in sweep.table]
    if not rows:
        raise ApiError(409, "sweep_empty", f"sweep {row.id} has no runs left to chart")

    def make() -> bytes:
        return sweep_png(rows, sweep.grid_keys[0])

    if sweep.status in ("queued", "running"):
        return PngResponse(make(), headers={"Cache-Control": "no-store"})
    key = store.sweep_plot_key(row.id, json.dumps(rows, sort_keys=True, default=str))
    return PngResponse(store.cached(key, make))
