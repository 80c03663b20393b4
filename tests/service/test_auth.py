"""API keys (``ODESERVE_API_KEYS``): the auth matrix, protected reads, CORS off by default, no key logged."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient
from pydantic import SecretStr
from recording_queue import RecordingQueue  # tests/service is on sys.path (rootless test dir)

from service.api.main import create_app

KEYS = ("k-alpha-0123456789", "k-beta-9876543210")
RIGHT = {"Authorization": f"Bearer {KEYS[1]}"}
WRONG = {"Authorization": "Bearer not-a-key"}
MALFORMED = {"Authorization": f"Basic {KEYS[0]}"}
OPEN_ROUTES = {"/livez", "/readyz", "/metrics"}
QUERY_POSTS = {"/density", "/predict", "/runs/compare"}  # POST only to carry bodies; reads, not writes


def _client(settings: Any, sessions: Any, **changes: Any) -> TestClient:
    keyed = settings.model_copy(update={"api_keys": SecretStr(",".join(KEYS)), **changes})
    return TestClient(create_app(keyed, session_factory=sessions, dispatcher=RecordingQueue()))


@pytest.fixture
def keyed(settings, sessions) -> Iterator[TestClient]:
    with _client(settings, sessions) as client:
        yield client


def _mutating_routes(client: TestClient) -> list[tuple[str, str]]:
    """(method, path) of every POST/PUT/PATCH/DELETE operation the app documents."""
    found = []
    for path, item in client.app.openapi()["paths"].items():
        if path in QUERY_POSTS:
            continue
        for method in item.keys() & {"post", "put", "patch", "delete"}:
            concrete = path
            for name in ("{run_id}", "{sweep_id}", "{dataset_id}"):
                concrete = concrete.replace(name, str(uuid.uuid4()))
            found.append((method.upper(), concrete))
    return sorted(found)


def test_every_mutating_route_needs_a_key(keyed, problem):
    routes = _mutating_routes(keyed)
    assert {("POST", "/train"), ("POST", "/datasets")} <= set(routes)
    for method, path in routes:
        missing = problem(keyed.request(method, path), 401, "Authorization")
        assert keyed.request(method, path).headers["www-authenticate"].startswith("Bearer")
        assert "Bearer" in missing["detail"]
        problem(keyed.request(method, path, headers=MALFORMED), 401, "Authorization")
        problem(keyed.request(method, path, headers=WRONG), 403, "Authorization")


def test_right_key_passes_each_mutating_route(keyed, tiny_run):
    created = keyed.post("/train", json=tiny_run, headers=RIGHT)
    assert created.status_code == 202, created.text
    run_id = created.json()["id"]
    upload = keyed.post("/datasets", json={"name": "pts", "points": [[1, 2], [3, 4]]}, headers=RIGHT)
    assert upload.status_code == 201, upload.text
    other_key = {"Authorization": f"Bearer {KEYS[0]}"}
    assert keyed.post(f"/runs/{run_id}/cancel", headers=other_key).status_code == 202
    assert keyed.delete(f"/runs/{run_id}", headers=RIGHT).status_code == 204


def test_reads_are_open_unless_protected(keyed, settings, sessions, trained_run, problem):
    run_id = trained_run["id"]
    reads = [
        "/runs",
        f"/runs/{run_id}",
        f"/runs/{run_id}/metrics",
        "/datasets",
        f"/sample?run_id={run_id}&n=2",
    ]
    for path in reads:
        assert keyed.get(path).status_code == 200, path
    with _client(settings, sessions, protect_reads=True) as guarded:
        for path in reads:
            problem(guarded.get(path), 401, "Authorization")
            problem(guarded.get(path, headers=WRONG), 403, "Authorization")
            assert guarded.get(path, headers=RIGHT).status_code == 200, path
        body = {"run_id": run_id, "points": [[0, 0]]}
        problem(guarded.post("/density", json=body), 401, "Authorization")
        assert guarded.post("/density", json=body, headers=RIGHT).status_code == 200
        for path in OPEN_ROUTES:  # probes and metrics stay open for orchestrators
            assert guarded.get(path).status_code in (200, 503), path


def test_no_keys_configured_means_open(client, tiny_run, queue):
    response = client.post("/datasets", json={"name": "open", "points": [[1, 2], [3, 4]]})
    assert response.status_code == 201


def test_keys_are_never_logged_or_echoed(settings, sessions, tiny_run, caplog):
    caplog.set_level(logging.DEBUG)
    with _client(settings, sessions) as client:
        bodies = [
            client.post("/train", json=tiny_run, headers={"Authorization": f"Bearer {KEYS[0]}x"}).text,
            client.post("/train", json=tiny_run, headers=WRONG).text,
            client.post("/train", json=tiny_run, headers=RIGHT).text,
            client.get("/runs", headers=RIGHT).text,
        ]
        settings_repr = repr(client.app.state.settings)
    for key in KEYS:
        assert key not in caplog.text and key not in settings_repr
        assert all(key not in body for body in bodies)
    assert "not-a-key" not in caplog.text


def test_cors_is_off_by_default_and_explicit_when_on(client, settings, sessions):
    preflight = {"Origin": "https://evil.example", "Access-Control-Request-Method": "POST"}
    assert "access-control-allow-origin" not in client.get("/livez", headers={"Origin": "https://x"}).headers
    assert "access-control-allow-origin" not in client.options("/train", headers=preflight).headers
    allowed = settings.model_copy(update={"cors_origins": "https://ui.example"})
    with TestClient(create_app(allowed, session_factory=sessions, dispatcher=RecordingQueue())) as cors:
        ok = cors.get("/livez", headers={"Origin": "https://ui.example"})
        assert ok.headers["access-control-allow-origin"] == "https://ui.example"
        assert "access-control-allow-origin" not in cors.options("/train", headers=preflight).headers
        patch = {"Origin": "https://ui.example", "Access-Control-Request-Method": "PATCH"}
        allowed_patch = cors.options(f"/runs/{uuid.uuid4()}", headers=patch)
        assert "PATCH" in allowed_patch.headers["access-control-allow-methods"]  # tags from the page


TINY_TRAIN = {
    "model": "ffjord",
    "dataset": {"name": "8gaussians", "n_train": 300, "n_test": 50},
    "model_config": {"hidden_dims": [8]},
    "training": {"iterations": 3, "batch_size": 32},
}


def test_idempotency_keys_are_scoped_to_the_api_key(keyed, problem):
    """Two clients choosing the same Idempotency-Key never see each other's runs."""
    key = {"Idempotency-Key": f"retry-{uuid.uuid4()}"}
    alpha = {"Authorization": f"Bearer {KEYS[0]}", **key}
    beta = {"Authorization": f"Bearer {KEYS[1]}", **key}
    first = keyed.post("/train", json=TINY_TRAIN, headers=alpha)
    other = keyed.post("/train", json=TINY_TRAIN, headers=beta)
    assert first.status_code == other.status_code == 202, (first.text, other.text)
    assert other.json()["id"] != first.json()["id"] and "idempotent-replayed" not in other.headers
    again = keyed.post("/train", json=TINY_TRAIN, headers=alpha)
    assert again.json()["id"] == first.json()["id"] and again.headers["idempotent-replayed"] == "true"
    different = keyed.post("/train", json={**TINY_TRAIN, "name": "beta's own"}, headers=beta)
    body = problem(different, 409, "Idempotency-Key")  # beta's own earlier request, not alpha's
    assert first.json()["id"] not in body["detail"]
    for run in (first, other):
        assert keyed.delete(f"/runs/{run.json()['id']}", headers=RIGHT).status_code == 204


def test_a_logged_request_path_cannot_forge_log_lines(keyed, caplog):
    """A decoded %0a in the path would start a new log line: it is logged escaped."""
    with caplog.at_level(logging.WARNING, logger="service.api.auth"):
        response = keyed.post("/runs/x%0aINFO%20forged%20line%0d%1b[2J/cancel", headers=WRONG)
    assert response.status_code == 403
    lines = [record.getMessage() for record in caplog.records if "unknown API key" in record.getMessage()]
    assert lines, caplog.text
    for line in lines:
        assert "\n" not in line and "\r" not in line and "\x1b" not in line
        assert "\\nINFO forged line\\r\\x1b" in line
