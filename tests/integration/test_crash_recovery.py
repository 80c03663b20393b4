"""Crash recovery with real processes: ``kill -9`` a training worker; restart the broker empty.

Both tests use the session database (PostgreSQL, or SQLite outside CI) and real Celery workers
(solo pool) on their own queue. Timings are shortened through settings: heartbeats every 0.3 s,
stale after 2 s, a reconciler pass every 0.5 s, queued runs republished after 2 s.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import signal
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from processes import (  # tests/integration is on sys.path (rootless test dir)
    QUICK_RUN,
    TERMINAL,
    Redis,
    fast_recovery,
    post_run,
    start_worker,
    stop,
    wait_for_run,
)
from sqlalchemy import select
from sqlalchemy.exc import OperationalError

from service.api.main import create_app
from service.config import Settings
from service.db import RunRow, make_engine, make_session_factory
from service.jobs.queue import CeleryDispatcher
from service.ml.checkpoint import MANIFEST, load_checkpoint
from service.storage.models_store import ModelStore

pytestmark = pytest.mark.integration

CRASH_RUN = {
    **QUICK_RUN,
    "dataset": {"name": "8gaussians", "n_train": 1000, "n_test": 200},
    "model_config": {"hidden_dims": [16, 16]},
    "training": {"iterations": 40, "batch_size": 64, "seed": 3},
}


@pytest.fixture
def fast_settings(settings: Settings) -> Settings:
    return fast_recovery(settings, "recovery")


def _waiter(client: TestClient, log: Path) -> Callable[..., dict[str, Any]]:
    def wait(run_id: str, until: Callable[[dict[str, Any]], bool], timeout: float = 120) -> dict[str, Any]:
        return wait_for_run(client, run_id, until, [log], timeout)

    return wait


def _weights_digest(store: ModelStore, run_id: str) -> str:
    state = load_checkpoint(store.run_dir(run_id)).model.state_dict()
    digest = hashlib.sha256()
    for name in sorted(state):
        digest.update(name.encode() + state[name].detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def test_killed_worker_resumes_from_checkpoint_to_the_same_result(fast_settings, tmp_path):
    log = tmp_path / "workers.log"
    store = ModelStore(fast_settings.models_store)
    first = start_worker(fast_settings, log)
    second = None
    try:
        with TestClient(create_app(fast_settings)) as client:
            wait = _waiter(client, log)
            reference = post_run(client, CRASH_RUN)  # uninterrupted, same seed
            crashed = post_run(client, CRASH_RUN)
            assert wait(reference, lambda r: r["status"] in TERMINAL)["status"] == "succeeded"
            midway = wait(crashed, lambda r: r["checkpoint_sha256"] is not None or r["status"] in TERMINAL)
            assert midway["status"] == "running", "the run finished before it could be killed"
            os.kill(first.pid, signal.SIGKILL)
            first.wait(timeout=10)
            killed_at = client.get(f"/runs/{crashed}").json()["progress"]["iteration"]
            assert 10 <= killed_at < 40

            second = start_worker(fast_settings, log)  # its reconciler finds the silent run
            done = wait(crashed, lambda r: r["status"] in TERMINAL)
            ref = client.get(f"/runs/{reference}").json()
            history = client.get(f"/runs/{crashed}/metrics").json()
            ref_history = client.get(f"/runs/{reference}/metrics").json()
    finally:
        stop(first)
        stop(second)
    assert done["status"] == "succeeded" and done["attempt"] >= 2, done
    assert done["progress"]["iteration"] == ref["progress"]["iteration"] == 40
    assert [h["iteration"] for h in history] == list(range(1, 41))  # no duplicates, none missing
    assert [h["loss"] for h in history] == [h["loss"] for h in ref_history]
    assert done["metrics"]["test_nll"] == ref["metrics"]["test_nll"]
    assert done["metrics"]["train_loss"] == ref["metrics"]["train_loss"]
    assert _weights_digest(store, crashed) == _weights_digest(store, reference)
    text = log.read_text(errors="replace")
    assert f"run={crashed} resuming from iteration" in text
    assert f"run={crashed} heartbeat stale" in text


def test_sigterm_hands_the_run_back_uncounted_and_it_finishes_identically(fast_settings, tmp_path):
    """A deploy: SIGTERM makes a warm shutdown, the run checkpoints, goes back to the queue with its
    attempt not counted, and the next worker finishes it to the uninterrupted result."""
    log = tmp_path / "workers.log"
    store = ModelStore(fast_settings.models_store)
    body = {**CRASH_RUN, "training": {**CRASH_RUN["training"], "iterations": 60}}
    first = start_worker(fast_settings, log)
    second = None
    try:
        with TestClient(create_app(fast_settings)) as client:
            wait = _waiter(client, log)
            reference = post_run(client, body)
            stopped = post_run(client, body)
            assert wait(reference, lambda r: r["status"] in TERMINAL)["status"] == "succeeded"
            wait(stopped, lambda r: r["progress"]["iteration"] >= 3 or r["status"] in TERMINAL)
            first.send_signal(signal.SIGTERM)
            first.wait(timeout=30)  # the warm shutdown waits for the job, which stops at its next step
            handed_back = client.get(f"/runs/{stopped}").json()
            assert handed_back["status"] == "queued" and handed_back["attempt"] == 0, handed_back
            paused_at = handed_back["progress"]["iteration"]
            assert 3 <= paused_at < 60

            second = start_worker(fast_settings, log)
            done = wait(stopped, lambda r: r["status"] in TERMINAL)
            history = client.get(f"/runs/{stopped}/metrics").json()
            ref_history = client.get(f"/runs/{reference}/metrics").json()
    finally:
        stop(first)
        stop(second)
    assert first.returncode == 0  # a clean exit, not a kill
    assert done["status"] == "succeeded" and done["attempt"] == 1, done
    assert [h["iteration"] for h in history] == list(range(1, 61))
    assert [h["loss"] for h in history] == [h["loss"] for h in ref_history]
    assert _weights_digest(store, stopped) == _weights_digest(store, reference)
    text = log.read_text(errors="replace")
    assert f"run={stopped} worker shutting down: handed back" in text
    assert f"run={stopped} resuming from iteration {paused_at}" in text


def _in_checkpoint_window(store: ModelStore, sessions, run_id: str) -> int | None:
    """While the worker is stopped: the committed checkpoint iteration if the worker is between
    swapping in a new checkpoint and committing its digest (the old one kept as ``.prev``)."""
    with sessions() as session:
        row = session.execute(
            select(RunRow.checkpoint_sha256, RunRow.checkpoint_iteration).where(RunRow.id == run_id)
        ).one()
    directory = store.run_dir(run_id)
    if (
        row.checkpoint_sha256 is None
        or not (directory.parent / f".{directory.name}.prev-{row.checkpoint_sha256}").is_dir()
    ):
        return None
    try:
        on_disk = json.loads((directory / MANIFEST).read_text())["digest"]
    except (OSError, ValueError, KeyError):
        on_disk = None  # between the two renames: no checkpoint at the run's path at all
    return row.checkpoint_iteration if on_disk != row.checkpoint_sha256 else None


def test_kill_9_inside_the_checkpoint_window_resumes_from_the_committed_one(fast_settings, tmp_path):
    """A real SIGKILL between a checkpoint's swap and its digest's commit. With a checkpoint every
    step the window is open much of the time; the worker is frozen (SIGSTOP) at random moments
    until one falls inside it, then killed there."""
    settings = fast_settings.model_copy(update={"checkpoint_every": 1})
    log = tmp_path / "workers.log"
    store = ModelStore(settings.models_store)
    engine = make_engine(settings.database_url)
    sessions = make_session_factory(engine)
    rng = random.Random(0)
    first, second, committed = start_worker(settings, log), None, None
    try:
        with TestClient(create_app(settings)) as client:
            wait = _waiter(client, log)
            reference = post_run(client, CRASH_RUN)
            assert wait(reference, lambda r: r["status"] in TERMINAL)["status"] == "succeeded"
            crashed = post_run(client, CRASH_RUN)
            wait(crashed, lambda r: r["checkpoint_sha256"] is not None)
            for _ in range(2000):
                os.kill(first.pid, signal.SIGSTOP)
                try:
                    committed = _in_checkpoint_window(store, sessions, crashed)
                except OperationalError:  # SQLite locked by the frozen writer: not this time
                    committed = None
                if committed is not None:
                    os.kill(first.pid, signal.SIGKILL)
                    break
                os.kill(first.pid, signal.SIGCONT)
                time.sleep(rng.uniform(0, 0.01))
            first.wait(timeout=10)
            assert committed is not None, "never caught the worker inside the window"
            second = start_worker(settings, log)
            done = wait(crashed, lambda r: r["status"] in TERMINAL)
    finally:
        stop(first)
        stop(second)
        engine.dispose()
    assert done["status"] == "succeeded" and done["attempt"] == 2, done
    text = log.read_text(errors="replace")
    assert f"run={crashed} resuming from iteration {committed}" in text  # not from 0
    assert _weights_digest(store, crashed) == _weights_digest(store, reference)


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[Redis]:
    redis = Redis(tmp_path)
    redis.start()
    yield redis
    redis.stop()


def test_broker_restarted_empty_loses_no_run(fast_settings, private_redis, tmp_path):
    settings = fast_settings.model_copy(update={"redis_url": private_redis.url})
    log = tmp_path / "worker.log"
    worker = start_worker(settings, log)
    try:
        with TestClient(create_app(settings)) as client:
            wait = _waiter(client, log)
            runs = [post_run(client, {**QUICK_RUN, "name": f"r{i}"}) for i in range(5)]
            wait(runs[0], lambda r: r["status"] == "succeeded")
            wait(runs[1], lambda r: r["status"] != "queued")

            private_redis.kill()  # runs[2:] are queued: their messages die with Redis
            ready = client.get("/readyz")
            assert ready.status_code == 503 and ready.json()["checks"]["database"] == "ok"
            query = client.get("/density", params={"run_id": runs[0], "x": "0,0"})
            assert query.status_code == 200  # trained runs keep answering without a broker
            runs.append(post_run(client, {**QUICK_RUN, "name": "while-down"}))  # accepted, not lost
            private_redis.restart_empty()

            wait(runs[2], lambda r: r["status"] == "succeeded")
            private_redis.restart_empty()  # again, with runs still queued
            finals = [wait(run_id, lambda r: r["status"] in TERMINAL) for run_id in runs]
            histories = [client.get(f"/runs/{run_id}/metrics").json() for run_id in runs]
            assert client.get("/readyz").status_code == 200
    finally:
        stop(worker)
    assert private_redis.restarts == 2
    for run, history in zip(finals, histories, strict=True):
        assert run["status"] == "succeeded", run
        assert run["attempt"] == 1, run  # ran exactly once
        assert run["progress"]["iteration"] == 12
        assert [h["iteration"] for h in history] == list(range(1, 13))
    assert "republished" in log.read_text(errors="replace")


def test_broker_scan_reads_real_celery_messages(settings):
    """The reconciler's view of Redis, on messages published by the real producer."""
    name = f"scan-{uuid.uuid4().hex[:8]}"
    scanning = settings.model_copy(update={"queue": name, "gpu_queue": f"{name}-gpu"})
    dispatcher = CeleryDispatcher(scanning)
    waiting, delivered, on_gpu = str(uuid.uuid4()), str(uuid.uuid4()), str(uuid.uuid4())
    dispatcher.enqueue(delivered)
    dispatcher.enqueue(waiting)
    dispatcher.enqueue(on_gpu, "cuda")  # a queue of its own, which the scan reads too
    with dispatcher.app.connection_for_read() as connection:
        queue = connection.SimpleQueue(scanning.queue)
        message = queue.get(timeout=5)  # delivered, not acknowledged: sits in ``unacked``
        view = dispatcher.scan(delivered_within_s=60)
        assert waiting in view.waiting and delivered not in view.waiting
        assert on_gpu in view.waiting
        assert delivered in view.delivered
        assert delivered not in dispatcher.scan(delivered_within_s=0).delivered
        message.ack()
        assert delivered not in dispatcher.scan(delivered_within_s=60).live
        queue.get(timeout=5).ack()
        queue.close()
        gpu_queue = connection.SimpleQueue(scanning.gpu_queue)
        gpu_message = gpu_queue.get(timeout=5)
        assert on_gpu in gpu_message.headers["argsrepr"]
        gpu_message.ack()
        gpu_queue.close()
    assert not {waiting, delivered, on_gpu} & dispatcher.scan(delivered_within_s=60).live
