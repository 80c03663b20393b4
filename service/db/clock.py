"""The one clock that liveness decisions read: the database server's.

Heartbeats are written by workers and judged stale by reconcilers on other hosts; queued runs are
stamped by API replicas and judged lost by those reconcilers. With each host's own clock, a worker
whose clock runs 30 s behind looks dead to a reconciler whose clock is right, and its run is taken
over while it trains. So every time stamp and cut-off that decides liveness comes from
PostgreSQL's ``clock_timestamp()`` (the wall clock at the statement, not the transaction start).
SQLite lives in one file on one host, whose clock every process there shares: it uses that clock.
"""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from service.db.models import utcnow

__all__ = ["db_now"]


def db_now(session: Session) -> datetime:
    """The database server's current time (UTC, timezone-aware); this host's for SQLite."""
    if session.get_bind().dialect.name == "postgresql":
        return session.execute(select(func.clock_timestamp())).scalar_one().astimezone(UTC)
    return utcnow()
