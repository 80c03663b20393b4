"""A crash between writing a checkpoint and committing its digest loses no progress.

The worker dies (an exception that is not an ``Exception``, like a kill) after the new checkpoint
files are in place but before the database records their digest. The next attempt must resume
from the last committed checkpoint, not from iteration 0, and end with the same weights as an
uninterrupted run.
"""

from __future__ import annotations

import pytest
import torch

from service.db import repository as repo
from service.ml.checkpoint import discard_previous, load_checkpoint, save_checkpoint
from service.ml.errors import CheckpointError
from service.storage.models_store import ModelStore
from workers import runner


class WorkerDied(BaseException):
    """Stands for the process dying inside the window."""


def _weights(settings, run_id):
    return load_checkpoint(ModelStore(settings.models_store).run_dir(run_id)).model.state_dict()


@pytest.fixture
def resumed_from(monkeypatch):
    """Iterations that attempts resumed from (None: started over)."""
    seen: list[int | None] = []
    original = runner._resume_state

    def spy(row, store, log):
        state = original(row, store, log)
        seen.append(state.iteration if state is not None else None)
        return state

    monkeypatch.setattr(runner, "_resume_state", spy)
    return seen


def _crash_once(monkeypatch, name: str, on_call: int):
    original = getattr(repo, name)
    calls = {"n": 0}

    def crashing(session, attempt, **kwargs):
        calls["n"] += 1
        if calls["n"] == on_call:
            raise WorkerDied  # files written, digest not committed
        return original(session, attempt, **kwargs)

    monkeypatch.setattr(repo, name, crashing)
    return original


def _crash_then_resume(client, queue, body, monkeypatch, name, on_call):
    run = client.post("/train", json=body).json()
    original = _crash_once(monkeypatch, name, on_call)
    with pytest.raises(WorkerDied):
        queue.run_pending()
    monkeypatch.setattr(repo, name, original)
    queue.enqueue(run["id"])  # the broker redelivers the unacknowledged message
    return run, queue.run_pending()


def test_crash_before_checkpoint_commit_resumes_from_previous(
    client, queue, tiny_run, settings, monkeypatch, resumed_from
):
    body = {**tiny_run, "training": {"iterations": 12, "batch_size": 32}}
    reference = client.post("/train", json=body).json()
    assert queue.run_pending() == ["succeeded"]
    # checkpoint_every = 4: the checkpoint at 4 commits, the one at 8 is written and never recorded
    run, statuses = _crash_then_resume(client, queue, body, monkeypatch, "record_checkpoint", 2)
    assert statuses == ["succeeded"]
    assert resumed_from[-1] == 4
    done = client.get(f"/runs/{run['id']}").json()
    assert done["attempt"] == 2 and done["progress"]["iteration"] == 12
    expected, got = _weights(settings, reference["id"]), _weights(settings, run["id"])
    assert all(torch.equal(expected[k], got[k]) for k in expected)
    run_dir = ModelStore(settings.models_store).run_dir(run["id"])
    assert not list(run_dir.parent.glob(f".{run_dir.name}.*")), "kept checkpoints are cleaned up"


def test_crash_before_final_commit_keeps_the_last_checkpoint(
    client, queue, tiny_run, settings, monkeypatch, resumed_from
):
    body = {**tiny_run, "training": {"iterations": 8, "batch_size": 32}}
    run, statuses = _crash_then_resume(client, queue, body, monkeypatch, "finish_succeeded", 1)
    assert statuses == ["succeeded"]
    assert resumed_from[-1] == 8  # nothing retrained: the checkpoint at 8 was committed
    assert client.get(f"/runs/{run['id']}").json()["progress"]["iteration"] == 8


def test_previous_checkpoint_is_found_by_digest(tmp_path, trained_run, settings):
    source = load_checkpoint(ModelStore(settings.models_store).run_dir(trained_run["id"]))
    target = tmp_path / "run"
    first = save_checkpoint(target, source.model)
    with torch.no_grad():
        next(source.model.parameters()).add_(1.0)
    second = save_checkpoint(target, source.model)
    assert first != second
    assert load_checkpoint(target, expected_digest=first).digest == first
    assert load_checkpoint(target, expected_digest=second).digest == second
    assert discard_previous(target) == 1
    with pytest.raises(CheckpointError, match="digest"):
        load_checkpoint(target, expected_digest=first)
    # a kill between the two renames: only the kept previous checkpoint exists
    with torch.no_grad():
        next(source.model.parameters()).add_(1.0)
    third = save_checkpoint(target, source.model)
    (tmp_path / ".run.tmp-x").mkdir()
    target.rename(tmp_path / f".run.prev-{third}")
    assert load_checkpoint(target, expected_digest=third).digest == third
    assert discard_previous(target) == 3  # prev-second, prev-third, the tmp leftover
