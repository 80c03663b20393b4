"""Shared steps of the query routes: find a run, check it can serve, run the model under its lock.

Point densities and samples go through the entry's batcher (``service.serving.batching``): concurrent
density requests on one model share a solve. Succeeded runs are remembered briefly by the model
cache, so a query on a hot run costs no database round trip.
"""

from __future__ import annotations

import uuid
from collections.abc import Hashable, Iterator
from contextlib import contextmanager

from pydantic import BaseModel
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool
from starlette.responses import Response
from torch import Tensor

from service.api.errors import ApiError
from service.db import RunRow, RunStatus, SessionFactory
from service.db import repository as repo
from service.ml.errors import DataError, SolverError
from service.ml.models import MODELS
from service.schemas.json_values import json_floats
from service.serving.batching import BatchTimeout
from service.serving.model_cache import CachedModel, ModelCache, ServedRun

__all__ = [
    "confirmed_run",
    "get_run_or_404",
    "loaded_model",
    "model_busy",
    "run_not_ready",
    "log_density_async",
    "model_json",
    "model_points",
    "sample_async",
    "served_model",
    "served_model_async",
]


def get_run_or_404(session: Session, run_id: uuid.UUID, field: str = "run_id") -> RunRow:
    row = repo.get_run(session, str(run_id))
    if row is None:
        raise ApiError(404, "run_not_found", f"no run with id {run_id}", errors=[(field, "unknown run id")])
    return row


_QUERIES = {
    "points": "GET/POST /density with points, GET /sample",
    "series": "POST /predict, POST /density with series, GET /sample with t",
}


def served_model(
    session: Session, cache: ModelCache, run_id: uuid.UUID, kind: str | None = "points"
) -> tuple[ServedRun, CachedModel]:
    """The loaded model of a succeeded run (404 unknown, 409 not succeeded).

    ``kind``: the data kind the endpoint serves ("points" or "series"; None: any); another -> 422.
    """
    row = cache.recall(str(run_id)) or _succeeded_run(session, cache, run_id)
    _check_kind(row, kind)
    return row, cache.get(row.id, row.checkpoint_sha256)


def _check_kind(row: ServedRun, kind: str | None) -> None:
    has = MODELS[row.model].data_kind
    if kind is not None and has != kind:
        raise ApiError(
            422,
            "wrong_model_kind",
            f"run {row.id} is a {row.model} model of {has} data; this endpoint serves models of {kind} "
            f"data ({', '.join(n for n, m in MODELS.items() if m.data_kind == kind)})",
            errors=[("run_id", f"{row.model} runs are queried with {_QUERIES.get(has, 'other routes')}")],
        )


def run_not_ready(
    row: RunRow, need: str, *, slug: str = "run_not_ready", hint: str | None = None
) -> ApiError:
    """409 for a run in the wrong status for the request (default slug ``run_not_ready``).

    ``need`` ends the detail, saying what would answer; ``hint``, if given, ends the ``run_id``
    field's message. The problem carries ``run_status``.
    """
    message = f"run status is {row.status}" if hint is None else f"run status is {row.status}; {hint}"
    return ApiError(
        409,
        slug,
        f"run {row.id} is {row.status}; {need}",
        errors=[("run_id", message)],
        extra={"run_status": row.status},
    )


def _succeeded_run(session: Session, cache: ModelCache, run_id: uuid.UUID) -> ServedRun:
    """The run's row from the database; 409 unless it succeeded (then the cache remembers it)."""
    row = get_run_or_404(session, run_id)
    run = _served(row)
    if run is None:
        raise run_not_ready(row, "densities and samples need a succeeded run")
    cache.remember(run)
    return run


def _served(row: RunRow) -> ServedRun | None:
    if row.status != RunStatus.succeeded or not row.checkpoint_sha256:
        return None
    return ServedRun(id=row.id, model=row.model, status=row.status, checkpoint_sha256=row.checkpoint_sha256)


def confirmed_run(sessions: SessionFactory, run_id: str) -> ServedRun | None:
    """The run as it serves now (None: deleted or not succeeded); the model cache's ``confirm``."""
    with sessions() as session:
        row = repo.get_run(session, run_id)
        return None if row is None else _served(row)


def model_points(entry: CachedModel, points: Tensor, field: str) -> Tensor:
    """``points`` in the model's dtype; 422 naming ``field`` when ``D`` is not the model's."""
    dim = entry.model.dim
    if points.shape[1] != dim:
        raise DataError(
            f"points have {points.shape[1]} coordinates but this run's model is {dim}-dimensional",
            value=int(points.shape[1]),
            fix=f"give exactly {dim} coordinates per point (expected dim {dim})",
            field=field,
        )
    return points.to(entry.dtype)


# The event-loop side of the point routes: a remembered run whose model is loaded is served with no
# threadpool round trip (each costs a thread handoff both ways); anything else runs in the pool.


async def served_model_async(
    sessions: SessionFactory, cache: ModelCache, run_id: uuid.UUID, kind: str | None = "points"
) -> tuple[ServedRun, CachedModel]:
    """``served_model`` without the threadpool when the run is remembered and its model loaded."""
    hot = loaded_model(cache, str(run_id))
    if hot is None:
        return await run_in_threadpool(_served_model_in_session, sessions, cache, run_id, kind)
    _check_kind(hot[0], kind)
    return hot


def loaded_model(cache: ModelCache, run_id: str) -> tuple[ServedRun, CachedModel] | None:
    """The remembered succeeded run and its model if both are in memory (no I/O: safe on the loop)."""
    run = cache.recall(run_id)
    entry = cache.loaded(run.id, run.checkpoint_sha256) if run is not None else None
    return None if run is None or entry is None else (run, entry)


def _served_model_in_session(
    sessions: SessionFactory, cache: ModelCache, run_id: uuid.UUID, kind: str | None
) -> tuple[ServedRun, CachedModel]:
    with sessions() as session:
        return served_model(session, cache, run_id, kind)


async def log_density_async(
    entry: CachedModel, points: Tensor, field: str, client: Hashable | None = None
) -> list[float | None]:
    """``log_density`` awaiting the batcher on the event loop; ``client``: the caller's connection."""
    with _busy_as_503(field):
        values = await entry.batcher.log_prob_async(model_points(entry, points, field), client)
    return json_floats(values)


async def sample_async(entry: CachedModel, n: int, seed: int) -> list[list[float | None]]:
    """``sample`` awaiting the batcher on the event loop."""
    with _busy_as_503("n"):
        samples = await entry.batcher.sample_async(n, seed)
    return json_floats(samples)


@contextmanager
def _busy_as_503(field: str) -> Iterator[None]:
    """A batcher timeout -> 503; the serving step budget running out -> 422 saying whose it is."""
    try:
        yield
    except BatchTimeout as exc:
        raise model_busy(exc) from None
    except SolverError as exc:
        if exc.field != "solver.max_num_steps":
            raise
        raise ApiError(
            422,
            "solver_error",
            f"this query needs more than {exc.value} solver steps, the serving step budget "
            "(ODESERVE_SERVE_MAX_NUM_STEPS, or the run's own max_num_steps if lower)",
            errors=[(field, "query points nearer the training data, or ask the operator to raise it")],
        ) from None


def model_busy(exc: BatchTimeout) -> ApiError:
    """503 ``model_busy`` with ``Retry-After``: the batcher did not answer within its timeout."""
    busy = [("run_id", "the model is busy; try again shortly")]
    return ApiError(503, "model_busy", str(exc), errors=busy, headers={"Retry-After": "1"})


def model_json(body: BaseModel) -> Response:
    """``body`` serialised by its own model, as the route's ``response_model`` would.

    FastAPI would validate the value the route built again before serialising it; for 1000
    samples that is about 1.5 ms on the event loop. Routes return this for bodies they build
    from model outputs (the OpenAPI schema still comes from ``response_model``).
    """
    return Response(body.model_dump_json(), media_type="application/json")
