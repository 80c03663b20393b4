"""Property-based API conformance with schemathesis: every operation of the served OpenAPI document.

Checks: no 5xx, status codes / content types / headers / bodies as documented, and schema-violating
requests rejected. Half of the generated ``run_id`` values in queries and bodies are replaced by a
trained run, so the model-serving paths see generated inputs too. The app runs on a temporary SQLite
database with a queue that only records run ids (no worker, no broker).

Budget: ``SCHEMATHESIS_MAX_EXAMPLES`` per operation (default 5). Larger run, e.g.::

    SCHEMATHESIS_MAX_EXAMPLES=200 .venv/bin/pytest tests/service/test_schemathesis.py -p no:randomly
"""

from __future__ import annotations

import atexit
import itertools
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import pytest
import schemathesis
import torch
from fastapi.testclient import TestClient
from hypothesis import HealthCheck
from hypothesis import settings as hypothesis_settings
from recording_queue import RecordingQueue  # tests/service is on sys.path (rootless test dir)
from schemathesis.checks import (
    content_type_conformance,
    negative_data_rejection,
    not_a_server_error,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from service.api.main import create_app
from service.config import Settings
from service.db import make_engine, make_session_factory
from service.db.migrate import upgrade
from service.storage.models_store import ModelStore
from workers.runner import run_job

torch.set_num_threads(1)

MAX_EXAMPLES = int(os.environ.get("SCHEMATHESIS_MAX_EXAMPLES", "5"))


def negative_data_refused(ctx: Any, response: Any, case: Any) -> bool | None:
    """``negative_data_rejection``, also counting ``413`` (body over the byte limit) as a refusal."""
    if response.status_code == 413:
        return None
    return negative_data_rejection(ctx, response, case)


CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    negative_data_refused,
]
TINY = {
    "model": "ffjord",
    "dataset": {"name": "8gaussians", "n_train": 200, "n_test": 50},
    "model_config": {"hidden_dims": [8]},
    "solver": {"method": "dopri5", "rtol": 1e-3, "atol": 1e-3},
    "training": {"iterations": 3, "batch_size": 32},
}


# The schema must exist when the module is collected, so the app is built here (no I/O yet).
ROOT = Path(tempfile.mkdtemp(prefix="odeserve-schemathesis-"))
atexit.register(shutil.rmtree, ROOT, True)
SETTINGS = Settings(database_url=f"sqlite:///{ROOT / 'odeserve.db'}", models_store=ROOT / "store")
QUEUE = RecordingQueue()
APP = create_app(SETTINGS, dispatcher=QUEUE)
schema = schemathesis.openapi.from_asgi("/openapi.json", APP)
TRAINED: list[str] = []
CALLS = itertools.count()


@pytest.fixture(scope="module", autouse=True)
def trained_run() -> str:
    """Migrate the database and train one tiny run through the API and the worker code."""
    upgrade(SETTINGS.database_url)
    with TestClient(APP) as client:
        run_id = client.post("/train", json=TINY).json()["id"]
    QUEUE.queued.remove(run_id)
    sessions = make_session_factory(make_engine(SETTINGS.database_url))
    store = ModelStore(SETTINGS.models_store)
    status = run_job(run_id, settings=SETTINGS, sessions=sessions, store=store, worker="schemathesis")
    assert status == "succeeded"
    TRAINED.append(run_id)
    return run_id


def _aim_at_trained_run(case: Any) -> None:
    if not TRAINED or next(CALLS) % 2:
        return
    if isinstance(case.query, dict) and "run_id" in case.query:
        case.query["run_id"] = TRAINED[0]
    if isinstance(case.body, dict) and "run_id" in case.body:
        case.body["run_id"] = TRAINED[0]


@schema.parametrize()
@hypothesis_settings(
    max_examples=MAX_EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True
)
def test_api_conforms_to_its_schema(case: Any) -> None:
    _aim_at_trained_run(case)
    case.call_and_validate(checks=CHECKS)


def test_cases_were_generated_and_service_is_healthy(trained_run: str) -> None:
    calls = next(CALLS)
    print(f"schemathesis cases: {calls}")
    assert calls > 0, "schemathesis generated no cases"
    with TestClient(APP) as client:
        assert client.get("/livez").status_code == 200
        assert client.get("/sample", params={"run_id": trained_run, "n": 3}).status_code == 200
