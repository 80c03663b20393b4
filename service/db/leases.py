"""Fenced writes of a worker beyond progress: the heartbeat, the lease held while checkpoint files are
written, and the hand-back of a job on warm shutdown. Their time stamps come from the database clock
(:mod:`service.db.clock`), which the reconcilers' cut-offs read too.

A checkpoint is files on disk plus a digest in the run row. Writing the files first and the row
second would let a stale attempt (a worker presumed dead whose job was taken over) replace the files
of the current attempt and only then fail its fenced update, leaving a digest that no longer
matches. :func:`checkpoint_lease` closes that gap: it locks the run row with a fence-checked
``UPDATE`` (a row lock on PostgreSQL, the write lock on SQLite) *before* the files are written and
keeps it until the caller's fenced update commits. A takeover (``start_attempt`` bumping the fence)
waits for the lease, and a stale attempt never gets one.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy import update
from sqlalchemy.orm import Session

from service.db.clock import db_now
from service.db.models import RunRow, RunStatus
from service.db.repository import ACTIVE, Attempt, StaleAttempt, finish_canceled

__all__ = ["beat", "checkpoint_lease", "release_attempt"]


def _lock(session: Session, attempt: Attempt, **values: object) -> None:
    result = session.execute(
        update(RunRow)
        .where(RunRow.id == attempt.run_id, RunRow.fence == attempt.fence, RunRow.status.in_(ACTIVE))
        .values(updated_at=db_now(session), **values)
    )
    if not result.rowcount:
        session.rollback()
        raise StaleAttempt(f"run {attempt.run_id}: attempt {attempt.attempt} is no longer current")


def beat(session: Session, attempt: Attempt) -> None:
    """Stamp the run's heartbeat; raises StaleAttempt when the attempt is no longer current."""
    _lock(session, attempt, heartbeat_at=db_now(session))
    session.commit()


@contextmanager
def checkpoint_lease(session: Session, attempt: Attempt) -> Iterator[None]:
    """Hold the run row for ``attempt`` while files are written; the block's fenced write commits.

    Raises:
        StaleAttempt: on entry, when the attempt is no longer current (nothing may be written).
    """
    _lock(session, attempt, heartbeat_at=db_now(session))
    try:
        yield
    except BaseException:
        session.rollback()
        raise
    session.commit()


def release_attempt(session: Session, attempt: Attempt) -> str:
    """Hand a running job back to the queue, its attempt not counted (the worker is shutting down).

    The run goes back to ``queued`` with ``attempt`` as it was before this attempt started, so
    deploys never use up ``ODESERVE_MAX_ATTEMPTS``; the fence moves on, so this attempt's heartbeat
    stops. A run whose cancellation was requested meanwhile ends ``canceled`` instead. Returns the
    new status; the caller publishes a ``queued`` run (the reconciler republishes it if that fails).

    Raises:
        StaleAttempt: the attempt is no longer current (nothing is written).
    """
    now = db_now(session)
    result = session.execute(
        update(RunRow)
        .where(
            RunRow.id == attempt.run_id,
            RunRow.fence == attempt.fence,
            RunRow.status == RunStatus.running.value,
        )
        .values(
            status=RunStatus.queued.value,
            attempt=attempt.attempt - 1,
            fence=attempt.fence + 1,
            worker=None,
            heartbeat_at=None,
            enqueued_at=now,
            updated_at=now,
        )
    )
    if result.rowcount:
        session.commit()
        return RunStatus.queued.value
    session.rollback()
    finish_canceled(session, attempt)  # still ours but ``canceling``; StaleAttempt otherwise
    return RunStatus.canceled.value
