"""Engines and session factories for SQLite (embedded mode, tests) and PostgreSQL.

Every engine refuses text parameters containing NUL (``\x00``) with a :class:`DataError` (a 422 at the
API) before they reach the driver: PostgreSQL cannot store NUL in text and would otherwise answer a
hostile name or filter with a server error, and SQLite gets the same rule so both behave alike.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker

from service.ml.errors import DataError

__all__ = ["SessionFactory", "make_engine", "make_session_factory", "session_scope"]

SessionFactory = sessionmaker[Session]


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    # WAL + busy timeout: the API and the worker process write the same file concurrently.
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA busy_timeout=10000")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


def _has_nul(params: Any) -> bool:
    if isinstance(params, str):
        return "\x00" in params
    if isinstance(params, dict):
        return any(_has_nul(v) for v in params.values())
    if isinstance(params, list | tuple):
        return any(_has_nul(v) for v in params)
    return False


def _refuse_nul(_conn: Any, _cursor: Any, statement: str, params: Any, _context: Any, _many: bool) -> None:
    if _has_nul(params):
        raise DataError(
            "text values may not contain NUL (\\x00) characters",
            fix="remove NUL characters from names and filters",
        )


def make_engine(url: str, **kwargs: Any) -> Engine:
    """An engine for ``url``; SQLite files get their directory created and safe pragmas."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        kwargs.setdefault("connect_args", {"check_same_thread": False, "timeout": 10})
        engine = create_engine(url, **kwargs)
        event.listen(engine, "connect", _sqlite_pragmas)
    else:
        kwargs.setdefault("pool_pre_ping", True)
        engine = create_engine(url, **kwargs)
    event.listen(engine, "before_cursor_execute", _refuse_nul)
    return engine


def make_session_factory(engine: Engine) -> SessionFactory:
    return sessionmaker(engine, expire_on_commit=False)


@contextmanager
def session_scope(factory: SessionFactory) -> Iterator[Session]:
    """A session committed on success and rolled back on error."""
    with factory() as session:
        try:
            yield session
            session.commit()
        except BaseException:
            session.rollback()
            raise
