"""Liveness, readiness (database and broker separately) and Prometheus metrics."""

from __future__ import annotations

import gc

from fastapi.testclient import TestClient

from service.api.main import create_app
from service.config import Settings


def test_livez_and_readyz(client):
    assert client.get("/livez").json() == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 200
    assert ready.json() == {"status": "ready", "checks": {"database": "ok", "broker": "ok"}}


def test_readyz_is_503_naming_what_is_down(settings):
    # A real Celery dispatcher and a real Postgres URL, both pointing at closed ports.
    down = settings.model_copy(
        update={"database_url": "postgresql+psycopg://nobody@127.0.0.1:1/none?connect_timeout=1"}
    )
    with TestClient(create_app(down)) as client:
        response = client.get("/readyz")
    assert response.status_code == 503
    checks = response.json()["checks"]
    assert checks["database"].startswith("unavailable") and checks["broker"].startswith("unavailable")


def test_readyz_with_only_the_broker_down(settings, sessions):
    with TestClient(create_app(settings, session_factory=sessions)) as client:
        body = client.get("/readyz").json()
    assert body["checks"] == {"database": "ok", "broker": body["checks"]["broker"]}
    assert body["status"] == "unavailable" and body["checks"]["broker"].startswith("unavailable")


def test_prometheus_metrics(client, trained_run):
    client.get(f"/runs/{trained_run['id']}")
    text = client.get("/metrics").text
    assert (
        'odeserve_http_request_duration_seconds_bucket{le="0.005",method="GET",route="/runs/{run_id}"' in text
    )
    assert 'odeserve_runs{status="succeeded"}' in text


def test_unknown_route_is_a_problem(client, problem):
    problem(client.get("/nope"), 404)
    problem(client.put("/livez"), 405)


def test_settings_read_documented_environment_names(monkeypatch):
    monkeypatch.setenv("DATABASE_URL", "sqlite:///x.db")
    monkeypatch.setenv("REDIS_URL", "redis://r:6379/1")
    monkeypatch.setenv("MODELS_STORE", "/srv/models")
    monkeypatch.setenv("ODESERVE_PROGRESS_EVERY", "9")
    settings = Settings()
    assert settings.database_url == "sqlite:///x.db" and settings.redis_url == "redis://r:6379/1"
    assert str(settings.models_store) == "/srv/models" and settings.progress_every == 9
    assert settings.visibility_timeout > settings.max_run_seconds


def test_startup_freezes_the_imported_objects_out_of_the_collector(settings, sessions):
    gc.unfreeze()  # whatever an earlier app froze
    long_lived: list[object] = [[i] for i in range(1000)]  # tracked objects that exist at startup
    assert gc.get_freeze_count() == 0
    with TestClient(create_app(settings, session_factory=sessions)):
        frozen = gc.get_freeze_count()
    assert frozen > len(long_lived)  # full collections no longer scan them on every request
