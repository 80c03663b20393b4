"""A small tolerance sweep end to end through a real Celery worker, then its table and figures."""

from __future__ import annotations

import io
import math
import time

import pytest
from PIL import Image

pytestmark = pytest.mark.integration

BASE = {
    "model": "ffjord",
    "dataset": {"name": "beta_1", "n_train": 500, "n_test": 100},
    "model_config": {"hidden_dims": [8], "time_conditioning": "positional"},
    "solver": {"method": "dopri5", "rtol": 1e-3, "atol": 1e-3},
    "training": {"iterations": 6, "batch_size": 32, "seed": 2},
}
ATOLS = [1e-1, 1e-4]


def _png(response) -> Image.Image:
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "image/png"
    image = Image.open(io.BytesIO(response.content))
    image.load()
    assert image.size[0] >= 300 and image.size[1] >= 200
    return image


def test_tolerance_sweep_runs_on_the_worker(client, worker):
    response = client.post("/sweeps", json={"base": BASE, "grid": {"solver.atol": ATOLS}, "name": "it"})
    assert response.status_code == 202, response.text
    location = response.headers["location"]
    deadline = time.monotonic() + 180
    while (sweep := client.get(location).json())["status"] in ("queued", "running"):
        if time.monotonic() > deadline:
            tail = worker.log_path.read_text(errors="replace")[-3000:]
            pytest.fail(f"sweep still {sweep['status']} after 180s\n{tail}")
        time.sleep(0.3)
    assert sweep["status"] == "succeeded", sweep
    assert [r["status"] for r in sweep["runs"]] == ["succeeded", "succeeded"]
    assert [row["run_id"] for row in sweep["table"]] == [r["id"] for r in sweep["runs"]]
    for row, run in zip(sweep["table"], sweep["runs"], strict=True):
        assert row["solver.atol"] == run["solver"]["atol"] == run["sweep_values"]["solver.atol"]
        for key in (
            "wall_clock_s",
            "nfe_forward_mean",
            "nfe_backward_mean",
            "train_loss",
            "test_nll",
            "test_nll_tight",
        ):
            assert row[key] == run["metrics"][key] and math.isfinite(row[key]), key
        assert row["kl_to_truth"] == pytest.approx(row["test_nll"])  # beta_1 is uniform: entropy 0
    listed = client.get("/runs", params={"sweep_id": sweep["id"]}).json()["items"]
    assert {r["id"] for r in listed} == {r["id"] for r in sweep["runs"]}

    _png(client.get(f"{location}/plot.png"))
    run_id = sweep["runs"][0]["id"]
    for kind in ("density", "samples", "loss", "flow"):
        _png(client.get(f"/runs/{run_id}/plots/{kind}.png"))
    gif = client.get(f"/runs/{run_id}/plots/flow.gif")
    assert gif.status_code == 200 and gif.headers["content-type"] == "image/gif"


def test_cancel_sweep_on_the_worker(client, worker):
    long = {**BASE, "training": {"iterations": 100_000, "batch_size": 32}}
    sweep = client.post("/sweeps", json={"base": long, "grid": {"training.seed": [0, 1]}}).json()
    canceled = client.post(f"/sweeps/{sweep['id']}/cancel")
    assert canceled.status_code == 202
    deadline = time.monotonic() + 60
    while (state := client.get(f"/sweeps/{sweep['id']}").json())["status"] in ("queued", "running"):
        assert time.monotonic() < deadline, state
        time.sleep(0.3)
    assert state["status"] == "canceled" and state["cancel_requested"]
