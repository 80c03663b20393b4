"""Density and sample routes on a run trained by the real worker code."""

from __future__ import annotations

import math
import uuid

from service.ml.checkpoint import load_checkpoint
from service.schemas.runs import MAX_SAMPLE_N
from service.storage.models_store import ModelStore


def test_density_get_and_post_agree(client, trained_run):
    run_id = trained_run["id"]
    got = client.get("/density", params={"run_id": run_id, "x": ["0.5,1.2", "-1,0"]})
    assert got.status_code == 200, got.text
    body = got.json()
    assert body["run_id"] == run_id and len(body["log_density"]) == 2
    assert all(math.isfinite(v) for v in body["log_density"])
    posted = client.post("/density", json={"run_id": run_id, "points": [[0.5, 1.2], [-1, 0]]})
    assert posted.status_code == 200
    assert posted.json()["log_density"] == body["log_density"]


def test_density_matches_the_checkpoint_loaded_by_the_core(client, trained_run, settings):
    import torch

    loaded = load_checkpoint(ModelStore(settings.models_store).run_dir(trained_run["id"]))
    with torch.no_grad():
        expected = loaded.model.log_prob(torch.tensor([[0.25, -0.75]])).tolist()
    got = client.post("/density", json={"run_id": trained_run["id"], "points": [[0.25, -0.75]]})
    assert got.json()["log_density"] == [float(v) for v in expected]
    assert loaded.digest == trained_run["checkpoint_sha256"]


def test_sample_shapes_and_seed_determinism(client, trained_run):
    params = {"run_id": trained_run["id"], "n": 17, "seed": 5}
    first = client.get("/sample", params=params).json()["samples"]
    assert len(first) == 17 and all(len(row) == 2 for row in first)
    assert all(math.isfinite(v) for row in first for v in row)
    assert client.get("/sample", params=params).json()["samples"] == first
    assert client.get("/sample", params={**params, "seed": 6}).json()["samples"] != first


def test_sample_n_limit_is_enforced(client, trained_run, problem):
    problem(client.get("/sample", params={"run_id": trained_run["id"], "n": MAX_SAMPLE_N + 1}), 422, "n")
    assert client.get("/sample", params={"run_id": trained_run["id"], "n": 1}).status_code == 200


def test_queries_on_unfinished_run_are_409_with_status(client, queue, tiny_run, problem):
    run = client.post("/train", json=tiny_run).json()
    try:
        for response in (
            client.get("/sample", params={"run_id": run["id"]}),
            client.get("/density", params={"run_id": run["id"], "x": "0,0"}),
            client.post("/density", json={"run_id": run["id"], "points": [[0, 0]]}),
        ):
            body = problem(response, 409, "run_id")
            assert body["run_status"] == "queued" and "queued" in body["detail"]
    finally:
        client.post(f"/runs/{run['id']}/cancel")
        queue.queued.remove(run["id"])


def test_unknown_run_is_404(client, problem):
    missing = str(uuid.uuid4())
    problem(client.get("/sample", params={"run_id": missing}), 404, "run_id")
    problem(client.get("/density", params={"run_id": missing, "x": "1,2"}), 404, "run_id")


def test_tampered_checkpoint_is_refused(client, trained_run, settings, problem, tiny_run, queue):
    run = client.post("/train", json={**tiny_run, "name": "tamper"}).json()
    assert queue.run_pending() == ["succeeded"]
    weights = ModelStore(settings.models_store).run_dir(run["id"]) / "model.pt"
    weights.write_bytes(weights.read_bytes() + b"x")
    body = problem(client.get("/sample", params={"run_id": run["id"], "n": 2}), 409, "run_id")
    assert body["type"].endswith("checkpoint_error") and "retrain" in body["detail"]
