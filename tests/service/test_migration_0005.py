"""Migration 0005 on SQLite and PostgreSQL: runs made before it read back with no tags, and it
downgrades and upgrades again cleanly."""

from __future__ import annotations

import uuid

import pytest
from alembic import command
from sqlalchemy import inspect, text

from service.db import make_engine, make_session_factory
from service.db.migrate import alembic_config, upgrade
from service.db.models import RunRow
from tests.pg_schema import open_schema

INSERT = text(
    "INSERT INTO runs (id, model, dataset, model_config, solver, training, status, iteration, total,"
    " wall_s, metrics, attempt, fence, created_at, updated_at)"
    " VALUES (:id, 'ffjord', '{}', '{}', '{}', '{}', 'failed', 0, 5, 0.0, '{}', 1, 1,"
    " CURRENT_TIMESTAMP, CURRENT_TIMESTAMP)"
)


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request, tmp_path):
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'm.db'}"
        return
    made = open_schema("odeserve_mig")
    if made is None:
        pytest.skip("PostgreSQL unreachable")
    url, drop = made
    yield url
    drop()


def test_0005_adds_tags_retry_of_and_sweep_idempotency(database_url):
    upgrade(database_url, "0004")
    engine = make_engine(database_url)
    old = str(uuid.uuid4())
    with engine.begin() as conn:
        conn.execute(INSERT, {"id": old})
    upgrade(database_url)
    with make_session_factory(engine)() as session:
        row = session.get(RunRow, old)
        assert row is not None and row.tags == [] and row.retry_of is None
    columns = {c["name"] for c in inspect(engine).get_columns("sweeps")}
    assert {"idempotency_key", "request_sha256"} <= columns
    command.downgrade(alembic_config(database_url), "0004")
    assert "tags" not in {c["name"] for c in inspect(engine).get_columns("runs")}
    upgrade(database_url)
    assert "retry_of" in {c["name"] for c in inspect(engine).get_columns("runs")}
    engine.dispose()
