"""Repository functions of the reconciler: find runs whose job was lost, and claim them for requeue.

The database is the source of truth. A run is *lost* when it is

* ``queued`` and was last published longer than a grace period ago (the broker may have lost the
  message: Redis restarted empty, or the publish failed while the broker was down), or
* ``running``/``canceling`` and its heartbeat is older than the heartbeat timeout (its worker died).

Every claim is a conditional ``UPDATE`` that matches only the state the reconciler read, so two
reconcilers racing over one run publish it once. Requeueing a stale ``running`` run bumps its fence:
should the presumed-dead worker wake up, its next write raises :class:`~service.db.repository.StaleAttempt`.
Cut-offs are taken on the database clock (:mod:`service.db.clock`), like the stamps they judge.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from service.db.clock import db_now
from service.db.models import RunRow, RunStatus

__all__ = ["LostRun", "cancel_stale", "claim_queued", "find_lost", "requeue_stale"]


@dataclass(frozen=True)
class LostRun:
    """A candidate read by :func:`find_lost`: id, status, fence and publish time when read."""

    run_id: str
    status: str
    fence: int
    published_at: datetime | None = None
    device_request: str = "auto"


def _published_at() -> object:
    return func.coalesce(RunRow.enqueued_at, RunRow.created_at)


def _last_beat() -> object:
    return func.coalesce(RunRow.heartbeat_at, RunRow.updated_at)


def find_lost(
    session: Session, *, queued_grace_s: float, heartbeat_timeout_s: float, limit: int = 500
) -> list[LostRun]:
    """Queued runs published more than ``queued_grace_s`` ago and active runs with a stale heartbeat."""
    now = db_now(session)
    queued_cutoff = now - timedelta(seconds=queued_grace_s)
    beat_cutoff = now - timedelta(seconds=heartbeat_timeout_s)
    queued = (RunRow.status == RunStatus.queued.value) & (_published_at() < queued_cutoff)
    active = RunRow.status.in_((RunStatus.running.value, RunStatus.canceling.value))
    stale = active & (_last_beat() < beat_cutoff)
    rows = session.execute(
        select(
            RunRow.id,
            RunRow.status,
            RunRow.fence,
            _published_at().label("published_at"),
            RunRow.device_request,
        )
        .where(queued | stale)
        .order_by(RunRow.created_at)
        .limit(limit)
    ).all()
    session.commit()  # end the read transaction
    return [LostRun(r.id, r.status, r.fence, r.published_at, r.device_request or "auto") for r in rows]


def _update(session: Session, *where: object, **values: object) -> bool:
    result = session.execute(update(RunRow).where(*where).values(updated_at=db_now(session), **values))
    session.commit()
    return bool(result.rowcount)


def claim_queued(session: Session, run: LostRun) -> bool:
    """Stamp ``enqueued_at`` if the run is still queued and nobody published it since it was read
    (compare-and-set on the publish time); True: publish it now."""
    return _update(
        session,
        RunRow.id == run.run_id,
        RunRow.status == RunStatus.queued.value,
        _published_at() == run.published_at,
        enqueued_at=db_now(session),
    )


def requeue_stale(session: Session, run: LostRun, *, heartbeat_timeout_s: float) -> bool:
    """Turn a silent ``running`` run back into ``queued`` (fence bumped); True: publish it now."""
    now = db_now(session)
    return _update(
        session,
        RunRow.id == run.run_id,
        RunRow.fence == run.fence,
        RunRow.status == RunStatus.running.value,
        _last_beat() < now - timedelta(seconds=heartbeat_timeout_s),
        status=RunStatus.queued.value,
        fence=run.fence + 1,
        enqueued_at=now,
        heartbeat_at=None,
    )


def cancel_stale(session: Session, run: LostRun, *, heartbeat_timeout_s: float) -> bool:
    """A ``canceling`` run whose worker went silent ends ``canceled`` (nothing left to stop)."""
    now = db_now(session)
    return _update(
        session,
        RunRow.id == run.run_id,
        RunRow.fence == run.fence,
        RunRow.status == RunStatus.canceling.value,
        _last_beat() < now - timedelta(seconds=heartbeat_timeout_s),
        status=RunStatus.canceled.value,
        fence=run.fence + 1,
        finished_at=now,
    )
