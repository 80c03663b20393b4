"""Job state transitions and fencing in the repository (the only writer)."""

from __future__ import annotations

import uuid

import pytest

from service.db import repository as repo


@pytest.fixture
def run_id(sessions):
    with sessions() as session:
        row, created = repo.create_run(
            session,
            id=str(uuid.uuid4()),
            name=None,
            model="ffjord",
            dataset={"name": "moons"},
            dataset_name="moons",
            model_config={},
            solver={},
            training={},
            total=10,
        )
    assert created
    return row.id


def _start(sessions, run_id, max_attempts=3):
    with sessions() as session:
        return repo.start_attempt(session, run_id, device="cpu", worker="w", max_attempts=max_attempts)


def _status(sessions, run_id):
    with sessions() as session:
        return repo.get_run(session, run_id)


def test_redelivery_fences_out_the_stale_attempt(sessions, run_id):
    first = _start(sessions, run_id)
    assert (first.attempt, first.fence) == (1, 1)
    second = _start(sessions, run_id)  # the broker redelivered: the first worker is presumed dead
    assert (second.attempt, second.fence) == (2, 2)
    history = [{"iteration": 1, "wall_s": 0.1, "loss": 1.0, "nfe_forward": 2, "nfe_backward": 2}]
    with sessions() as session:
        with pytest.raises(repo.StaleAttempt):
            repo.record_progress(session, first, iteration=1, wall_s=0.1, metrics={}, history=history)
        with pytest.raises(repo.StaleAttempt):
            repo.finish_succeeded(session, first, metrics={}, sha256="0" * 64, iteration=10, wall_s=1)
        with pytest.raises(repo.StaleAttempt):
            repo.should_stop(session, first)
        assert repo.run_metrics(session, run_id) == []  # the stale write left nothing behind
        repo.record_progress(
            session, second, iteration=1, wall_s=0.1, metrics={"train_loss": 1.0}, history=history
        )
        assert repo.should_stop(session, second) is False
        repo.finish_failed(session, second, error_type="solver_error", detail="boom")
    row = _status(sessions, run_id)
    assert (row.status, row.error_type, row.attempt, row.iteration) == ("failed", "solver_error", 2, 1)
    assert _start(sessions, run_id) is None  # finished runs are not restarted


def test_attempts_are_bounded(sessions, run_id):
    assert _start(sessions, run_id, max_attempts=2) is not None
    assert _start(sessions, run_id, max_attempts=2) is not None
    assert _start(sessions, run_id, max_attempts=2) is None
    row = _status(sessions, run_id)
    assert (row.status, row.error_type) == ("failed", "worker_lost")


def test_cancel_while_running_then_redelivered(sessions, run_id):
    attempt = _start(sessions, run_id)
    with sessions() as session:
        assert repo.request_cancel(session, run_id).status == "canceling"
        assert repo.should_stop(session, attempt) is True
    assert _start(sessions, run_id) is None  # a redelivered canceling run just ends canceled
    assert _status(sessions, run_id).status == "canceled"


def test_progress_replaces_rows_of_a_lost_attempt(sessions, run_id):
    rows = [
        {"iteration": i, "wall_s": 0.1 * i, "loss": 1.0, "nfe_forward": 2, "nfe_backward": 2, "nll": 1.0}
        for i in (1, 2, 3)
    ]
    first = _start(sessions, run_id)
    with sessions() as session:
        repo.record_progress(session, first, iteration=3, wall_s=0.3, metrics={}, history=rows)
        repo.record_checkpoint(session, first, sha256="0" * 64, iteration=1)
    second = _start(sessions, run_id)  # resumed from the checkpoint at iteration 1
    with sessions() as session:  # rows past the checkpoint went with the lost attempt
        assert [m.iteration for m in repo.run_metrics(session, run_id)] == [1]
        assert repo.get_run(session, run_id).iteration == 1
    with sessions() as session:
        repo.record_progress(session, second, iteration=2, wall_s=0.2, metrics={}, history=rows[1:2])
        metrics = repo.run_metrics(session, run_id)
    assert [m.iteration for m in metrics] == [1, 2] and metrics[0].extra == {"nll": 1.0}


def test_counts_by_status(sessions, run_id):
    with sessions() as session:
        counts = repo.count_by_status(session)
    assert counts["queued"] >= 1 and set(counts) >= {"running", "succeeded", "canceling"}
