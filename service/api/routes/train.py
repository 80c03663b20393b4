"""``POST /train``: validate a training request, record a queued run, hand its id to the queue."""

from __future__ import annotations

import hashlib
import json
import logging
import uuid
from typing import Annotated, Any

from fastapi import APIRouter, Header, Response
from sqlalchemy.orm import Session

from service.api.auth import RequireWriteKey
from service.api.deps import DispatcherDep, SessionDep
from service.api.errors import ApiError
from service.db import repository as repo
from service.ml.errors import ConfigError
from service.ml.models import MODELS, parse_model_config
from service.schemas.runs import BUILTIN_DATASETS, Problem, RunOut, TrainRequest

__all__ = ["router", "run_fields"]

log = logging.getLogger(__name__)

router = APIRouter(tags=["runs"])


def _dataset(session: Session, request: TrainRequest) -> tuple[dict[str, Any], str, str | None]:
    """(stored dataset reference, its kind, uploaded dataset id or None)."""
    ref = request.dataset
    if ref.id is not None:
        row = repo.get_dataset(session, str(ref.id))
        if row is None:
            raise ApiError(
                422,
                "unknown_dataset",
                f"no uploaded dataset with id {ref.id}",
                errors=[("dataset.id", "unknown dataset id; see GET /datasets")],
            )
        return {"id": row.id, "name": row.name}, row.kind, row.id
    name = ref.name.value  # type: ignore[union-attr]
    stored: dict[str, Any] = {"name": name}
    stored |= {k: v for k, v in (("n_train", ref.n_train), ("n_test", ref.n_test)) if v is not None}
    return stored, BUILTIN_DATASETS[name][0], None


def _request_digest(request: TrainRequest) -> str:
    text = json.dumps(request.model_dump(mode="json", by_alias=True), sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()


def run_fields(session: Session, request: TrainRequest) -> dict[str, Any]:
    """Validate ``request`` beyond its schema and return the ``runs`` row fields of a new run.

    Shared by ``POST /train`` and ``POST /sweeps`` (one run per grid combination).

    Raises:
        ConfigError: invalid model config, or a dataset of the wrong kind for the model.
        ApiError: 422 for an unknown uploaded dataset id.
    """
    model_name = request.model.value
    model_config = parse_model_config(model_name, request.model_params)
    dataset, kind, dataset_id = _dataset(session, request)
    wanted = MODELS[model_name].data_kind
    if kind != wanted:
        compatible = sorted(n for n, (k, _, _) in BUILTIN_DATASETS.items() if k == wanted)
        raise ConfigError(
            f"model {model_name} trains on {wanted} data but dataset {dataset['name']!r} holds {kind}",
            value=dataset["name"],
            fix=f"use a {wanted} dataset, e.g. one of: {', '.join(compatible)}",
            field="dataset",
        )
    return {
        "id": str(uuid.uuid4()),
        "name": request.name,
        "model": model_name,
        "dataset": dataset,
        "dataset_name": dataset["name"],
        "dataset_id": dataset_id,
        "model_config": model_config.model_dump(mode="json"),
        "solver": request.resolved_solver().model_dump(mode="json"),
        "training": request.training.model_dump(mode="json"),
        "total": request.training.iterations,
        "request_sha256": _request_digest(request),
    }


@router.post(
    "/train",
    status_code=202,
    response_model=RunOut,
    responses={
        409: {"model": Problem, "description": "Idempotency-Key reused with another body"},
        422: {"model": Problem, "description": "Invalid request"},
    },
)
def train(
    request: TrainRequest,
    response: Response,
    session: SessionDep,
    dispatcher: DispatcherDep,
    _: RequireWriteKey,
    idempotency_key: Annotated[str | None, Header(max_length=200)] = None,
) -> RunOut:
    """Queue a training run; poll ``Location`` (``GET /runs/{id}``) for its progress.

    The run is recorded before it is published, so it is accepted even while the broker is down: it
    stays ``queued`` and the workers' reconciler publishes it once the broker is back.
    """
    fields = run_fields(session, request)
    try:
        row, created = repo.create_run(session, **fields, idempotency_key=idempotency_key)
    except repo.IdempotencyConflict as exc:
        raise ApiError(
            409,
            "idempotency_conflict",
            f"Idempotency-Key was already used for run {exc.run.id} with a different request",
            errors=[("Idempotency-Key", "reuse a key only to retry the identical request")],
        ) from None
    response.headers["Location"] = f"/runs/{row.id}"
    if created:
        _enqueue(session, dispatcher, row.id)
    else:
        response.headers["Idempotent-Replayed"] = "true"
    return RunOut.from_row(row)


def _enqueue(session: Session, dispatcher: Any, run_id: str) -> None:
    """Publish the run; when the broker is down it stays ``queued`` in the database (the source of
    truth) and the reconciler publishes it after ``ODESERVE_QUEUED_GRACE_S`` (see service.jobs.reconcile)."""
    try:
        dispatcher.enqueue(run_id)
    except Exception as exc:
        log.warning("run=%s accepted but not published (broker down?): %s; the reconciler will", run_id, exc)
