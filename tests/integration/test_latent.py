"""A latent ODE end to end through a real Celery worker: train on ``periodic``, then query it."""

from __future__ import annotations

import math

import pytest

pytestmark = pytest.mark.integration

LATENT = {
    "model": "latent_ode",
    "dataset": {"name": "periodic"},
    "model_config": {
        "latent_dim": 4,
        "encoder_hidden": 16,
        "dynamics_hidden": [16],
        "decoder_hidden": [16],
        "iwae_samples": 4,
    },
    "solver": {"method": "dopri5", "rtol": 1e-3, "atol": 1e-4},
    "training": {"iterations": 30, "batch_size": 32, "lr": 1e-2, "seed": 0},
}


def test_train_latent_ode_then_predict_sample_and_score(client, wait_for):
    response = client.post("/train", json=LATENT)
    assert response.status_code == 202, response.text
    done = wait_for(response.json()["id"], timeout=180)
    assert done["status"] == "succeeded", done
    metrics = done["metrics"]
    for key in ("train_loss", "train_elbo", "test_nll", "test_mse_interp", "test_mse_extrap"):
        assert math.isfinite(metrics[key]), key
    for key in ("test_rmse_extrap", "test_rmse_extrap_baseline", "nfe_forward_mean", "wall_clock_s"):
        assert math.isfinite(metrics[key]), key

    times = [0.0, 0.3, 0.7, 1.2, 1.6, 2.1]
    body = {
        "run_id": done["id"],
        "times": times,
        "values": [[math.sin(2.0 * t)] for t in times],
        "predict_times": [0.5, 1.0, 3.0, 4.0, 5.0],
        "n_samples": 8,
    }
    predicted = client.post("/predict", json=body)
    assert predicted.status_code == 200, predicted.text
    out = predicted.json()
    assert out["run_id"] == done["id"] and out["predict_times"] == body["predict_times"]
    for key in ("mean", "std"):
        assert len(out[key]) == 5 and all(len(row) == 1 and math.isfinite(row[0]) for row in out[key])
    assert client.post("/predict", json=body).json() == out

    params = {"run_id": done["id"], "n": 4, "seed": 1, "t": "0,1,2"}
    paths = client.get("/sample", params=params).json()
    assert paths["times"] == [0.0, 1.0, 2.0] and len(paths["samples"]) == 4
    assert all(len(path) == 3 and len(path[0]) == 1 for path in paths["samples"])

    series = [{"times": times, "values": body["values"]}]
    bound = client.post("/density", json={"run_id": done["id"], "series": series})
    assert bound.status_code == 200 and math.isfinite(bound.json()["log_density"][0])
