"""Liveness times come from the database clock: hosts with skewed clocks agree on who is alive.

A worker whose clock runs an hour behind writes its heartbeat; a reconciler whose clock runs an hour
ahead judges it. Each host's clock is skewed by replacing the function the service reads it from.
On SQLite (one file on one host) there is no second clock to disagree with, so this runs on
PostgreSQL, which ``CI=true`` requires.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import update

from service.db import RunRow, make_engine, make_session_factory, sweeps_repository
from service.db import clock as db_clock
from service.db import repository as repo
from service.db.leases import beat
from service.db.migrate import upgrade
from service.db.recovery import find_lost
from tests.pg_schema import open_schema

pytestmark = pytest.mark.integration

HOUR = timedelta(hours=1)


def _skew(monkeypatch: pytest.MonkeyPatch, offset: timedelta) -> None:
    def skewed() -> datetime:
        return datetime.now(UTC) + offset

    for module in (db_clock, repo, sweeps_repository):
        monkeypatch.setattr(module, "utcnow", skewed)


@pytest.fixture
def sessions():
    """Its own schema: the runs made here must never reach the reconcilers of other tests' workers
    (they would train them: a shared schema kept them as lost runs)."""
    made = open_schema("odeserve_clock")
    if made is None:
        pytest.skip("SQLite shares one host's clock (CI=true runs this on PostgreSQL)")
    url, drop = made
    upgrade(url)
    engine = make_engine(url)
    yield make_session_factory(engine)
    engine.dispose()
    drop()


def _new_run(session) -> str:
    fields = {"model": "ffjord", "dataset": {"name": "8gaussians"}, "model_config": {}, "solver": {}}
    row, _ = repo.create_run(session, id=str(uuid.uuid4()), **fields, training={}, total=1)
    return row.id


def _lost(sessions, monkeypatch, offset: timedelta) -> set[str]:
    _skew(monkeypatch, offset)
    with sessions() as session:
        return {r.run_id for r in find_lost(session, queued_grace_s=60, heartbeat_timeout_s=60)}


def test_a_worker_behind_is_not_taken_over_by_a_reconciler_ahead(sessions, monkeypatch):
    _skew(monkeypatch, -HOUR)  # the API and worker host
    with sessions() as session:
        run_id = _new_run(session)
        attempt = repo.start_attempt(session, run_id, device="cpu", worker="behind", max_attempts=3)
        assert attempt is not None
        beat(session, attempt)
        stamped = repo.get_run(session, run_id).heartbeat_at
        real = db_clock.db_now(session)
    assert abs((real - stamped).total_seconds()) < 5  # the database's time, not the skewed host's
    assert run_id not in _lost(sessions, monkeypatch, +HOUR)  # the reconciler host


def test_a_fresh_queued_run_is_not_republished_by_a_reconciler_ahead(sessions, monkeypatch):
    _skew(monkeypatch, -HOUR)
    with sessions() as session:
        run_id = _new_run(session)
    assert run_id not in _lost(sessions, monkeypatch, +HOUR)


def test_a_silent_worker_is_still_found_on_the_database_clock(sessions, monkeypatch):
    with sessions() as session:
        run_id = _new_run(session)
        attempt = repo.start_attempt(session, run_id, device="cpu", worker="gone", max_attempts=3)
        assert attempt is not None
        session.execute(
            update(RunRow)
            .where(RunRow.id == run_id)
            .values(heartbeat_at=db_clock.db_now(session) - timedelta(seconds=120))
        )
        session.commit()
    assert run_id in _lost(sessions, monkeypatch, -HOUR)  # even a reconciler an hour behind sees it
