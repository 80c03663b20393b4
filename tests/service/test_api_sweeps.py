"""Sweeps through the API with the worker code in-process: create, run, table, list, cancel, errors."""

from __future__ import annotations

import io
import math
from typing import Any

import pytest
from PIL import Image

from service.jobs.sweeps import MAX_SWEEP_RUNS

BASE: dict[str, Any] = {
    "model": "ffjord",
    "dataset": {"name": "normal_1d", "n_train": 300, "n_test": 50},
    "model_config": {"hidden_dims": [8]},
    "solver": {"method": "dopri5", "rtol": 1e-3, "atol": 1e-3},
    "training": {"iterations": 4, "batch_size": 32},
}
ATOLS = [1e-2, 1e-4]
NORMAL_1D_ENTROPY = 0.5 * math.log(2 * math.pi * math.e * 0.7**2)
METRICS = (
    "wall_clock_s",
    "nfe_forward_mean",
    "nfe_backward_mean",
    "train_loss",
    "test_nll",
    "test_nll_tight",
    "test_nll_tight_gap",
    "kl_to_truth",
)


def _sweep(client, grid, **extra) -> Any:
    return client.post("/sweeps", json={"base": BASE, "grid": grid, **extra})


def test_sweep_creates_runs_that_train_and_tabulate(client, queue):
    response = _sweep(client, {"solver.atol": ATOLS}, name="tol")
    assert response.status_code == 202, response.text
    sweep = response.json()
    assert response.headers["location"] == f"/sweeps/{sweep['id']}"
    assert sweep["status"] == "queued" and sweep["run_count"] == 2 and sweep["grid_keys"] == ["solver.atol"]
    ids = [run["id"] for run in sweep["runs"]]
    assert queue.queued[-2:] == ids
    listed = client.get("/runs", params={"sweep_id": sweep["id"]}).json()["items"]
    assert sorted(r["id"] for r in listed) == sorted(ids)
    assert {r["id"]: r["sweep_values"] for r in listed} == {
        ids[0]: {"solver.atol": ATOLS[0]},
        ids[1]: {"solver.atol": ATOLS[1]},
    }
    assert [r["solver"]["atol"] for r in sweep["runs"]] == ATOLS
    assert all(r["sweep_id"] == sweep["id"] and r["name"].startswith("tol: ") for r in sweep["runs"])

    assert queue.run_pending() == ["succeeded", "succeeded"]
    done = client.get(f"/sweeps/{sweep['id']}").json()
    assert done["status"] == "succeeded"
    assert done["counts"]["succeeded"] == 2
    assert [row["run_id"] for row in done["table"]] == ids
    for row, run in zip(done["table"], done["runs"], strict=True):
        assert row["solver.atol"] == run["solver"]["atol"] and row["status"] == "succeeded"
        for key in METRICS:
            assert math.isfinite(row[key]), key
        for key in ("test_nll", "test_nll_tight", "nfe_forward_mean", "nfe_backward_mean", "train_loss"):
            assert row[key] == run["metrics"][key], key
        history = client.get(f"/runs/{run['id']}/metrics").json()
        assert row["nfe_forward_mean"] == pytest.approx(sum(h["nfe_forward"] for h in history) / 4)
        assert row["kl_to_truth"] == pytest.approx(row["test_nll"] - NORMAL_1D_ENTROPY)

    summaries = client.get("/sweeps").json()["items"]
    assert summaries[0]["id"] == sweep["id"] and summaries[0]["status"] == "succeeded"
    chart = client.get(f"/sweeps/{sweep['id']}/plot.png")
    assert chart.status_code == 200 and chart.headers["content-type"] == "image/png"
    assert Image.open(io.BytesIO(chart.content)).size[0] > 200
    assert client.get(f"/sweeps/{sweep['id']}/plot.png").content == chart.content  # cached


def test_sweep_over_datasets_names_each_run(client, queue):
    response = _sweep(client, {"dataset.name": ["normal_1d", "beta_1"], "training.seed": [0, 1]})
    assert response.status_code == 202, response.text
    runs = response.json()["runs"]
    assert [(r["dataset"]["name"], r["training"]["seed"]) for r in runs] == [
        ("normal_1d", 0),
        ("normal_1d", 1),
        ("beta_1", 0),
        ("beta_1", 1),
    ]
    canceled = client.post(f"/sweeps/{response.json()['id']}/cancel").json()
    assert canceled["status"] == "canceled" and canceled["cancel_requested"]
    assert queue.run_pending() == [None] * 4  # canceled before a worker took them


def test_cancel_sweep_stops_remaining_runs_and_keeps_finished(client, queue):
    sweep = _sweep(client, {"solver.atol": ATOLS}).json()
    held = sweep["runs"][1]["id"]
    queue.queued.remove(held)  # only the first run reaches the worker before the cancel
    assert queue.run_pending() == ["succeeded"]
    response = client.post(f"/sweeps/{sweep['id']}/cancel")
    assert response.status_code == 202
    body = response.json()
    assert [r["status"] for r in body["runs"]] == ["succeeded", "canceled"]
    assert body["status"] == "partial" and body["canceled_at"] is not None
    assert client.post(f"/sweeps/{sweep['id']}/cancel").json()["status"] == "partial"
    queue.queued.append(held)
    assert queue.run_pending() == [None]


@pytest.mark.parametrize(
    ("grid", "field"),
    [
        ({}, "grid"),
        ({"solver.nope": [1]}, "grid.solver.nope"),
        ({"nope.atol": [1]}, "grid.nope.atol"),
        ({"solver.atol": []}, "grid.solver.atol"),
        ({"solver.atol": 1e-3}, "grid.solver.atol"),
        ({"solver.atol": [1e-3, 1e-3]}, "grid.solver.atol"),
        ({"solver.atol": [-1.0]}, "grid.solver.atol"),
        ({"solver.atol": ["tight"]}, "grid.solver.atol"),
        ({"solver.method": ["dopri5", "magic"]}, "grid.solver.method"),
        ({"model_config.hidden_dims": [[8], [0]]}, "grid.model_config.hidden_dims"),
        ({"training.iterations": [0]}, "grid.training.iterations"),
        ({"dataset.name": ["normal_1d", "atlantis"]}, "grid.dataset.name"),
        ({"dataset.name": ["normal_1d", "periodic"]}, "grid.dataset.name"),
        ({"training.seed": list(range(MAX_SWEEP_RUNS + 1))}, "grid"),
    ],
)
def test_bad_grid_is_a_422_naming_the_field_and_creates_nothing(client, queue, problem, grid, field):
    before = len(client.get("/sweeps", params={"limit": 100}).json()["items"])
    queued = list(queue.queued)
    problem(_sweep(client, grid), 422, field)
    assert len(client.get("/sweeps", params={"limit": 100}).json()["items"]) == before
    assert queue.queued == queued


def test_bad_base_is_a_422_naming_the_base_field(client, problem):
    body = {"base": {**BASE, "solver": {"atol": -1}}, "grid": {"training.seed": [0, 1]}}
    problem(client.post("/sweeps", json=body), 422, "base.solver.atol")
    body = {"base": {**BASE, "model_config": {"hidden_dims": [0]}}, "grid": {"training.seed": [0]}}
    fields = [e["field"] for e in problem(client.post("/sweeps", json=body), 422)["errors"]]
    assert fields[0].startswith("base.model_config.hidden_dims"), fields
    problem(client.post("/sweeps", json={"grid": {"solver.atol": [0.1]}}), 422, "base")


def test_unknown_sweep_is_404(client, problem):
    missing = "00000000-0000-4000-8000-000000000000"
    problem(client.get(f"/sweeps/{missing}"), 404, "sweep_id")
    problem(client.post(f"/sweeps/{missing}/cancel"), 404, "sweep_id")
    problem(client.get(f"/sweeps/{missing}/plot.png"), 404, "sweep_id")
    problem(client.get("/sweeps", params={"cursor": "garbage"}), 422, "cursor")


def test_broker_down_still_accepts_the_sweep_with_queued_runs(client, queue, monkeypatch):
    def down(run_id: str) -> None:
        raise ConnectionError("broker unreachable")

    monkeypatch.setattr(queue, "enqueue", down)
    response = _sweep(client, {"solver.atol": ATOLS})
    assert response.status_code == 202, response.text
    sweep = client.get(response.headers["location"]).json()
    assert sweep["status"] == "queued" and sweep["counts"]["queued"] == 2  # the reconciler publishes
    monkeypatch.undo()
    client.post(f"/sweeps/{sweep['id']}/cancel")


def test_sweep_list_pages(client, queue):
    for _ in range(2):
        client.post(f"/sweeps/{_sweep(client, {'training.seed': [5]}).json()['id']}/cancel")
    queue.run_pending()
    page = client.get("/sweeps", params={"limit": 1}).json()
    assert len(page["items"]) == 1 and page["next"]
    second = client.get(page["next"]).json()
    assert second["items"][0]["id"] != page["items"][0]["id"]
