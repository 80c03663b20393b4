"""The worker resumes a redelivered run from its last checkpoint, ending with identical weights."""

from __future__ import annotations

import pytest
import torch

from service.db import repository as repo
from service.ml.checkpoint import load_checkpoint
from service.storage.models_store import ModelStore
from workers import runner


class WorkerDied(BaseException):
    """Stands for the process dying (not an Exception, so nothing records a failure)."""


def _weights(settings, run_id):
    return load_checkpoint(ModelStore(settings.models_store).run_dir(run_id)).model.state_dict()


def test_redelivered_run_resumes_from_checkpoint(client, queue, tiny_run, settings, sessions, monkeypatch):
    body = {**tiny_run, "training": {"iterations": 8, "batch_size": 32}}
    reference = client.post("/train", json=body).json()
    assert queue.run_pending() == ["succeeded"]

    crashed = client.post("/train", json=body).json()
    record = repo.record_checkpoint

    def die_after_first_checkpoint(session, attempt, **kwargs):
        record(session, attempt, **kwargs)
        raise WorkerDied

    monkeypatch.setattr(repo, "record_checkpoint", die_after_first_checkpoint)
    with pytest.raises(WorkerDied):
        queue.run_pending()
    monkeypatch.setattr(repo, "record_checkpoint", record)
    midway = client.get(f"/runs/{crashed['id']}").json()
    assert midway["status"] == "running" and midway["attempt"] == 1

    queue.enqueue(crashed["id"])  # the broker redelivers the unacknowledged message
    assert queue.run_pending() == ["succeeded"]
    done = client.get(f"/runs/{crashed['id']}").json()
    assert done["attempt"] == 2 and done["progress"]["iteration"] == 8
    history = client.get(f"/runs/{crashed['id']}/metrics").json()
    assert [h["iteration"] for h in history] == list(range(1, 9))
    expected, got = _weights(settings, reference["id"]), _weights(settings, crashed["id"])
    assert expected.keys() == got.keys()
    assert all(torch.equal(expected[k], got[k]) for k in expected)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_trains_on_cuda_and_serves_on_cpu(client, queue, tiny_run, settings, sessions):
    run = client.post("/train", json=tiny_run).json()
    queue.queued.remove(run["id"])
    cuda = settings.model_copy(update={"device": "cuda"})
    store = ModelStore(settings.models_store)
    status = runner.run_job(run["id"], settings=cuda, sessions=sessions, store=store, worker="gpu")
    assert status == "succeeded"
    assert client.get(f"/runs/{run['id']}").json()["device"] == "cuda"
    response = client.get("/density", params={"run_id": run["id"], "x": "0,0"})
    assert response.status_code == 200


def test_runs_recorded_before_grad_clip_resume_unclipped() -> None:
    from service.ml.training import TrainConfig, resolve_training
    from workers.runner import stored_training

    legacy = {"iterations": 100, "lr": 0.003, "seed": 0}  # a latent ODE run from before grad_clip
    assert stored_training(legacy).grad_clip == 0.0
    assert resolve_training(stored_training(legacy), "latent_ode").grad_clip == 0.0
    recorded = resolve_training(TrainConfig(), "latent_ode").model_dump(mode="json")
    assert stored_training(recorded).grad_clip == 1.0 and stored_training(recorded).lr == 1e-2
