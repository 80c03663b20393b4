"""``POST /runs/compare`` (settings that differ, metrics) and ``GET /runs/compare/curves.png``.

Both take 2 to ``MAX_COMPARE_RUNS`` distinct run ids and answer in the order given; an unknown id
is a 404 naming it. They only read, so they need a key only where reads do (``RequireReadKey``).
"""

from __future__ import annotations

import uuid
from collections import Counter
from collections.abc import Sequence
from typing import Annotated

from fastapi import APIRouter, Query, Response
from sqlalchemy import select
from sqlalchemy.orm import Session

from service.api.deps import SessionDep
from service.api.errors import ApiError
from service.api.routes.plots import PngResponse, run_history
from service.db import RunRow, RunStatus
from service.plots import losses_png
from service.schemas.compare import MAX_COMPARE_RUNS, CompareOut, CompareRequest, check_run_ids
from service.schemas.runs import Problem

__all__ = ["router"]

router = APIRouter(tags=["runs"])

ERRORS = {
    404: {"model": Problem, "description": "A run id is unknown (the problem names it)"},
    422: {"model": Problem, "description": "Fewer than 2 or more than 20 ids, or an id listed twice"},
}


def _rows(session: Session, run_ids: Sequence[uuid.UUID]) -> list[RunRow]:
    """The runs in the order of ``run_ids``; 404 naming the first unknown one."""
    ids = [str(run_id) for run_id in run_ids]
    found = {row.id: row for row in session.scalars(select(RunRow).where(RunRow.id.in_(ids)))}
    for index, run_id in enumerate(ids):
        if run_id not in found:
            raise ApiError(
                404,
                "run_not_found",
                f"no run with id {run_id}",
                errors=[(f"run_ids.{index}", f"unknown run id {run_id}; see GET /runs")],
            )
    return [found[run_id] for run_id in ids]


@router.post("/runs/compare", response_model=CompareOut, responses=ERRORS)
def compare_runs(body: CompareRequest, session: SessionDep) -> CompareOut:
    """The runs side by side: the settings in which they differ, every metric, a link to their curves."""
    return CompareOut.from_rows(_rows(session, body.run_ids))


def _parse_ids(text: str) -> list[uuid.UUID]:
    parts = [part.strip() for part in text.split(",") if part.strip()]
    try:
        ids = [uuid.UUID(part) for part in parts]
    except ValueError:
        bad = next(p for p in parts if not _is_uuid(p))
        raise ApiError(
            422,
            "validation_error",
            f"run_ids holds {bad!r}, which is not a run id",
            errors=[("run_ids", "give run ids (UUIDs) separated by commas")],
        ) from None
    if not 2 <= len(ids) <= MAX_COMPARE_RUNS:
        raise ApiError(
            422,
            "validation_error",
            f"run_ids holds {len(ids)} ids; compare 2 to {MAX_COMPARE_RUNS} runs",
            errors=[("run_ids", f"give 2 to {MAX_COMPARE_RUNS} run ids separated by commas")],
        )
    try:
        return check_run_ids(ids)
    except ValueError as exc:
        raise ApiError(422, "validation_error", str(exc), errors=[("run_ids", str(exc))]) from None


def _is_uuid(text: str) -> bool:
    try:
        uuid.UUID(text)
    except ValueError:
        return False
    return True


def _labels(rows: Sequence[RunRow]) -> list[str]:
    """Legend labels: the run's name, with its id's start where names repeat; the id's start alone
    for unnamed runs."""
    names = Counter(row.name for row in rows if row.name)
    return [
        row.name if row.name and names[row.name] == 1 else " ".join(filter(None, [row.name, row.id[:8]]))
        for row in rows
    ]


@router.get(
    "/runs/compare/curves.png",
    response_class=PngResponse,
    responses={200: {"content": {"image/png": {}}, "description": "The figure (image/png)"}, **ERRORS},
)
def compare_curves(
    session: SessionDep,
    run_ids: Annotated[
        str,
        Query(
            max_length=40 * MAX_COMPARE_RUNS,
            description=f"2 to {MAX_COMPARE_RUNS} distinct run ids separated by commas.",
        ),
    ],
) -> Response:
    """The runs' train loss overlaid against iteration and wall time, test NLL records as points;
    the legend names each run. Redrawn on every request (runs may still be training)."""
    rows = _rows(session, _parse_ids(run_ids))
    curves = [(label, run_history(session, row.id)) for label, row in zip(_labels(rows), rows, strict=True)]
    done = all(RunStatus(row.status).terminal for row in rows)
    return PngResponse(losses_png(curves), headers={} if done else {"Cache-Control": "no-store"})
