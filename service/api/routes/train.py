"""``POST /train``: validate a training request, record a queued run, hand its id to the queue."""

from __future__ import annotations

import hashlib
import json
import logging
import uuid
from typing import Annotated, Any

from fastapi import APIRouter, Header, Response
from pydantic import BaseModel
from sqlalchemy.orm import Session

from service.api.auth import Principal
from service.api.deps import DispatcherDep, SessionDep, SettingsDep
from service.api.errors import ApiError
from service.config import Settings
from service.db import repository as repo
from service.ml.errors import ConfigError
from service.ml.memory import check_training_memory
from service.ml.models import MODELS, parse_model_config
from service.ml.ode import SolverConfig
from service.schemas.runs import BUILTIN_DATASETS, Problem, RunOut, TrainRequest

__all__ = [
    "IDEMPOTENCY_KEY",
    "KEY_REUSED",
    "request_digest",
    "router",
    "run_fields",
    "scoped_key",
    "submit",
    "submit_responses",
]

log = logging.getLogger(__name__)

router = APIRouter(tags=["runs"])

IDEMPOTENCY_KEY = Header(
    max_length=200,
    description="Scoped to the caller's API key: the same key with the same body returns the same "
    "resource (Idempotent-Replayed: true); with another body, 409.",
)
IdempotencyKey = Annotated[str | None, IDEMPOTENCY_KEY]
KEY_REUSED = "Idempotency-Key reused with another body"


def submit_responses(invalid: str, *, conflict: str = KEY_REUSED) -> dict[int | str, dict[str, Any]]:
    """``responses=`` of a route that queues runs through ``submit`` (``POST /train``, ``/sweeps``,
    ``/runs/{id}/retry``): 409 described by ``conflict`` and 422 by ``invalid``."""
    return {409: {"model": Problem, "description": conflict}, 422: {"model": Problem, "description": invalid}}


def _dataset(session: Session, request: TrainRequest) -> tuple[dict[str, Any], str, str | None, int]:
    """(stored dataset reference, its kind, uploaded dataset id or None, its dimension)."""
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
        return {"id": row.id, "name": row.name}, row.kind, row.id, row.dim
    name = ref.name.value  # type: ignore[union-attr]
    stored: dict[str, Any] = {"name": name}
    stored |= {k: v for k, v in (("n_train", ref.n_train), ("n_test", ref.n_test)) if v is not None}
    kind, dim, _ = BUILTIN_DATASETS[name]
    return stored, kind, None, dim


def scoped_key(principal: str, idempotency_key: str) -> str:
    """What the ``runs`` row stores for an ``Idempotency-Key``: a digest of the caller's principal
    and the key, so equal keys of two API keys are two keys (64 hex; the column holds 200)."""
    return hashlib.sha256(f"{principal}\0{idempotency_key}".encode()).hexdigest()


def request_digest(body: BaseModel) -> str:
    """What an ``Idempotency-Key`` is checked against: a digest of the whole parsed request body."""
    text = json.dumps(body.model_dump(mode="json", by_alias=True), sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()


def run_fields(session: Session, request: TrainRequest, memory_budget: int | None = None) -> dict[str, Any]:
    """Validate ``request`` beyond its schema and return the ``runs`` row fields of a new run.

    Shared by ``POST /train`` and ``POST /sweeps`` (one run per grid combination).
    ``memory_budget``: bytes a training step may be estimated at (None: not checked).

    Raises:
        ConfigError: invalid model config, a dataset of the wrong kind for the model, an objective
            the model cannot train with, or a training step estimated over ``memory_budget`` (field
            ``training.batch_size``).
        ApiError: 422 for an unknown uploaded dataset id.
    """
    model_name = request.model.value
    model_config = parse_model_config(model_name, request.model_params)
    dataset, kind, dataset_id, dim = _dataset(session, request)
    wanted = MODELS[model_name].data_kind
    if kind != wanted:
        compatible = sorted(n for n, (k, _, _) in BUILTIN_DATASETS.items() if k == wanted)
        raise ConfigError(
            f"model {model_name} trains on {wanted} data but dataset {dataset['name']!r} holds {kind}",
            value=dataset["name"],
            fix=f"use a {wanted} dataset, e.g. one of: {', '.join(compatible)}",
            field="dataset",
        )
    objectives = MODELS[model_name].objectives
    if request.training.objective not in objectives:
        raise ConfigError(
            f"model {model_name} cannot train with objective {request.training.objective!r}",
            value=request.training.objective,
            fix=f"use training.objective one of: {', '.join(objectives)} (flow_matching: model ffjord)",
            field="training.objective",
        )
    solver = request.resolved_solver()
    # A flow-matching step is one net evaluation (no solve): its memory is far below the estimate.
    if memory_budget is not None and request.training.objective == "likelihood":
        _check_memory(model_name, model_config, dim, solver, request.training.batch_size, memory_budget)
    return {
        "id": str(uuid.uuid4()),
        "name": request.name,
        "model": model_name,
        "dataset": dataset,
        "dataset_name": dataset["name"],
        "dataset_id": dataset_id,
        "model_config": model_config.model_dump(mode="json"),
        "solver": solver.model_dump(mode="json"),
        "training": request.resolved_training().model_dump(mode="json"),
        "total": request.training.iterations,
        "device_request": request.device,
        "tags": list(request.tags),
        "request_sha256": request_digest(request),
    }


def _check_memory(
    model_name: str, config: BaseModel, dim: int, solver: SolverConfig, batch_size: int, budget: int
) -> None:
    """422 (``ConfigError`` on ``training.batch_size``) when a step is estimated over ``budget``."""
    cls = MODELS[model_name]
    per_item = cls.training_bytes_per_item(config, dim, solver)
    if per_item is None:
        return
    adjoint = (
        None
        if solver.adjoint
        else cls.training_bytes_per_item(config, dim, solver.model_copy(update={"adjoint": True}))
    )
    check_training_memory(per_item, batch_size, budget, adjoint_per_item=adjoint)


@router.post(
    "/train",
    status_code=202,
    response_model=RunOut,
    responses=submit_responses(
        "Invalid request, or a training step estimated over the memory budget "
        "(ODESERVE_TRAIN_MEMORY_BYTES; the problem gives the estimate and the batch size that fits)"
    ),
)
def train(
    request: TrainRequest,
    response: Response,
    session: SessionDep,
    dispatcher: DispatcherDep,
    settings: SettingsDep,
    principal: Principal,
    idempotency_key: IdempotencyKey = None,
) -> RunOut:
    """Queue a training run; poll ``Location`` (``GET /runs/{id}``) for its progress.

    The run is recorded before it is published, so it is accepted even while the broker is down: it
    stays ``queued`` and the workers' reconciler publishes it once the broker is back.
    """
    return submit(session, dispatcher, settings, request, response, principal, idempotency_key)


def submit(
    session: Session,
    dispatcher: Any,
    settings: Settings,
    request: TrainRequest,
    response: Response,
    principal: str,
    idempotency_key: str | None,
    **extra: Any,
) -> RunOut:
    """Validate ``request``, record the queued run and publish it: ``POST /train``'s path, shared
    with ``POST /runs/{id}/retry``. ``extra``: more row fields (``retry_of``), part of the digest an
    ``Idempotency-Key`` is checked against. Sets ``Location`` (and ``Idempotent-Replayed``)."""
    fields = run_fields(session, request, settings.train_memory_bytes)
    if extra:
        seed = json.dumps([fields["request_sha256"], extra], sort_keys=True)
        fields |= extra | {"request_sha256": hashlib.sha256(seed.encode()).hexdigest()}
    try:
        scoped = None if idempotency_key is None else scoped_key(principal, idempotency_key)
        row, created = repo.create_run(session, **fields, idempotency_key=scoped)
    except repo.IdempotencyConflict as exc:
        raise ApiError(
            409,
            "idempotency_conflict",
            f"Idempotency-Key was already used for run {exc.run.id} with a different request",
            errors=[("Idempotency-Key", "reuse a key only to retry the identical request")],
        ) from None
    response.headers["Location"] = f"/runs/{row.id}"
    if created:
        _enqueue(session, dispatcher, row.id, row.device_request)
    else:
        response.headers["Idempotent-Replayed"] = "true"
    return RunOut.from_row(row)


def _enqueue(session: Session, dispatcher: Any, run_id: str, device: str) -> None:
    """Publish the run; when the broker is down it stays ``queued`` in the database (the source of
    truth) and the reconciler publishes it after ``ODESERVE_QUEUED_GRACE_S`` (see service.jobs.reconcile)."""
    try:
        dispatcher.enqueue(run_id, device)
    except Exception as exc:
        log.warning("run=%s accepted but not published (broker down?): %s; the reconciler will", run_id, exc)
