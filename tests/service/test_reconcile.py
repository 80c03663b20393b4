"""Recovery without real processes: reconciler passes, heartbeat, time limits, fenced checkpoints.

Each test gets its own migrated SQLite database so reconciler passes see only its runs. The
real-process versions (``kill -9`` a worker, restart Redis empty) are in
``tests/integration/test_crash_recovery.py``.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from datetime import timedelta
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import update

from service.api.main import create_app
from service.db import make_engine, make_session_factory
from service.db import repository as repo
from service.db.leases import checkpoint_lease
from service.db.migrate import upgrade
from service.db.models import RunRow, utcnow
from service.jobs.broker_scan import BrokerView
from service.jobs.reconcile import Reconciler, reconcile_once
from service.storage.models_store import ModelStore
from workers.heartbeat import Heartbeat
from workers.runner import run_job

TRAINING = {"iterations": 6, "batch_size": 32, "seed": 0}


class FakeBroker:
    """Publishes into a list; ``scan`` sees what was published (unless told the broker is down)."""

    def __init__(self) -> None:
        self.published: list[str] = []
        self.devices: dict[str, str] = {}
        self.down = False
        self.lost: set[str] = set()

    def enqueue(self, run_id: str, device: str = "auto") -> None:
        if self.down:
            raise ConnectionError("broker down")
        self.published.append(run_id)
        self.devices[run_id] = device

    def ping(self) -> None:
        if self.down:
            raise ConnectionError("broker down")

    def scan(self, delivered_within_s: float) -> BrokerView:
        self.ping()
        return BrokerView(waiting=frozenset(self.published) - self.lost)


@pytest.fixture
def env(tmp_path, settings):
    url = f"sqlite:///{tmp_path / 'odeserve.db'}"
    upgrade(url)
    fast = settings.model_copy(
        update={
            "database_url": url,
            "models_store": tmp_path / "store",
            "queued_grace_s": 0.0,
            "heartbeat_timeout_s": 0.3,
            "heartbeat_interval_s": 0.05,
        }
    )
    return fast, make_session_factory(make_engine(url))


def _queued_run(sessions: Any, device_request: str = "auto", **training: Any) -> str:
    with sessions() as session:
        row, _ = repo.create_run(
            session,
            id=str(uuid.uuid4()),
            model="ffjord",
            dataset={"name": "8gaussians", "n_train": 200, "n_test": 50},
            dataset_name="8gaussians",
            model_config={"hidden_dims": [8]},
            solver={"method": "dopri5", "rtol": 1e-3, "atol": 1e-3},
            training={**TRAINING, **training},
            total=training.get("iterations", TRAINING["iterations"]),
            device_request=device_request,
        )
    return row.id


def _start(sessions: Any, run_id: str, worker: str = "w1", timeout: float | None = 0.3) -> Any:
    with sessions() as session:
        return repo.start_attempt(
            session, run_id, device="cpu", worker=worker, max_attempts=3, heartbeat_timeout_s=timeout
        )


def _row(sessions: Any, run_id: str) -> Any:
    with sessions() as session:
        return repo.get_run(session, run_id)


def test_queued_run_without_message_is_republished_once(env):
    settings, sessions = env
    broker = FakeBroker()
    run_id = _queued_run(sessions)
    first = reconcile_once(settings, sessions, broker)
    assert first.republished == [run_id]
    again = reconcile_once(settings, sessions, broker)  # now it has a message: left alone
    assert again.republished == [] and again.skipped_live == [run_id]
    assert broker.published == [run_id]


@pytest.mark.parametrize("device", ["auto", "cpu", "cuda"])
def test_a_republished_run_keeps_its_device_queue(env, device):
    settings, sessions = env
    broker = FakeBroker()
    run_id = _queued_run(sessions, device_request=device)
    assert reconcile_once(settings, sessions, broker).republished == [run_id]
    assert broker.devices == {run_id: device}


def test_racing_reconcilers_publish_once(env):
    settings, sessions = env
    broker = FakeBroker()
    broker.scan = lambda _: BrokerView()  # type: ignore[method-assign]  # neither sees a message
    run_ids = [_queued_run(sessions) for _ in range(4)]
    # Runs queued long ago, and a grace period longer than the race: a run one reconciler has just
    # claimed is not "lost" again for the others (with no grace a later pass may rightly republish).
    with sessions() as session:
        old = utcnow() - timedelta(seconds=60)
        session.execute(update(RunRow).where(RunRow.id.in_(run_ids)).values(created_at=old, enqueued_at=old))
        session.commit()
    settings = settings.model_copy(update={"queued_grace_s": 30.0})
    threads = [threading.Thread(target=reconcile_once, args=(settings, sessions, broker)) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(broker.published) == sorted(run_ids)


def test_broker_down_at_post_train_then_republished(env, tiny_run):
    settings, sessions = env
    broker = FakeBroker()
    broker.down = True
    with TestClient(create_app(settings, session_factory=sessions, dispatcher=broker)) as client:
        accepted = client.post("/train", json=tiny_run)
        assert accepted.status_code == 202 and accepted.json()["status"] == "queued"
        assert client.get("/readyz").status_code == 503
        assert reconcile_once(settings, sessions, broker).broker_error  # still down: waits
        broker.down = False
        assert client.get("/readyz").status_code == 200
    assert reconcile_once(settings, sessions, broker).republished == [accepted.json()["id"]]


def test_stale_running_run_is_requeued_and_the_old_attempt_fenced_out(env):
    settings, sessions = env
    broker = FakeBroker()
    run_id = _queued_run(sessions)
    zombie = _start(sessions, run_id)
    assert reconcile_once(settings, sessions, broker).requeued == []  # heartbeat still fresh
    time.sleep(0.4)
    assert reconcile_once(settings, sessions, broker).requeued == [run_id]
    assert _row(sessions, run_id).status == "queued"
    with sessions() as session, pytest.raises(repo.StaleAttempt):
        repo.record_progress(session, zombie, iteration=1, wall_s=0.1, metrics={}, history=[])
    with sessions() as session, pytest.raises(repo.StaleAttempt), checkpoint_lease(session, zombie):
        pytest.fail("a stale attempt must not get to write checkpoint files")
    fresh = _start(sessions, run_id, worker="w2")
    assert fresh is not None and fresh.attempt == 2 and fresh.fence > zombie.fence


def test_duplicate_delivery_does_not_steal_a_live_run(env):
    settings, sessions = env
    run_id = _queued_run(sessions)
    assert _start(sessions, run_id, worker="w1") is not None
    assert _start(sessions, run_id, worker="w2") is None  # fresh heartbeat elsewhere: duplicate
    assert _start(sessions, run_id, worker="w1") is not None  # same worker redelivered (pool child lost)


def test_stale_canceling_run_ends_canceled(env):
    settings, sessions = env
    run_id = _queued_run(sessions)
    _start(sessions, run_id)
    with sessions() as session:
        repo.request_cancel(session, run_id)
    time.sleep(0.4)
    assert reconcile_once(settings, sessions, FakeBroker()).canceled == [run_id]
    assert _row(sessions, run_id).status == "canceled"


def test_attempts_cap_fails_with_reason(env):
    settings, sessions = env
    broker = FakeBroker()
    run_id = _queued_run(sessions)
    for _ in range(3):
        assert _start(sessions, run_id, worker=f"w{_}") is not None
        time.sleep(0.4)
        broker.published.clear()
        assert reconcile_once(settings, sessions, broker).requeued == [run_id]
    assert _start(sessions, run_id) is None
    row = _row(sessions, run_id)
    assert (row.status, row.error_type) == ("failed", "worker_lost")
    assert "3 times" in row.error_detail


def test_heartbeat_beats_then_hard_limit_fails_the_attempt(env):
    settings, sessions = env
    run_id = _queued_run(sessions)
    attempt = _start(sessions, run_id)
    before = _row(sessions, run_id).heartbeat_at
    log = logging.LoggerAdapter(logging.getLogger("test"), {})
    with Heartbeat(attempt, sessions, interval_s=0.05, hard_limit_s=0.5, log=log) as beat:
        time.sleep(0.2)
        assert _row(sessions, run_id).heartbeat_at > before
        time.sleep(0.6)  # the training thread is "stuck" past the hard limit
    row = _row(sessions, run_id)
    assert beat.expired and (row.status, row.error_type) == ("failed", "time_limit")
    with sessions() as session, pytest.raises(repo.StaleAttempt):
        repo.should_stop(session, attempt)


def test_soft_time_limit_fails_the_run_with_reason(env):
    settings, sessions = env
    run_id = _queued_run(sessions, iterations=200_000)
    limited = settings.model_copy(update={"max_run_seconds": 1, "cancel_poll_s": 0.05})
    store = ModelStore(limited.models_store)
    started = time.monotonic()
    assert run_job(run_id, settings=limited, sessions=sessions, store=store, worker="t") == "failed"
    assert time.monotonic() - started < 30
    row = _row(sessions, run_id)
    assert row.error_type == "time_limit" and "ODESERVE_MAX_RUN_SECONDS=1" in row.error_detail


def test_reconciler_thread_runs_at_start_and_stops(env):
    settings, sessions = env
    broker = FakeBroker()
    run_id = _queued_run(sessions)
    reconciler = Reconciler(settings, sessions, broker, interval_s=0.05)
    reconciler.start()
    deadline = time.monotonic() + 5
    while not broker.published and time.monotonic() < deadline:
        time.sleep(0.02)
    reconciler.stop()
    assert broker.published == [run_id]
