"""The app on a migrated SQLite file, with the real worker code run in-process.

``InlineQueue`` stands where the broker would: it records queued run ids, and ``run_pending``
trains them with ``workers.runner.run_job`` (the code the Celery task calls). Real Celery, Redis and
Postgres are exercised in ``tests/integration``; ``db_api`` runs a test on this SQLite app and on
one over PostgreSQL (``ODESERVE_TEST_DATABASE_URL``, default the local ``test`` db, in a schema of
its own): skipped when PostgreSQL is unreachable, failed then with ``CI=true``.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
from fastapi.testclient import TestClient
from recording_queue import RecordingQueue  # tests/service is on sys.path (rootless test dir)

from service.api.main import create_app
from service.config import Settings
from service.db import SessionFactory, make_engine, make_session_factory
from service.db.migrate import upgrade
from service.storage.models_store import ModelStore
from tests.pg_schema import PG_URL, open_schema
from workers.runner import run_job

torch.set_num_threads(1)

TINY_RUN: dict[str, Any] = {
    "model": "ffjord",
    "dataset": {"name": "8gaussians", "n_train": 300, "n_test": 50},
    "model_config": {"hidden_dims": [8]},
    "solver": {"method": "dopri5", "rtol": 1e-3, "atol": 1e-3},
    "training": {"iterations": 6, "batch_size": 32},
}


class InlineQueue(RecordingQueue):
    """Records enqueued run ids; ``run_pending`` trains them in this process."""

    def __init__(self, settings: Settings, sessions: SessionFactory) -> None:
        super().__init__()
        self.settings, self.sessions = settings, sessions

    def run_pending(self) -> list[str | None]:
        done = []
        while self.queued:
            run_id = self.queued.pop(0)
            store = ModelStore(self.settings.models_store)
            done.append(
                run_job(run_id, settings=self.settings, sessions=self.sessions, store=store, worker="t")
            )
        return done


@pytest.fixture(scope="session")
def settings(tmp_path_factory: pytest.TempPathFactory) -> Settings:
    root: Path = tmp_path_factory.mktemp("service")
    url = f"sqlite:///{root / 'odeserve.db'}"
    upgrade(url)
    return Settings(
        database_url=url,
        redis_url="redis://127.0.0.1:1/0",
        models_store=root / "store",
        progress_every=2,
        checkpoint_every=4,
        max_upload_bytes=64 * 1024,
    )


@pytest.fixture(scope="session")
def sessions(settings: Settings) -> SessionFactory:
    return make_session_factory(make_engine(settings.database_url))


@pytest.fixture(scope="session")
def queue(settings: Settings, sessions: SessionFactory) -> InlineQueue:
    return InlineQueue(settings, sessions)


@pytest.fixture(scope="session")
def client(settings: Settings, sessions: SessionFactory, queue: InlineQueue) -> Iterator[TestClient]:
    app = create_app(settings, session_factory=sessions, dispatcher=queue)
    with TestClient(app) as test_client:
        yield test_client


@pytest.fixture
def tiny_run() -> dict[str, Any]:
    """A fresh copy of a POST /train body that trains in about a second."""
    return copy.deepcopy(TINY_RUN)


@pytest.fixture(scope="session")
def trained_run(client: TestClient, queue: InlineQueue) -> dict[str, Any]:
    """A tiny FFJORD run trained to ``succeeded`` through POST /train and the worker code."""
    response = client.post("/train", json={**TINY_RUN, "name": "trained"})
    assert response.status_code == 202, response.text
    assert queue.run_pending() == ["succeeded"]
    return client.get(response.headers["location"]).json()


def _assert_problem(response: Any, status: int, field: str | None = None) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    body = response.json()
    assert {"type", "title", "status", "detail", "errors"} <= body.keys()
    assert body["status"] == status
    if field is not None:
        assert field in [e["field"] for e in body["errors"]], body
    return body


@pytest.fixture(scope="session")
def problem() -> Any:
    """``problem(response, status, field=None)``: assert RFC 9457 problem+json naming ``field``."""
    return _assert_problem


@dataclass
class DbApi:
    """An app over one database: its client, session factory and recording queue."""

    dialect: str
    client: TestClient
    sessions: SessionFactory
    queue: RecordingQueue


@pytest.fixture(scope="session")
def postgres_api(settings: Settings) -> Iterator[DbApi]:
    made = open_schema("odeserve_svc")
    if made is None:
        pytest.skip(f"PostgreSQL at {PG_URL} unreachable")
    url, drop = made
    try:
        upgrade(url)
        engine = make_engine(url)
        sessions = make_session_factory(engine)
        queue = RecordingQueue()
        app = create_app(
            settings.model_copy(update={"database_url": url}), session_factory=sessions, dispatcher=queue
        )
        with TestClient(app) as client:
            yield DbApi("postgresql", client, sessions, queue)
        engine.dispose()
    finally:
        drop()


@pytest.fixture(params=["sqlite", "postgresql"])
def db_api(
    request: pytest.FixtureRequest, client: TestClient, sessions: SessionFactory, queue: InlineQueue
) -> DbApi:
    """The API over SQLite (the session app) and over PostgreSQL; the tests clear what they queue."""
    if request.param == "sqlite":
        return DbApi("sqlite", client, sessions, queue)
    return request.getfixturevalue("postgres_api")
