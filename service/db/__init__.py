"""Persistence: tables, sessions and the repository (the only writer of job state)."""

from service.db.models import Base, DatasetRow, RunMetricRow, RunRow, RunStatus
from service.db.session import SessionFactory, make_engine, make_session_factory, session_scope

__all__ = [
    "Base",
    "DatasetRow",
    "RunMetricRow",
    "RunRow",
    "RunStatus",
    "SessionFactory",
    "make_engine",
    "make_session_factory",
    "session_scope",
]
