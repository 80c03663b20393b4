"""The only code that writes job state. Every run status transition is a function here.

State machine::

    queued ──start_attempt──▶ running ──finish_succeeded──▶ succeeded
      ▲ │                      │  │  └──finish_failed─────▶ failed
      │ │                      │  └──request_cancel──▶ canceling ──finish_canceled──▶ canceled
      │ └──request_cancel──────┼──────────────────────────────────────────────────────▶ canceled
      └──requeue_stale─────────┘  (reconciler: heartbeat stale; see service.db.recovery)

Worker writes are *fenced*: ``start_attempt`` bumps ``fence`` and returns it, and every later write
is an ``UPDATE … WHERE fence = :fence``. A write from an older attempt matches no row and raises
:class:`StaleAttempt`, so a redelivered job can never be clobbered by the worker it replaced.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

from sqlalchemy import delete, func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from service.db.clock import db_now
from service.db.datasets_repository import create_dataset, get_dataset, list_datasets
from service.db.metric_rows import metric_row, run_metrics
from service.db.models import RunMetricRow, RunRow, RunStatus, utcnow
from service.db.run_filters import after_keyset, filter_runs
from service.db.run_sort import RunSort, parse_sort

__all__ = [
    "ACTIVE",
    "Attempt",
    "IdempotencyConflict",
    "StaleAttempt",
    "after_keyset",
    "count_by_status",
    "create_dataset",
    "create_run",
    "delete_run",
    "finish_canceled",
    "finish_failed",
    "finish_succeeded",
    "get_dataset",
    "get_run",
    "requested_device",
    "get_run_by_idempotency_key",
    "list_datasets",
    "list_runs",
    "record_checkpoint",
    "record_progress",
    "request_cancel",
    "run_metrics",
    "should_stop",
    "start_attempt",
    "update_labels",
]

log = logging.getLogger(__name__)

ACTIVE = (RunStatus.running.value, RunStatus.canceling.value)


class StaleAttempt(Exception):
    """A worker wrote with a fence that is no longer current (its job was taken over or ended)."""


class IdempotencyConflict(Exception):
    """An ``Idempotency-Key`` was reused with a different request body."""

    def __init__(self, run: RunRow) -> None:
        self.run = run
        super().__init__(f"idempotency key already used for run {run.id}")


@dataclass(frozen=True)
class Attempt:
    """What a worker holds while it runs a job."""

    run_id: str
    attempt: int
    fence: int


# --- API side -------------------------------------------------------------------------------------


def get_run(session: Session, run_id: str) -> RunRow | None:
    return session.get(RunRow, run_id, populate_existing=True)


def requested_device(session: Session, run_id: str) -> str:
    """The device run ``run_id`` asked for (``auto`` when the run is gone)."""
    return session.scalar(select(RunRow.device_request).where(RunRow.id == run_id)) or "auto"


def get_run_by_idempotency_key(session: Session, key: str) -> RunRow | None:
    return session.scalars(select(RunRow).where(RunRow.idempotency_key == key)).first()


def create_run(session: Session, **fields: Any) -> tuple[RunRow, bool]:
    """Insert a queued run; returns ``(run, created)``. A used ``idempotency_key`` returns its run.

    Raises:
        IdempotencyConflict: the key was used for a request with a different body.
    """
    key, digest = fields.get("idempotency_key"), fields.get("request_sha256")
    if key is not None and (existing := get_run_by_idempotency_key(session, key)) is not None:
        return _same_request(existing, digest), False
    now = db_now(session)  # ``enqueued_at`` is judged by reconcilers on other hosts
    row = RunRow(
        status=RunStatus.queued.value,
        iteration=0,
        metrics={},
        attempt=0,
        fence=0,
        created_at=now,
        enqueued_at=now,
        **fields,
    )
    session.add(row)
    try:
        session.commit()
    except IntegrityError:
        # Two concurrent requests with one key: the loser returns the winner's run.
        session.rollback()
        existing = get_run_by_idempotency_key(session, key) if key else None
        if existing is None:
            raise
        return _same_request(existing, digest), False
    return row, True


def _same_request(existing: RunRow, digest: str | None) -> RunRow:
    if existing.request_sha256 != digest:
        raise IdempotencyConflict(existing)
    return existing


def list_runs(
    session: Session,
    *,
    limit: int,
    sort: RunSort | None = None,
    after: tuple[Any, str] | None = None,
    **filters: Any,
) -> list[RunRow]:
    """Runs matching every filter of ``run_filters.filter_runs`` (status, model, dataset, sweep_id,
    name, tags), ordered by ``sort`` (default: newest first). ``after`` is the ``(sort value, id)``
    of the last row of the previous page."""
    sort = sort or parse_sort(None, None)
    dialect = session.get_bind().dialect.name
    query = filter_runs(select(RunRow).limit(limit), dialect, **filters)
    return list(session.scalars(sort.apply(query, dialect, after)))


def update_labels(session: Session, run_id: str, **values: Any) -> RunRow | None:
    """Set a run's ``name`` and/or ``tags`` (the fields the client owns); None for an unknown run."""
    result = session.execute(update(RunRow).where(RunRow.id == run_id).values(updated_at=utcnow(), **values))
    session.commit()
    return get_run(session, run_id) if result.rowcount else None


def request_cancel(session: Session, run_id: str) -> RunRow | None:
    """Queued runs end ``canceled`` at once; running ones turn ``canceling`` for the worker to see."""
    now = utcnow()
    session.execute(
        update(RunRow)
        .where(RunRow.id == run_id, RunRow.status == RunStatus.queued.value)
        .values(status=RunStatus.canceled.value, finished_at=now, updated_at=now)
    )
    session.execute(
        update(RunRow)
        .where(RunRow.id == run_id, RunRow.status == RunStatus.running.value)
        .values(status=RunStatus.canceling.value, updated_at=now)
    )
    session.commit()
    return get_run(session, run_id)


def delete_run(session: Session, run_id: str) -> Literal["deleted", "missing", "busy"]:
    """Delete a run that is not running (its metrics go with it by cascade)."""
    result = session.execute(delete(RunRow).where(RunRow.id == run_id, RunRow.status.not_in(ACTIVE)))
    session.commit()
    if result.rowcount:
        return "deleted"
    return "missing" if get_run(session, run_id) is None else "busy"


def count_by_status(session: Session) -> dict[str, int]:
    rows = session.execute(select(RunRow.status, func.count()).group_by(RunRow.status))
    counts = {status.value: 0 for status in RunStatus}
    counts.update({status: int(n) for status, n in rows})
    return counts


# --- worker side (fenced) -------------------------------------------------------------------------


def start_attempt(
    session: Session,
    run_id: str,
    *,
    device: str,
    worker: str,
    max_attempts: int,
    heartbeat_timeout_s: float | None = None,
) -> Attempt | None:
    """Claim a delivered job: bump ``attempt`` and ``fence`` and mark it running.

    Returns None when there is nothing to do: the run is gone, finished, canceled (a ``canceling``
    run that was redelivered ends ``canceled`` here), has used up its attempts (then ``failed``), or
    is ``running`` on another worker whose heartbeat is younger than ``heartbeat_timeout_s`` (a
    duplicate message; the reconciler requeues the run if that worker goes silent). Metric rows past
    the last checkpoint, left by a lost attempt, are deleted: the new attempt rewrites them.
    """
    row = get_run(session, run_id)
    if row is None or RunStatus(row.status).terminal:
        return None
    now = db_now(session)  # the heartbeat clock (service.db.clock)
    attempt, fence = row.attempt + 1, row.fence + 1  # read before the update refreshes ``row``
    guard = (RunRow.id == run_id, RunRow.fence == row.fence)
    if row.status == RunStatus.canceling.value:
        _set(session, guard, status=RunStatus.canceled.value, finished_at=now)
        return None
    if _alive_elsewhere(row, worker, heartbeat_timeout_s, now):
        log.info("run=%s is running on %s with a fresh heartbeat; ignoring duplicate", run_id, row.worker)
        return None
    if row.attempt >= max_attempts:
        _set(
            session,
            guard,
            status=RunStatus.failed.value,
            finished_at=now,
            error_type="worker_lost",
            error_detail=f"the job was delivered {row.attempt} times without finishing",
        )
        return None
    keep = row.checkpoint_iteration or 0
    session.execute(delete(RunMetricRow).where(RunMetricRow.run_id == run_id, RunMetricRow.iteration > keep))
    claimed = _set(
        session,
        (*guard, RunRow.status.in_((RunStatus.queued.value, RunStatus.running.value))),
        status=RunStatus.running.value,
        attempt=attempt,
        fence=fence,
        device=device,
        worker=worker,
        iteration=min(row.iteration, keep),
        started_at=row.started_at or now,
        heartbeat_at=now,
        error_type=None,
        error_detail=None,
    )
    return Attempt(run_id, attempt, fence) if claimed else None


def _alive_elsewhere(row: RunRow, worker: str, timeout_s: float | None, now: datetime) -> bool:
    if timeout_s is None or row.status != RunStatus.running.value or row.worker == worker:
        return False
    beat = row.heartbeat_at
    if beat is None:
        return False
    if beat.tzinfo is None:  # SQLite hands back naive UTC datetimes
        beat = beat.replace(tzinfo=UTC)
    return (now - beat).total_seconds() < timeout_s


def _set(session: Session, where: Iterable[Any], **values: Any) -> bool:
    """Conditional update committed only when it matched (earlier writes in the session go with it)."""
    result = session.execute(update(RunRow).where(*where).values(updated_at=utcnow(), **values))
    if result.rowcount:
        session.commit()
        return True
    session.rollback()
    return False


def _fenced(session: Session, attempt: Attempt, **values: Any) -> None:
    where = (RunRow.id == attempt.run_id, RunRow.fence == attempt.fence, RunRow.status.in_(ACTIVE))
    if not _set(session, where, **values):
        raise StaleAttempt(f"run {attempt.run_id}: attempt {attempt.attempt} is no longer current")


def should_stop(session: Session, attempt: Attempt) -> bool:
    """True when cancellation was requested; raises StaleAttempt when the attempt was superseded."""
    row = session.execute(select(RunRow.status, RunRow.fence).where(RunRow.id == attempt.run_id)).first()
    session.commit()  # end the read transaction so the next poll sees fresh data
    if row is None or row.fence != attempt.fence or row.status not in ACTIVE:
        raise StaleAttempt(f"run {attempt.run_id}: attempt {attempt.attempt} is no longer current")
    return row.status == RunStatus.canceling.value


def record_progress(
    session: Session,
    attempt: Attempt,
    *,
    iteration: int,
    wall_s: float,
    metrics: Mapping[str, Any],
    history: Sequence[Mapping[str, Any]],
) -> None:
    """Advance the progress counters and append per-iteration rows (replacing any from a lost attempt)."""
    if history:
        first = int(history[0]["iteration"])
        session.execute(
            delete(RunMetricRow).where(RunMetricRow.run_id == attempt.run_id, RunMetricRow.iteration >= first)
        )
        session.add_all(metric_row(attempt.run_id, h) for h in history)
        session.flush()
    _fenced(session, attempt, iteration=iteration, wall_s=wall_s, metrics=dict(metrics))


def record_checkpoint(session: Session, attempt: Attempt, *, sha256: str, iteration: int) -> None:
    _fenced(session, attempt, checkpoint_sha256=sha256, checkpoint_iteration=iteration)


def finish_succeeded(
    session: Session,
    attempt: Attempt,
    *,
    metrics: Mapping[str, Any],
    sha256: str,
    iteration: int,
    wall_s: float,
) -> None:
    _fenced(
        session,
        attempt,
        status=RunStatus.succeeded.value,
        metrics=dict(metrics),
        checkpoint_sha256=sha256,
        checkpoint_iteration=iteration,
        iteration=iteration,
        wall_s=wall_s,
        finished_at=utcnow(),
    )


def finish_failed(session: Session, attempt: Attempt, *, error_type: str, detail: str) -> None:
    _fenced(
        session,
        attempt,
        status=RunStatus.failed.value,
        error_type=error_type,
        error_detail=detail[:4000],
        finished_at=utcnow(),
    )


def finish_canceled(session: Session, attempt: Attempt) -> None:
    _fenced(session, attempt, status=RunStatus.canceled.value, finished_at=utcnow())
