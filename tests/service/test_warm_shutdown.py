"""Warm shutdown: a job stops before its next step, checkpoints, and goes back to the queue uncounted.

The worker's ``shutting_down`` event is stood in for by one that turns set after a number of
checks (``fit`` checks before every step); the rest is the real job code on the session database.
"""

from __future__ import annotations

import threading

import pytest
import torch

from service.db import repository as repo
from service.db.leases import release_attempt
from service.ml.checkpoint import load_checkpoint
from service.storage.models_store import ModelStore
from workers.runner import run_job


class SetAfter(threading.Event):
    """An event that reads as set from its ``checks``-th ``is_set()`` on."""

    def __init__(self, checks: int) -> None:
        super().__init__()
        self.checks, self.seen = checks, 0

    def is_set(self) -> bool:
        self.seen += 1
        return self.seen >= self.checks


def _run(settings, sessions, queue, run_id, shutdown=None):
    store = ModelStore(settings.models_store)
    return run_job(
        run_id,
        settings=settings,
        sessions=sessions,
        store=store,
        worker="t",
        shutdown=shutdown,
        publisher=queue,
    )


def test_shutdown_hands_the_job_back_and_the_next_worker_finishes_it_identically(
    client, queue, tiny_run, settings, sessions, caplog
):
    body = {**tiny_run, "training": {"iterations": 10, "batch_size": 32, "seed": 2}}
    reference = client.post("/train", json=body).json()
    assert queue.run_pending() == ["succeeded"]
    run = client.post("/train", json=body).json()
    queue.queued.clear()

    assert _run(settings, sessions, queue, run["id"], SetAfter(7)) == "queued"  # before step 7
    paused = client.get(f"/runs/{run['id']}").json()
    assert paused["status"] == "queued" and paused["attempt"] == 0  # the attempt is not counted
    assert queue.queued == [run["id"]]  # published again
    with sessions() as session:
        row = repo.get_run(session, run["id"])
        assert row.checkpoint_iteration == 6 and row.worker is None and row.heartbeat_at is None
    rows = client.get(f"/runs/{run['id']}/metrics").json()
    assert [r["iteration"] for r in rows] == list(range(1, 7))  # flushed up to the checkpoint

    with caplog.at_level("INFO", logger="workers.runner"):
        assert queue.run_pending() == ["succeeded"]
    assert f"run={run['id']} resuming from iteration 6" in caplog.text
    done = client.get(f"/runs/{run['id']}").json()
    assert done["attempt"] == 1 and done["progress"]["iteration"] == 10
    history = client.get(f"/runs/{run['id']}/metrics").json()
    ref_history = client.get(f"/runs/{reference['id']}/metrics").json()
    assert [r["iteration"] for r in history] == list(range(1, 11))
    assert [r["loss"] for r in history] == [r["loss"] for r in ref_history]
    store = ModelStore(settings.models_store)
    expected = load_checkpoint(store.run_dir(reference["id"])).model.state_dict()
    got = load_checkpoint(store.run_dir(run["id"])).model.state_dict()
    assert all(torch.equal(expected[k], got[k]) for k in expected)


def test_repeated_shutdowns_never_use_up_the_attempts(client, queue, tiny_run, settings, sessions):
    deploys = settings.max_attempts + 2  # more deploys than attempts allowed
    body = {**tiny_run, "training": {"iterations": 2 * deploys + 2, "batch_size": 32}}
    run = client.post("/train", json=body).json()
    queue.queued.clear()
    for deploy in range(1, deploys + 1):  # each one trains two steps, checkpoints and hands back
        assert _run(settings, sessions, queue, run["id"], SetAfter(3)) == "queued"
        with sessions() as session:
            assert repo.get_run(session, run["id"]).checkpoint_iteration == 2 * deploy
    assert client.get(f"/runs/{run['id']}").json()["attempt"] == 0
    queue.queued.clear()
    assert _run(settings, sessions, queue, run["id"]) == "succeeded"


def test_shutdown_of_a_run_being_canceled_ends_it_canceled(client, queue, tiny_run, settings, sessions):
    run = client.post("/train", json=tiny_run).json()
    queue.queued.clear()
    with sessions() as session:
        attempt = repo.start_attempt(session, run["id"], device="cpu", worker="t", max_attempts=3)
    assert client.post(f"/runs/{run['id']}/cancel").status_code == 202
    with sessions() as session:
        assert release_attempt(session, attempt) == "canceled"
        with pytest.raises(repo.StaleAttempt):
            release_attempt(session, attempt)  # once ended, the attempt holds nothing
    assert client.get(f"/runs/{run['id']}").json()["status"] == "canceled"
