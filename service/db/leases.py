"""Fenced writes beyond one ``UPDATE``: the heartbeat, and the lease held while checkpoint files are written.

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

from service.db.models import RunRow, utcnow
from service.db.repository import ACTIVE, Attempt, StaleAttempt

__all__ = ["beat", "checkpoint_lease"]


def _lock(session: Session, attempt: Attempt, **values: object) -> None:
    result = session.execute(
        update(RunRow)
        .where(RunRow.id == attempt.run_id, RunRow.fence == attempt.fence, RunRow.status.in_(ACTIVE))
        .values(updated_at=utcnow(), **values)
    )
    if not result.rowcount:
        session.rollback()
        raise StaleAttempt(f"run {attempt.run_id}: attempt {attempt.attempt} is no longer current")


def beat(session: Session, attempt: Attempt) -> None:
    """Stamp the run's heartbeat; raises StaleAttempt when the attempt is no longer current."""
    _lock(session, attempt, heartbeat_at=utcnow())
    session.commit()


@contextmanager
def checkpoint_lease(session: Session, attempt: Attempt) -> Iterator[None]:
    """Hold the run row for ``attempt`` while files are written; the block's fenced write commits.

    Raises:
        StaleAttempt: on entry, when the attempt is no longer current (nothing may be written).
    """
    _lock(session, attempt, heartbeat_at=utcnow())
    try:
        yield
    except BaseException:
        session.rollback()
        raise
    session.commit()
