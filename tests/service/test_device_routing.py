"""A run's ``device`` picks its Celery queue and where the worker trains it."""

from __future__ import annotations

import pytest
import torch

from service.jobs.queue import queue_for
from workers import runner


@pytest.fixture
def fresh_queue(queue):
    """The session's queue with nothing left in it by earlier tests."""
    queue.queued.clear()
    queue.devices.clear()
    return queue


@pytest.mark.parametrize(("device", "expected"), [("auto", "training"), ("cpu", "training"), ("cuda", "gpu")])
def test_cuda_runs_go_to_the_gpu_queue(settings, device, expected):
    routed = settings.model_copy(update={"queue": "training", "gpu_queue": "gpu"})
    assert queue_for(routed, device) == expected


@pytest.mark.parametrize("device", ["auto", "cpu", "cuda"])
def test_train_records_and_publishes_the_requested_device(client, fresh_queue, tiny_run, device):
    run = client.post("/train", json={**tiny_run, "device": device}).json()
    assert run["device_request"] == device
    assert fresh_queue.devices[run["id"]] == device
    assert client.get(f"/runs/{run['id']}").json()["device_request"] == device


def test_default_device_is_auto(client, fresh_queue, tiny_run):
    run = client.post("/train", json=tiny_run).json()
    assert run["device_request"] == "auto" and fresh_queue.devices[run["id"]] == "auto"


def test_unknown_device_is_a_problem_naming_the_choices(client, tiny_run):
    response = client.post("/train", json={**tiny_run, "device": "tpu"})
    assert response.status_code == 422
    assert response.headers["content-type"].startswith("application/problem+json")
    assert "device" in response.text and "cuda" in response.text


def test_sweep_runs_are_published_for_their_device(client, fresh_queue, tiny_run):
    body = {"base": {**tiny_run, "device": "cpu"}, "grid": {"training.seed": [0, 1]}}
    sweep = client.post("/sweeps", json=body)
    assert sweep.status_code == 202, sweep.text
    assert len(fresh_queue.devices) == 2 and set(fresh_queue.devices.values()) == {"cpu"}


@pytest.mark.parametrize(
    ("requested", "setting", "expected"),
    [("cpu", "cuda", "cpu"), ("cuda", "cpu", "cuda"), ("auto", "cpu", "cpu"), ("auto", "cuda", "cuda")],
)
def test_the_request_overrides_the_workers_setting(settings, requested, setting, expected):
    assert runner.pick_device(settings.model_copy(update={"device": setting}), requested) == expected


def test_cpu_request_trains_on_the_cpu(client, fresh_queue, tiny_run):
    run = client.post("/train", json={**tiny_run, "device": "cpu"}).json()
    assert fresh_queue.run_pending() == ["succeeded"]
    assert client.get(f"/runs/{run['id']}").json()["device"] == "cpu"


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks a worker without CUDA")
def test_cuda_request_on_a_worker_without_cuda_fails_and_says_why(client, fresh_queue, tiny_run):
    run = client.post("/train", json={**tiny_run, "device": "cuda"}).json()
    assert fresh_queue.run_pending() == ["failed"]
    error = client.get(f"/runs/{run['id']}").json()["error"]
    assert error["type"] == "config_error"
    assert "no CUDA" in error["detail"] and "ODESERVE_GPU_QUEUE" in error["detail"]
