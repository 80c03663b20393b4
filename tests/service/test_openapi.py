"""``openapi/openapi.json`` must equal the schema the app serves (regenerate: ``make openapi``)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

from service.ml.data import DATASETS
from service.ml.models import MODELS

ROOT = Path(__file__).resolve().parents[2]


def _generator():
    spec = importlib.util.spec_from_file_location("openapi_generate", ROOT / "openapi" / "generate.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_committed_schema_matches_the_app():
    generate = _generator()
    committed = (ROOT / "openapi" / "openapi.json").read_text()
    assert committed == generate.render(generate.current_schema()), (
        "openapi/openapi.json is stale: run `make openapi` (python openapi/generate.py)"
    )


def test_served_schema_equals_the_file(client):
    assert client.get("/openapi.json").json() == json.loads((ROOT / "openapi" / "openapi.json").read_text())


def test_registries_appear_as_enums():
    schemas = json.loads((ROOT / "openapi" / "openapi.json").read_text())["components"]["schemas"]
    assert set(schemas["ModelName"]["enum"]) == set(MODELS)
    assert set(DATASETS) <= set(schemas["DatasetName"]["enum"])
    train = schemas["TrainRequest"]["properties"]
    assert "model_config" in train and "model_params" not in train


def test_docs_are_served(client):
    assert client.get("/docs").status_code == 200
