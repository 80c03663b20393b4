"""End to end through a real Celery worker: train, query, fail cleanly, cancel."""

from __future__ import annotations

import math

import pytest

pytestmark = pytest.mark.integration

SMALL = {
    "model": "ffjord",
    "dataset": {"name": "8gaussians", "n_train": 1000, "n_test": 200},
    "model_config": {"hidden_dims": [16, 16]},
    "solver": {"method": "dopri5", "rtol": 1e-3, "atol": 1e-3},
    "training": {"iterations": 30, "batch_size": 64, "seed": 1},
}


def _post(client, body, **headers):
    response = client.post("/train", json=body, headers=headers)
    assert response.status_code == 202, response.text
    assert response.headers["location"] == f"/runs/{response.json()['id']}"
    return response.json()


def test_train_then_serve_density_and_samples(client, wait_for):
    run = _post(client, SMALL, **{"Idempotency-Key": "it-train-1"})
    assert run["status"] == "queued"
    assert _post(client, SMALL, **{"Idempotency-Key": "it-train-1"})["id"] == run["id"]
    done = wait_for(run["id"], timeout=120)
    assert done["status"] == "succeeded", done
    assert done["progress"] == {"iteration": 30, "total": 30, "fraction": 1.0, "eta_s": 0.0}
    assert done["attempt"] == 1 and done["device"] in ("cpu", "cuda")
    for key in (
        "train_loss",
        "test_nll",
        "nfe_forward_mean",
        "nfe_backward_mean",
        "test_nll_tight",
        "wall_clock_s",
        "iterations_per_s",
    ):
        assert math.isfinite(done["metrics"][key]), key
    history = client.get(f"/runs/{run['id']}/metrics").json()
    assert [h["iteration"] for h in history] == list(range(1, 31))

    density = client.get("/density", params={"run_id": run["id"], "x": ["0.5,1.2", "-1,0", "2,2"]})
    assert density.status_code == 200, density.text
    values = density.json()["log_density"]
    assert len(values) == 3 and all(math.isfinite(v) for v in values)
    posted = client.post("/density", json={"run_id": run["id"], "points": [[0.5, 1.2], [-1, 0], [2, 2]]})
    assert posted.json()["log_density"] == pytest.approx(values, rel=1e-5, abs=1e-5)

    samples = client.get("/sample", params={"run_id": run["id"], "n": 64, "seed": 3}).json()["samples"]
    assert len(samples) == 64 and all(len(s) == 2 and all(math.isfinite(v) for v in s) for s in samples)
    again = client.get("/sample", params={"run_id": run["id"], "n": 64, "seed": 3}).json()["samples"]
    assert again == samples


def test_solver_failure_is_recorded_and_worker_serves_next_job(client, wait_for):
    failing = {**SMALL, "solver": {"method": "dopri5", "rtol": 1e-9, "atol": 1e-9, "max_num_steps": 2}}
    bad = _post(client, failing)
    good = _post(client, {**SMALL, "training": {"iterations": 4, "batch_size": 32}})
    bad_done = wait_for(bad["id"])
    assert bad_done["status"] == "failed"
    assert bad_done["error"]["type"] == "solver_error"
    assert "max_num_steps" in bad_done["error"]["detail"]
    conflict = client.get("/sample", params={"run_id": bad["id"]})
    assert conflict.status_code == 409 and conflict.json()["run_status"] == "failed"
    assert wait_for(good["id"])["status"] == "succeeded"


def test_cancel_running_job(client, wait_for):
    long = {**SMALL, "training": {"iterations": 100_000, "batch_size": 32}}
    run = _post(client, long)
    running = wait_for(run["id"], {"running", "succeeded", "failed", "canceled"})
    assert running["status"] == "running"
    deleted = client.delete(f"/runs/{run['id']}")
    assert deleted.status_code == 409
    canceled = client.post(f"/runs/{run['id']}/cancel")
    assert canceled.status_code == 202
    assert canceled.json()["status"] in ("canceling", "canceled")
    done = wait_for(run["id"], timeout=30)
    assert done["status"] == "canceled"
    assert done["progress"]["iteration"] < 100_000
    assert client.delete(f"/runs/{run['id']}").status_code == 204
    assert client.get(f"/runs/{run['id']}").status_code == 404
