"""Run lifecycle through the API: create, read, list, cancel, metrics, delete, idempotency."""

from __future__ import annotations

from service.db import repository as repo
from service.db.models import RunMetricRow
from service.ml.models import MODELS


def test_train_returns_202_location_and_the_queued_run(client, queue, tiny_run):
    response = client.post("/train", json={**tiny_run, "name": "shape"})
    assert response.status_code == 202
    run = response.json()
    assert response.headers["location"] == f"/runs/{run['id']}"
    assert run["status"] == "queued" and run["attempt"] == 0 and run["error"] is None
    assert run["progress"] == {"iteration": 0, "total": 6, "fraction": 0.0, "eta_s": None}
    assert run["model_config"]["hidden_dims"] == [8]  # defaults are filled in
    assert run["model_config"]["divergence"] == "exact"
    assert run["model_config"]["max_integration_time"] == 2.0  # stored, so later defaults cannot change it
    assert run["solver"]["method"] == "dopri5" and run["training"]["batch_size"] == 32
    assert queue.queued[-1] == run["id"]
    assert queue.run_pending() == ["succeeded"]
    done = client.get(f"/runs/{run['id']}").json()
    assert done["status"] == "succeeded" and done["attempt"] == 1 and done["device"] == "cpu"
    assert done["progress"]["fraction"] == 1.0 and done["finished_at"] >= done["started_at"]
    assert {"train_loss", "test_nll", "nfe_forward_mean", "nfe_backward_mean", "wall_clock_s"} <= done[
        "metrics"
    ].keys()
    history = client.get(f"/runs/{run['id']}/metrics").json()
    assert [h["iteration"] for h in history] == list(range(1, 7))
    assert {"iteration", "wall_s", "loss", "nfe_forward", "nfe_backward"} <= history[0].keys()


def test_idempotency_key_returns_the_same_run(client, queue, tiny_run, problem):
    headers = {"Idempotency-Key": "key-1"}
    first = client.post("/train", json=tiny_run, headers=headers)
    again = client.post("/train", json=tiny_run, headers=headers)
    assert again.status_code == 202 and again.json()["id"] == first.json()["id"]
    assert again.headers["idempotent-replayed"] == "true"
    assert queue.queued.count(first.json()["id"]) == 1
    other = {**tiny_run, "name": "different"}
    problem(client.post("/train", json=other, headers=headers), 409, "Idempotency-Key")
    client.post(f"/runs/{first.json()['id']}/cancel")
    queue.queued.clear()


def test_cancel_queued_run_ends_canceled_and_worker_skips_it(client, queue, tiny_run):
    run = client.post("/train", json=tiny_run).json()
    canceled = client.post(f"/runs/{run['id']}/cancel")
    assert canceled.status_code == 202 and canceled.json()["status"] == "canceled"
    assert queue.run_pending() == [None]
    assert client.get(f"/runs/{run['id']}").json()["status"] == "canceled"


def test_delete_refuses_running_runs(client, queue, sessions, tiny_run, problem, settings):
    run = client.post("/train", json=tiny_run).json()
    queue.queued.clear()
    with sessions() as session:
        attempt = repo.start_attempt(session, run["id"], device="cpu", worker="t", max_attempts=3)
    body = problem(client.delete(f"/runs/{run['id']}"), 409, "run_id")
    assert body["run_status"] == "running"
    assert client.post(f"/runs/{run['id']}/cancel").json()["status"] == "canceling"
    problem(client.delete(f"/runs/{run['id']}"), 409)
    with sessions() as session:
        repo.finish_canceled(session, attempt)
    assert client.delete(f"/runs/{run['id']}").status_code == 204
    assert client.get(f"/runs/{run['id']}").status_code == 404


def test_delete_removes_checkpoint_and_metrics(client, queue, tiny_run, settings):
    from service.storage.models_store import ModelStore

    run = client.post("/train", json=tiny_run).json()
    queue.run_pending()
    directory = ModelStore(settings.models_store).run_dir(run["id"])
    assert (directory / "manifest.json").is_file()
    assert client.delete(f"/runs/{run['id']}").status_code == 204
    assert not directory.exists()
    assert client.get(f"/runs/{run['id']}/metrics").status_code == 404


def test_list_filters_and_cursor_pagination(client, queue, tiny_run):
    ids = set()
    for _ in range(5):
        ids.add(client.post("/train", json={**tiny_run, "dataset": {"name": "moons"}}).json()["id"])
    queue.queued.clear()
    seen, link, pages = [], "/runs?dataset=moons&status=queued&limit=2", 0
    while link:
        page = client.get(link).json()
        seen += [r["id"] for r in page["items"]]
        assert all(r["dataset"]["name"] == "moons" and r["status"] == "queued" for r in page["items"])
        link, pages = page["next"], pages + 1
    assert set(seen) == ids and len(seen) == 5 and pages == 3
    assert client.get("/runs", params={"model": "latent_ode"}).json()["items"] == []
    for run_id in ids:
        client.post(f"/runs/{run_id}/cancel")
    assert len(client.get("/runs", params={"dataset": "moons", "status": "canceled"}).json()["items"]) == 5


def test_a_run_without_solver_gets_its_models_default(client, queue, tiny_run):
    del tiny_run["solver"]
    run = client.post("/train", json=tiny_run).json()
    assert run["solver"] == MODELS["ffjord"].default_solver.model_dump(mode="json")
    assert run["model_config"]["kinetic_weight"] == 0.01  # RNODE is on by default (bench_train)
    # A solver that is given, even in part, takes SolverConfig's defaults for the rest.
    partial = client.post("/train", json={**tiny_run, "solver": {"method": "rk4", "step_size": 0.5}}).json()
    assert partial["solver"]["method"] == "rk4" and partial["solver"]["rtol"] == 1e-3
    for run_id in (run["id"], partial["id"]):
        client.post(f"/runs/{run_id}/cancel")
    queue.queued.clear()


def test_metrics_history_is_paginated_with_a_next_link(client, queue, sessions, tiny_run, problem):
    """A long history comes in pages (default 1000 iterations) linked by ``Link: rel="next"``."""
    run = client.post("/train", json={**tiny_run, "name": "long history"}).json()
    queue.queued.remove(run["id"])
    with sessions() as session:
        session.add_all(
            RunMetricRow(run_id=run["id"], iteration=i, wall_s=0.1 * i, loss=1.0, nfe_forward=2,
                         nfe_backward=3, extra={})
            for i in range(1, 2501)
        )  # fmt: skip
        session.commit()
    first = client.get(f"/runs/{run['id']}/metrics")
    assert first.status_code == 200 and len(first.json()) == 1000
    seen, link = [h["iteration"] for h in first.json()], first.headers.get("link")
    while link:
        assert link.endswith('>; rel="next"')
        page = client.get(link[1 : link.index(">")])
        seen += [h["iteration"] for h in page.json()]
        link = page.headers.get("link")
    assert seen == list(range(1, 2501))
    small = client.get(f"/runs/{run['id']}/metrics", params={"limit": 7, "after": 2495})
    assert [h["iteration"] for h in small.json()] == list(range(2496, 2501)) and "link" not in small.headers
    problem(client.get(f"/runs/{run['id']}/metrics", params={"limit": 10_001}), 422, "limit")
    problem(client.get(f"/runs/{run['id']}/metrics", params={"after": -1}), 422, "after")
    assert client.delete(f"/runs/{run['id']}").status_code == 204
