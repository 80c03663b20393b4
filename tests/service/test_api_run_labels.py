"""Tags and names of runs (``POST /train``, ``PATCH /runs/{id}``) and ``POST /runs/{id}/retry``."""

from __future__ import annotations

import uuid

import pytest
from fastapi.testclient import TestClient
from pydantic import SecretStr
from sqlalchemy import update

from service.api.main import create_app
from service.db.models import RunRow


def _queued(client, queue, body) -> dict:
    response = client.post("/train", json=body)
    assert response.status_code == 202, response.text
    queue.queued.remove(response.json()["id"])
    return response.json()


def test_train_takes_tags_deduplicated_in_order(client, queue, tiny_run):
    run = _queued(client, queue, {**tiny_run, "tags": ["b", "a:1", "b", "x.y-z_0"]})
    assert run["tags"] == ["b", "a:1", "x.y-z_0"] and run["retry_of"] is None
    assert client.get(f"/runs/{run['id']}").json()["tags"] == ["b", "a:1", "x.y-z_0"]
    assert _queued(client, queue, tiny_run)["tags"] == []
    client.post(f"/runs/{run['id']}/cancel")


@pytest.mark.parametrize(
    ("tags", "field"),
    [
        (["ok", "has space"], "tags.1"),
        ([""], "tags.0"),
        (["x" * 65], "tags.0"),
        (["é"], "tags.0"),
        ([f"t{i}" for i in range(17)], "tags"),
        ("a,b", "tags"),
        ([1], "tags.0"),
    ],
)
def test_bad_tags_are_422_naming_the_tag(client, queue, tiny_run, problem, tags, field):
    body = problem(client.post("/train", json={**tiny_run, "tags": tags}), 422, field)
    assert body["type"] == "/problems/validation_error"


def test_patch_changes_name_and_tags_and_nothing_else(client, queue, tiny_run):
    run = _queued(client, queue, {**tiny_run, "name": "before", "tags": ["old"]})
    renamed = client.patch(f"/runs/{run['id']}", json={"name": "after"})
    assert renamed.status_code == 200 and renamed.json()["name"] == "after"
    assert renamed.json()["tags"] == ["old"]
    tagged = client.patch(f"/runs/{run['id']}", json={"tags": ["n1", "n2", "n1"]}).json()
    assert tagged["tags"] == ["n1", "n2"] and tagged["name"] == "after"
    both = client.patch(f"/runs/{run['id']}", json={"tags": [], "name": None}).json()
    assert both["tags"] == [] and both["name"] is None
    assert {k: both[k] for k in ("solver", "training", "status")} == {
        k: run[k] for k in ("solver", "training", "status")
    }
    client.post(f"/runs/{run['id']}/cancel")


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({}, "body"),
        ({"status": "succeeded"}, "status"),
        ({"tags": None}, "tags"),
        ({"tags": ["a b"]}, "tags.0"),
        ({"name": "x" * 201}, "name"),
        ({"name": "ok", "metrics": {}}, "metrics"),
    ],
)
def test_bad_patches_are_422_naming_the_field(client, queue, tiny_run, problem, body, field):
    run = _queued(client, queue, tiny_run)
    problem(client.patch(f"/runs/{run['id']}", json=body), 422, field)
    client.post(f"/runs/{run['id']}/cancel")


def test_patch_of_an_unknown_run_is_404(client, problem):
    problem(client.patch(f"/runs/{uuid.uuid4()}", json={"name": "x"}), 404, "run_id")


def test_patch_and_retry_need_a_write_key(settings, sessions, queue, tiny_run, problem):
    keyed = settings.model_copy(update={"api_keys": SecretStr("k-labels-1")})
    with TestClient(create_app(keyed, session_factory=sessions, dispatcher=queue)) as client:
        run_id = str(uuid.uuid4())
        problem(client.patch(f"/runs/{run_id}", json={"name": "x"}), 401, "Authorization")
        problem(client.post(f"/runs/{run_id}/retry"), 401, "Authorization")
        headers = {"Authorization": "Bearer k-labels-1"}
        problem(client.patch(f"/runs/{run_id}", json={"name": "x"}, headers=headers), 404, "run_id")


def _set_status(sessions, run_id: str, status: str, **values) -> None:
    with sessions() as session:
        session.execute(update(RunRow).where(RunRow.id == run_id).values(status=status, **values))
        session.commit()


@pytest.mark.parametrize("status", ["failed", "canceled"])
def test_retry_starts_a_new_run_with_the_same_request(client, queue, sessions, tiny_run, status):
    body = {**tiny_run, "name": "flaky", "tags": ["r"], "device": "cpu"}
    old = _queued(client, queue, body)
    _set_status(sessions, old["id"], status, error_type="worker_lost", error_detail="gone")
    response = client.post(f"/runs/{old['id']}/retry")
    assert response.status_code == 202, response.text
    new = response.json()
    assert response.headers["location"] == f"/runs/{new['id']}" and new["id"] != old["id"]
    assert new["status"] == "queued" and new["retry_of"] == old["id"] and new["error"] is None
    same = ("name", "tags", "model", "dataset", "solver", "training", "model_config", "device_request")
    assert {k: new[k] for k in same} == {k: old[k] for k in same}
    assert queue.queued == [new["id"]] and queue.devices[new["id"]] == "cpu"
    assert client.get(f"/runs/{new['id']}").json()["retry_of"] == old["id"]
    assert client.get(f"/runs/{old['id']}").json()["status"] == status  # the old run is left as it was
    assert queue.run_pending() == ["succeeded"]  # and the new one trains
    client.delete(f"/runs/{new['id']}")


def test_retry_with_an_idempotency_key_returns_the_same_run(client, queue, sessions, tiny_run, problem):
    old = _queued(client, queue, tiny_run)
    _set_status(sessions, old["id"], "failed", error_type="solver_error")
    headers = {"Idempotency-Key": f"retry-{old['id']}"}
    first = client.post(f"/runs/{old['id']}/retry", headers=headers)
    again = client.post(f"/runs/{old['id']}/retry", headers=headers)
    assert again.status_code == 202 and again.json()["id"] == first.json()["id"]
    assert again.headers["idempotent-replayed"] == "true" and queue.queued == [first.json()["id"]]
    # The same key on POST /train with the same body is another request (no retry_of): 409.
    problem(client.post("/train", json=tiny_run, headers=headers), 409, "Idempotency-Key")
    client.post(f"/runs/{first.json()['id']}/cancel")
    queue.queued.clear()


@pytest.mark.parametrize("status", ["queued", "running", "succeeded", "canceling"])
def test_retry_of_a_run_that_did_not_fail_is_409_naming_its_status(
    client, queue, sessions, tiny_run, problem, status
):
    run = _queued(client, queue, tiny_run)
    _set_status(sessions, run["id"], status)
    body = problem(client.post(f"/runs/{run['id']}/retry"), 409, "run_id")
    assert body["run_status"] == status and status in body["detail"]
    assert queue.queued == []
    _set_status(sessions, run["id"], "canceled")


def test_retry_of_an_unknown_run_is_404(client, problem):
    problem(client.post(f"/runs/{uuid.uuid4()}/retry"), 404, "run_id")


def test_retry_goes_through_the_train_checks(settings, sessions, tiny_run, problem):
    """A run whose steps no longer fit the memory budget is refused like POST /train would."""
    from recording_queue import RecordingQueue

    queue = RecordingQueue()
    with TestClient(create_app(settings, session_factory=sessions, dispatcher=queue)) as client:
        old = client.post(
            "/train", json={**tiny_run, "training": {"iterations": 6, "batch_size": 4096}}
        ).json()
        _set_status(sessions, old["id"], "failed", error_type="memory")
    small = settings.model_copy(update={"train_memory_bytes": 1024})
    with TestClient(create_app(small, session_factory=sessions, dispatcher=queue)) as client:
        problem(client.post(f"/runs/{old['id']}/retry"), 422, "training.batch_size")
        problem(client.post("/train", json={**tiny_run, "training": {"batch_size": 4096}}), 422)
    assert queue.queued == [old["id"]]
