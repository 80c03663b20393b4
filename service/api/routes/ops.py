"""Operations: ``/livez``, ``/readyz`` (database and broker checked separately), ``/metrics``."""

from __future__ import annotations

import logging

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from sqlalchemy import text

from service.api.deps import DispatcherDep, SessionDep
from service.db import repository as repo
from service.schemas.runs import Readiness

__all__ = ["router"]

log = logging.getLogger(__name__)

router = APIRouter(tags=["operations"])


@router.get("/livez")
def livez() -> dict[str, str]:
    """The process is up."""
    return {"status": "ok"}


@router.get("/readyz", response_model=Readiness, responses={503: {"model": Readiness}})
def readyz(session: SessionDep, dispatcher: DispatcherDep) -> JSONResponse:
    """200 when the database and the broker both answer; 503 naming the one that does not."""
    checks = {}
    try:
        session.execute(text("SELECT 1"))
        checks["database"] = "ok"
    except Exception as exc:
        log.warning("readiness: database unavailable: %s", exc)
        checks["database"] = f"unavailable: {type(exc).__name__}"
    try:
        dispatcher.ping()
        checks["broker"] = "ok"
    except Exception as exc:
        log.warning("readiness: broker unavailable: %s", exc)
        checks["broker"] = f"unavailable: {type(exc).__name__}"
    ready = all(v == "ok" for v in checks.values())
    body = Readiness(status="ready" if ready else "unavailable", checks=checks)
    return JSONResponse(body.model_dump(), status_code=200 if ready else 503)


@router.get("/metrics", response_class=Response, responses={200: {"content": {"text/plain": {}}}})
def metrics(request: Request, session: SessionDep) -> Response:
    """Prometheus exposition: request latency histogram and runs by status."""
    telemetry = request.app.state.telemetry
    telemetry.set_run_counts(repo.count_by_status(session))
    return Response(generate_latest(telemetry.registry), media_type=CONTENT_TYPE_LATEST)
