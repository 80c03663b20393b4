"""A fresh schema in the test PostgreSQL per fixture, for the service and integration tests.

``ODESERVE_TEST_DATABASE_URL`` (default the local ``test`` database). With ``CI=true`` an
unreachable server fails the test; elsewhere the caller decides (skip, or fall back to SQLite).
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable

import pytest
from sqlalchemy import create_engine, text

__all__ = ["PG_URL", "REQUIRED", "open_schema"]

PG_URL = os.environ.get("ODESERVE_TEST_DATABASE_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
REQUIRED = os.environ.get("CI", "").lower() == "true"


def open_schema(prefix: str) -> tuple[str, Callable[[], None]] | None:
    """Create schema ``<prefix>_<random>``; returns a URL whose ``search_path`` is it and a function
    that drops it, or None when PostgreSQL is unreachable (a test failure under ``CI=true``)."""
    schema = f"{prefix}_{uuid.uuid4().hex[:10]}"
    try:
        admin = create_engine(PG_URL, connect_args={"connect_timeout": 3})
        with admin.begin() as conn:
            conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    except Exception as exc:
        if REQUIRED:
            pytest.fail(f"CI=true requires PostgreSQL at {PG_URL}: {exc}")
        return None

    def drop() -> None:
        with admin.begin() as conn:
            conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()

    sep = "&" if "?" in PG_URL else "?"
    return f"{PG_URL}{sep}options=-csearch_path%3D{schema}", drop
