"""``MODELS_STORE=s3://...`` against a real S3-compatible server (moto, see s3server.py).

A worker process trains with an object store and a local cache directory of its own; an API
process with a different, empty directory serves the run from the published checkpoint object.
Corrupt objects are a 409 ``checkpoint_error``, an unreachable store a 503, and a writer that dies
before publishing leaves no final key.
"""

from __future__ import annotations

import hashlib
import io
import subprocess
import sys
import tarfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from processes import QUICK_RUN, ROOT, TERMINAL, post_run, start_api, start_worker, stop, wait_for_run

from service.api.main import create_app
from service.config import Settings
from service.ml.errors import CheckpointError, StoreUnavailable
from service.storage.models_store import open_store
from service.storage.s3_blobs import S3Blobs

pytestmark = pytest.mark.integration

POINTS = [[float(i % 7) / 3 - 1, float(i % 5) / 2 - 1] for i in range(120)]


@pytest.fixture(scope="module")
def s3_settings(settings: Settings, s3: Any) -> Settings:
    prefix = f"store-{uuid.uuid4().hex[:8]}"
    return settings.model_copy(
        update={
            "models_store": s3.url(prefix),
            "s3_endpoint_url": s3.endpoint,
            "queue": f"s3-{uuid.uuid4().hex[:8]}",
        }
    )


def _prefix(settings: Settings) -> str:
    return str(settings.models_store).split("/", 3)[3]


@pytest.fixture(scope="module")
def trained(
    s3_settings: Settings, s3: Any, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, Any]]:
    """A run trained on an uploaded dataset by a worker, served by an API with an empty cache."""
    root = tmp_path_factory.mktemp("s3procs")
    worker_dir, api_dir = root / "worker-cache", root / "api-cache"
    logs = [root / "worker.log", root / "api.log"]
    worker = start_worker(s3_settings.model_copy(update={"store_cache_dir": worker_dir}), logs[0])
    api_proc, url = start_api(s3_settings.model_copy(update={"store_cache_dir": api_dir}), logs[1])
    try:
        with httpx.Client(base_url=url, timeout=30) as api:
            created = api.post("/datasets", json={"name": "grid", "points": POINTS})
            assert created.status_code == 201, created.text
            dataset = created.json()
            body = {**QUICK_RUN, "dataset": {"id": dataset["id"]}}
            run_id = post_run(api, body)
            run = wait_for_run(api, run_id, lambda r: r["status"] in TERMINAL, logs, timeout=120)
            assert run["status"] == "succeeded", run
            yield {"api": api, "run": run, "dataset": dataset, "dirs": (worker_dir, api_dir), "logs": logs}
    finally:
        stop(api_proc)
        stop(worker)


def test_a_run_trained_into_s3_is_served_by_an_api_with_an_empty_local_dir(trained, s3, s3_settings):
    api, run = trained["api"], trained["run"]
    worker_dir, api_dir = trained["dirs"]
    assert not (api_dir / "runs").exists(), "the API had a checkpoint before it was asked for one"
    answer = api.get("/density", params=[("run_id", run["id"]), ("x", "0,0"), ("x", "0.5,0.5")])
    assert answer.status_code == 200, answer.text
    assert len(answer.json()["log_density"]) == 2
    assert (api_dir / "runs" / run["id"] / "manifest.json").is_file()  # fetched from the object store
    prefix = _prefix(s3_settings)
    keys = s3.keys(prefix)
    assert f"{prefix}/runs/{run['id']}/checkpoint-{run['checkpoint_sha256']}.tar" in keys
    assert f"{prefix}/datasets/{trained['dataset']['id']}.pt" in keys
    assert not [k for k in keys if "/tmp/" in k], keys
    assert not (worker_dir / "datasets").exists() and not (api_dir / "datasets").exists()
    assert all(run["id"] in k or trained["dataset"]["id"] in k for k in keys), "a key not from an id"


def test_plots_are_cached_in_the_object_store(trained, s3, s3_settings):
    api, run = trained["api"], trained["run"]
    first = api.get(f"/runs/{run['id']}/plots/loss.png")
    assert first.status_code == 200 and first.content.startswith(b"\x89PNG")
    plots = s3.keys(f"{_prefix(s3_settings)}/runs/{run['id']}/plots")
    assert len(plots) == 1 and plots[0].endswith(".png")
    assert s3.fs().cat_file(f"{s3.bucket}/{plots[0]}") == first.content
    assert api.get(f"/runs/{run['id']}/plots/loss.png").content == first.content


def _replace_object(s3: Any, key: str, data: bytes) -> bytes:
    path = f"{s3.bucket}/{key}"
    old = s3.fs().cat_file(path)
    s3.fs().pipe_file(path, data)
    return old


def _tampered(archive: bytes) -> bytes:
    """The checkpoint tar with one byte of model.pt changed (a well-formed archive, wrong digest)."""
    out = io.BytesIO()
    with tarfile.open(fileobj=io.BytesIO(archive)) as source, tarfile.open(fileobj=out, mode="w") as tar:
        for member in source:
            data = bytearray(source.extractfile(member).read())  # type: ignore[union-attr]
            if member.name == "model.pt":
                data[-40] ^= 0xFF
            member.size = len(data)
            tar.addfile(member, io.BytesIO(bytes(data)))
    return out.getvalue()


@pytest.mark.parametrize("damage", ["tampered", "garbage"])
def test_a_corrupted_checkpoint_object_is_a_clear_409(trained, s3, s3_settings, tmp_path, damage):
    run = trained["run"]
    key = f"{_prefix(s3_settings)}/runs/{run['id']}/checkpoint-{run['checkpoint_sha256']}.tar"
    original = s3.fs().cat_file(f"{s3.bucket}/{key}")
    bad = _tampered(original) if damage == "tampered" else b"not a tar at all" * 64
    _replace_object(s3, key, bad)
    fresh = s3_settings.model_copy(update={"store_cache_dir": tmp_path / "cache"})
    try:
        with TestClient(create_app(fresh)) as client:
            answer = client.get("/density", params={"run_id": run["id"], "x": "0,0"})
    finally:
        _replace_object(s3, key, original)
    assert answer.status_code == 409, answer.text
    assert answer.headers["content-type"].startswith("application/problem+json")
    problem = answer.json()
    assert problem["type"].endswith("checkpoint_error") or "checkpoint_error" in str(problem), problem
    assert "retrain the run" in problem["detail"]
    assert ("digest" if damage == "tampered" else "cannot be unpacked") in problem["detail"]
    assert not (tmp_path / "cache" / "runs" / run["id"]).exists(), "a corrupt copy reached the cache"


def test_a_corrupted_dataset_object_fails_its_checksum(trained, s3, s3_settings, tmp_path):
    dataset = trained["dataset"]
    key = f"{_prefix(s3_settings)}/datasets/{dataset['id']}.pt"
    original = _replace_object(s3, key, b"\x00" * 100)
    recorded = hashlib.sha256(original).hexdigest()  # what the dataset row holds
    try:
        store = open_store(s3_settings.models_store, tmp_path, s3_settings.s3_endpoint_url)
        with pytest.raises(CheckpointError, match="does not match its checksum"):
            store.load_points(dataset["id"], recorded)
    finally:
        _replace_object(s3, key, original)
    assert store.load_points(dataset["id"], recorded).shape == (len(POINTS), 2)


CRASH_BEFORE_PUBLISH = """
import os, sys
from service.storage.s3_blobs import S3Blobs
blobs = S3Blobs(sys.argv[1], sys.argv[2])
blobs.fs.copy = lambda *a, **k: os._exit(3)  # die after the upload and its check, before the copy
blobs.write(sys.argv[3], b"x" * 1000)
"""


def test_a_writer_that_dies_before_publishing_leaves_no_final_key(s3, s3_settings):
    key = f"datasets/{uuid.uuid4()}.pt"
    url, endpoint = str(s3_settings.models_store), s3.endpoint
    done = subprocess.run(
        [sys.executable, "-c", CRASH_BEFORE_PUBLISH, url, endpoint, key], cwd=ROOT, timeout=60
    )
    assert done.returncode == 3
    prefix = _prefix(s3_settings)
    keys = s3.keys(prefix)
    assert f"{prefix}/{key}" not in keys
    assert [k for k in keys if k.startswith(f"{prefix}/tmp/")], "the upload never happened"
    blobs = S3Blobs(url, endpoint)
    with pytest.raises(FileNotFoundError):
        blobs.read(key)
    for leftover in [k for k in keys if k.startswith(f"{prefix}/tmp/")]:
        s3.fs().rm_file(f"{s3.bucket}/{leftover}")


def test_an_upload_altered_in_transit_is_refused_and_cleaned_up(s3, s3_settings, monkeypatch):
    blobs = S3Blobs(str(s3_settings.models_store), s3.endpoint)
    real_pipe = blobs.fs.pipe_file
    monkeypatch.setattr(blobs.fs, "pipe_file", lambda path, data, **kw: real_pipe(path, data[:-1] + b"?"))
    key = f"datasets/{uuid.uuid4()}.pt"
    with pytest.raises(CheckpointError, match="does not match its sha256"):
        blobs.write(key, b"payload" * 100)
    prefix = _prefix(s3_settings)
    assert not [k for k in s3.keys(prefix) if k.endswith(key) or f"{prefix}/tmp/" in k]
    monkeypatch.undo()
    data = b"payload" * 100
    assert blobs.write(key, data) == hashlib.sha256(data).hexdigest()
    assert blobs.read(key) == data


def test_keys_are_checked_and_an_unreachable_store_is_a_503(settings, tmp_path):
    with pytest.raises(ValueError, match="not a plain store key"):
        S3Blobs("s3://bucket/p").read("../../etc/passwd")
    dead = settings.model_copy(
        update={
            "models_store": "s3://nowhere/prefix",
            "s3_endpoint_url": "http://127.0.0.1:9",  # discard port: connection refused
            "store_cache_dir": tmp_path,
        }
    )
    store = open_store(dead.models_store, tmp_path, dead.s3_endpoint_url)
    with pytest.raises(StoreUnavailable, match="could not read"):
        store.read_dataset(uuid.uuid4())
    with TestClient(create_app(dead)) as client:
        answer = client.post("/datasets", json={"name": "pair", "points": [[0.0], [1.0]]})
    assert answer.status_code == 503, answer.text
    assert answer.json()["detail"].startswith("the object store could not store an object")


def test_models_store_url_is_validated():
    assert Settings(models_store="s3://bucket/a/b/").models_store == "s3://bucket/a/b"
    assert isinstance(Settings(models_store="some/dir").models_store, Path)
    for bad in ("gs://bucket/p", "s3:///p"):
        with pytest.raises(ValueError, match="use a directory or s3://bucket/prefix"):
            Settings(models_store=bad)
