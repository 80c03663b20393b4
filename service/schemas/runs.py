"""Request and response models of the REST API (shapes fixed by ``API.md``).

Enums of model and dataset names are built from the core registries, so OpenAPI lists exactly the
names the service accepts. Limits below are part of the contract and appear in the OpenAPI schema.
"""

from __future__ import annotations

import enum
import math
import uuid
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    field_validator,
    model_validator,
)

from service.db.models import DatasetRow, RunMetricRow, RunRow, RunStatus
from service.ml.data import DATASETS, MAX_DIM
from service.ml.models import MODELS, stored_model_config
from service.ml.ode import SolverConfig
from service.ml.series import SERIES_DATASETS
from service.ml.training import TrainConfig, resolve_training
from service.schemas.density import MAX_DENSITY_POINTS, MAX_SAMPLE_N, DensityOut, DensityRequest, SampleOut
from service.schemas.problems import Problem, ProblemField

__all__ = [
    "MAX_DENSITY_POINTS",
    "MAX_TAGS",
    "MAX_SAMPLE_N",
    "MAX_UPLOAD_POINTS",
    "BUILTIN_DATASETS",
    "DatasetList",
    "DatasetName",
    "DatasetOut",
    "DatasetRef",
    "DatasetUpload",
    "DensityOut",
    "DensityRequest",
    "MetricPoint",
    "ModelName",
    "Problem",
    "ProblemField",
    "Progress",
    "Readiness",
    "RunError",
    "RunList",
    "RunOut",
    "RunPatch",
    "SampleOut",
    "Tag",
    "Tags",
    "TrainRequest",
    "stored_request",
]

MAX_UPLOAD_POINTS = 200_000
"""Most points an uploaded dataset may have (422 above; bodies over the byte limit get 413)."""
MAX_BUILTIN_SAMPLES = 200_000
MAX_TAGS = 16
"""Most tags one run may carry (each 1-64 characters of ``A-Za-z0-9_.:-``)."""

Tag = Annotated[str, StringConstraints(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.:-]+$")]
Tags = Annotated[
    list[Tag],
    Field(
        max_length=MAX_TAGS,
        description=f"Labels to filter runs by (GET /runs?tag=): at most {MAX_TAGS}, each 1-64 "
        "characters of A-Z a-z 0-9 _ . : -; repeats are dropped, order is kept.",
        examples=[["baseline", "tol:1e-3"]],
    ),
    AfterValidator(lambda tags: list(dict.fromkeys(tags))),
]

BUILTIN_DATASETS: dict[str, tuple[str, int, str]] = {
    **{name: (spec.kind, spec.dim, spec.description) for name, spec in DATASETS.items()},
    **{name: (spec.kind, spec.dim, spec.description) for name, spec in SERIES_DATASETS.items()},
}
"""Built-in dataset name -> (kind, dim, description)."""

ModelName = enum.StrEnum("ModelName", {name: name for name in MODELS})
DatasetName = enum.StrEnum("DatasetName", {name: name for name in BUILTIN_DATASETS})


def _utc(value: datetime | None) -> datetime | None:
    # SQLite hands back naive datetimes; everything is stored in UTC.
    if value is None or value.tzinfo is not None:
        return value
    return value.replace(tzinfo=UTC)


def _finite(value: Any) -> Any:
    return value if not isinstance(value, float) or math.isfinite(value) else None


class DatasetRef(BaseModel):
    """A built-in dataset by ``name`` or an uploaded one by ``id`` (exactly one of them)."""

    model_config = ConfigDict(extra="forbid")

    name: DatasetName | None = Field(None, description="Built-in dataset name.")
    id: uuid.UUID | None = Field(None, description="Id of an uploaded dataset (POST /datasets).")
    n_train: int | None = Field(
        None, ge=2, le=MAX_BUILTIN_SAMPLES, description="Built-in point sets: training points."
    )
    n_test: int | None = Field(
        None, ge=1, le=MAX_BUILTIN_SAMPLES, description="Built-in point sets: test points."
    )

    @model_validator(mode="after")
    def _exactly_one(self) -> DatasetRef:
        if (self.name is None) == (self.id is None):
            raise ValueError("give exactly one of dataset.name (built-in) or dataset.id (upload)")
        return self


class TrainRequest(BaseModel):
    """``POST /train``: every field but ``model`` and ``dataset`` has a default."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    model: ModelName
    dataset: DatasetRef
    model_params: dict[str, Any] = Field(
        default_factory=dict,
        alias="model_config",
        description="Model-specific settings (e.g. FFJORDConfig: hidden_dims, divergence).",
    )
    solver: SolverConfig | None = Field(
        None,
        description=(
            "How to integrate. Omitted: the model's measured default (FFJORD: rk4 at step 0.5, "
            "shrunk by the step check; latent ODE: dopri5 at rtol = atol = 1e-3). Fields left out "
            "of a given solver take the defaults shown here. Fixed-step methods train; FFJORD "
            "densities and samples are served by dopri5 at rtol/atol."
        ),
    )
    training: TrainConfig = Field(default_factory=TrainConfig)
    name: str | None = Field(None, max_length=200, description="Free-form label.")
    tags: Tags = Field(default_factory=list)
    device: Literal["auto", "cpu", "cuda"] = Field(
        "auto",
        description=(
            "Where to train. auto: the first free worker, on its GPU when it has one; cpu: on a CPU; "
            "cuda: only on a GPU worker (the ODESERVE_GPU_QUEUE queue; the run waits for one)."
        ),
    )

    def resolved_solver(self) -> SolverConfig:
        """The solver the run records: the request's, or the model's default."""
        return self.solver or MODELS[self.model.value].default_solver

    def resolved_training(self) -> TrainConfig:
        """The training settings the run records: the request's, nulls set to the model's defaults."""
        return resolve_training(self.training, self.model.value)


def stored_request(row: RunRow) -> TrainRequest:
    """The ``POST /train`` body that repeats ``row``'s run: its stored (resolved) settings, name,
    tags and device. Raises ``ValidationError`` when they no longer validate."""
    ref = row.dataset or {}
    if row.dataset_id:
        dataset: dict[str, Any] = {"id": row.dataset_id}
    else:
        dataset = {k: ref[k] for k in ("name", "n_train", "n_test") if k in ref}
    return TrainRequest.model_validate(
        {
            "model": row.model,
            "dataset": dataset,
            "model_config": stored_model_config(row.model, row.model_config),
            "solver": row.solver,
            "training": row.training,
            "name": row.name,
            "tags": list(row.tags or []),
            "device": row.device_request or "auto",
        }
    )


class Progress(BaseModel):
    iteration: int
    total: int
    fraction: float
    eta_s: float | None = Field(None, description="Estimated seconds left while running.")


class RunError(BaseModel):
    type: str
    detail: str | None = None


class RunOut(BaseModel):
    """The run resource."""

    model_config = ConfigDict(populate_by_name=True)

    id: str
    name: str | None
    model: str
    dataset: dict[str, Any]
    status: RunStatus
    progress: Progress
    solver: dict[str, Any]
    model_params: dict[str, Any] = Field(alias="model_config")
    training: dict[str, Any]
    metrics: dict[str, Any] = Field(
        ...,
        description=(
            "Outcome so far (final once succeeded): train_loss, test_nll (at the run's own solver), "
            "nfe_forward_mean / nfe_backward_mean (NFE per training iteration, mean over every "
            "iteration, resumed attempts included), nfe_forward_last / nfe_backward_last (the last "
            "iteration's), wall_clock_s, iterations_per_s; point-density runs (FFJORD) also "
            "test_nll_tight (the first test points re-scored by dopri5 at rtol = atol = 1e-8, exact "
            "trace, float64; null with test_nll_tight_error when it failed or ran out of budget), "
            "test_nll_tight_gap (tight minus own-solver NLL on those points), test_nll_tight_solver, "
            "test_nll_tight_points, test_nll_tight_s; model-specific keys beside them."
        ),
    )
    error: RunError | None
    device: str | None = Field(None, description="Where the last attempt trained (cpu, cuda).")
    device_request: str = Field("auto", description="The device the request asked for.")
    attempt: int
    checkpoint_sha256: str | None
    sweep_id: str | None
    sweep_values: dict[str, Any] | None = Field(
        None, description="This run's grid values when it belongs to a sweep ({path: value})."
    )
    tags: list[str] = Field(default_factory=list)
    retry_of: str | None = Field(None, description="The run this one retries (POST /runs/{id}/retry).")
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    updated_at: datetime | None = None

    @classmethod
    def from_row(cls, row: RunRow) -> RunOut:
        fraction = row.iteration / row.total if row.total else 0.0
        eta = None
        if row.status == RunStatus.running and row.iteration > 0 and row.wall_s > 0:
            eta = row.wall_s / row.iteration * (row.total - row.iteration)
        elif row.status == RunStatus.succeeded:
            eta = 0.0
        error = RunError(type=row.error_type, detail=row.error_detail) if row.error_type else None
        return cls(
            id=row.id,
            name=row.name,
            model=row.model,
            dataset=row.dataset,
            status=RunStatus(row.status),
            progress=Progress(iteration=row.iteration, total=row.total, fraction=fraction, eta_s=eta),
            solver=row.solver,
            model_params=row.model_config,
            training=row.training,
            metrics={k: _finite(v) for k, v in (row.metrics or {}).items()},
            error=error,
            device=row.device,
            device_request=row.device_request or "auto",
            attempt=row.attempt,
            checkpoint_sha256=row.checkpoint_sha256,
            sweep_id=row.sweep_id,
            sweep_values=row.sweep_values,
            tags=list(row.tags or []),
            retry_of=row.retry_of,
            created_at=_utc(row.created_at),
            started_at=_utc(row.started_at),
            finished_at=_utc(row.finished_at),
            updated_at=_utc(row.updated_at),
        )


class RunPatch(BaseModel):
    """``PATCH /runs/{id}``: the labels a client may change; fields left out keep their value."""

    model_config = ConfigDict(extra="forbid")

    name: str | None = Field(None, max_length=200, description="New label (null clears it).")
    tags: Tags | None = Field(None, description="Replaces the run's tags ([] removes them all).")

    @field_validator("tags")
    @classmethod
    def _tags_not_null(cls, tags: list[str] | None) -> list[str]:
        if tags is None:
            raise ValueError("tags must be a list of strings; send [] to remove every tag")
        return tags

    @model_validator(mode="after")
    def _not_empty(self) -> RunPatch:
        if not self.model_fields_set:
            raise ValueError("give name and/or tags to change")
        return self

    def changes(self) -> dict[str, Any]:
        """The columns to update."""
        return {k: getattr(self, k) for k in ("name", "tags") if k in self.model_fields_set}


class RunList(BaseModel):
    items: list[RunOut]
    next: str | None = Field(None, description="Link to the next page, null on the last one.")


class MetricPoint(BaseModel):
    """One training iteration; model-specific statistics ride along as extra keys."""

    model_config = ConfigDict(extra="allow")

    iteration: int
    wall_s: float
    loss: float
    nfe_forward: int
    nfe_backward: int

    @classmethod
    def from_row(cls, row: RunMetricRow) -> MetricPoint:
        extra = {k: _finite(v) for k, v in (row.extra or {}).items()}
        return cls(
            iteration=row.iteration,
            wall_s=row.wall_s,
            loss=row.loss,
            nfe_forward=row.nfe_forward,
            nfe_backward=row.nfe_backward,
            **extra,
        )


class DatasetUpload(BaseModel):
    """JSON upload of a point set."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(..., min_length=1, max_length=200)
    points: list[list[float]] = Field(..., max_length=MAX_UPLOAD_POINTS)


class DatasetOut(BaseModel):
    id: str
    name: str
    kind: Literal["points", "series"]
    dim: int
    n: int | None = Field(None, description="Number of items (null for generated built-ins).")
    builtin: bool
    description: str | None = None
    created_at: datetime | None = None

    @classmethod
    def from_row(cls, row: DatasetRow) -> DatasetOut:
        return cls(
            id=row.id,
            name=row.name,
            kind=row.kind,  # type: ignore[arg-type]
            dim=row.dim,
            n=row.n,
            builtin=False,
            created_at=_utc(row.created_at),
        )


class DatasetList(BaseModel):
    items: list[DatasetOut]
    max_dim: int = MAX_DIM
    max_points: int = MAX_UPLOAD_POINTS


class Readiness(BaseModel):
    status: Literal["ready", "unavailable"]
    checks: dict[str, str]
