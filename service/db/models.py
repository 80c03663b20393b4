"""SQLAlchemy 2.0 tables: ``runs``, ``datasets``, per-iteration ``run_metrics`` and ``sweeps``.

Job state lives here, not in Celery: the broker message carries only a run id. ``fence`` is a fencing
token bumped at the start of every attempt; every write by a worker is conditioned on it, so a stale
attempt (a worker presumed dead whose job was redelivered) cannot overwrite the current one.
``heartbeat_at`` is stamped by a running job's heartbeat thread and ``enqueued_at`` whenever a broker
message is published; the reconciler (``service.jobs.reconcile``) reads both to recover lost jobs.
"""

from __future__ import annotations

import enum
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

__all__ = ["Base", "DatasetRow", "RunMetricRow", "RunRow", "RunStatus", "SweepRow", "utcnow"]


def utcnow() -> datetime:
    return datetime.now(UTC)


class RunStatus(enum.StrEnum):
    queued = "queued"
    running = "running"
    succeeded = "succeeded"
    failed = "failed"
    canceling = "canceling"
    canceled = "canceled"

    @property
    def terminal(self) -> bool:
        return self in (RunStatus.succeeded, RunStatus.failed, RunStatus.canceled)


class Base(DeclarativeBase):
    type_annotation_map = {dict[str, Any]: JSON, datetime: DateTime(timezone=True)}


class DatasetRow(Base):
    """An uploaded dataset; its tensor lives in the models store under its id."""

    __tablename__ = "datasets"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    kind: Mapped[str] = mapped_column(String(16))
    dim: Mapped[int] = mapped_column(Integer)
    n: Mapped[int] = mapped_column(Integer)
    sha256: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class RunRow(Base):
    """One training run and everything the API reports about it."""

    __tablename__ = "runs"
    __table_args__ = (Index("ix_runs_created_id", "created_at", "id"),)

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    name: Mapped[str | None] = mapped_column(String(200))
    model: Mapped[str] = mapped_column(String(64), index=True)
    dataset_name: Mapped[str | None] = mapped_column(String(200), index=True)
    dataset_id: Mapped[str | None] = mapped_column(
        String(36), ForeignKey("datasets.id", ondelete="RESTRICT"), index=True
    )
    dataset: Mapped[dict[str, Any]] = mapped_column(JSON)
    model_config: Mapped[dict[str, Any]] = mapped_column(JSON)
    solver: Mapped[dict[str, Any]] = mapped_column(JSON)
    training: Mapped[dict[str, Any]] = mapped_column(JSON)
    status: Mapped[str] = mapped_column(String(16), index=True, default=RunStatus.queued.value)
    iteration: Mapped[int] = mapped_column(Integer, default=0)
    total: Mapped[int] = mapped_column(Integer)
    wall_s: Mapped[float] = mapped_column(Float, default=0.0)
    metrics: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    error_type: Mapped[str | None] = mapped_column(String(64))
    error_detail: Mapped[str | None] = mapped_column(Text)
    device: Mapped[str | None] = mapped_column(String(32))  # where the last attempt trained
    device_request: Mapped[str] = mapped_column(String(8), default="auto", server_default="auto")
    worker: Mapped[str | None] = mapped_column(String(200))
    attempt: Mapped[int] = mapped_column(Integer, default=0)
    fence: Mapped[int] = mapped_column(Integer, default=0)
    checkpoint_sha256: Mapped[str | None] = mapped_column(String(64))
    checkpoint_iteration: Mapped[int | None] = mapped_column(Integer)
    sweep_id: Mapped[str | None] = mapped_column(String(36), index=True)
    sweep_index: Mapped[int | None] = mapped_column(Integer)  # position in the sweep's grid order
    sweep_values: Mapped[dict[str, Any] | None] = mapped_column(JSON)  # {grid path: value}
    idempotency_key: Mapped[str | None] = mapped_column(String(200), unique=True)
    request_sha256: Mapped[str | None] = mapped_column(String(64))
    tags: Mapped[list[str]] = mapped_column(JSON, default=list, server_default="[]")
    retry_of: Mapped[str | None] = mapped_column(String(36))  # the run this one retries
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    started_at: Mapped[datetime | None]
    finished_at: Mapped[datetime | None]
    heartbeat_at: Mapped[datetime | None] = mapped_column(index=True)
    enqueued_at: Mapped[datetime | None]
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)


class RunMetricRow(Base):
    """One training iteration of one run (``GET /runs/{id}/metrics``)."""

    __tablename__ = "run_metrics"

    run_id: Mapped[str] = mapped_column(
        String(36), ForeignKey("runs.id", ondelete="CASCADE"), primary_key=True
    )
    iteration: Mapped[int] = mapped_column(Integer, primary_key=True)
    wall_s: Mapped[float] = mapped_column(Float)
    loss: Mapped[float] = mapped_column(Float)
    nfe_forward: Mapped[int] = mapped_column(Integer)
    nfe_backward: Mapped[int] = mapped_column(Integer)
    extra: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)


class SweepRow(Base):
    """A parameter sweep: a base train request and a grid; its runs carry ``sweep_id``.

    ``status`` is the sweep's own lifecycle, ``open`` or ``canceled`` (cancel requested); the status
    the API reports is derived from the runs (see ``service.db.sweeps_repository.sweep_status``).
    """

    __tablename__ = "sweeps"
    __table_args__ = (Index("ix_sweeps_created_id", "created_at", "id"),)

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    name: Mapped[str | None] = mapped_column(String(200))
    model: Mapped[str] = mapped_column(String(64))
    base: Mapped[dict[str, Any]] = mapped_column(JSON)
    grid: Mapped[dict[str, Any]] = mapped_column(JSON)
    grid_keys: Mapped[list[str]] = mapped_column(JSON)  # the grid's paths in request order
    run_count: Mapped[int] = mapped_column(Integer)
    status: Mapped[str] = mapped_column(String(16), default="open")
    idempotency_key: Mapped[str | None] = mapped_column(String(200), unique=True)  # scoped like a run's
    request_sha256: Mapped[str | None] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    canceled_at: Mapped[datetime | None]
