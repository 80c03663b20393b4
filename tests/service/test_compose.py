"""docker-compose.yml and Dockerfile, checked structurally (no Docker engine needed)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from service.config import Settings

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def test_services_and_one_shot_migration(compose):
    services = compose["services"]
    assert set(services) == {"postgres", "redis", "minio", "minio-init", "migrate", "api", "worker"}
    assert services["migrate"]["command"] == ["alembic", "upgrade", "head"]
    assert services["migrate"]["restart"] == "no"
    assert services["migrate"]["depends_on"] == {"postgres": {"condition": "service_healthy"}}


@pytest.mark.parametrize("name", ["api", "worker"])
def test_app_services_wait_for_healthy_backends_and_migration(compose, name):
    depends = compose["services"][name]["depends_on"]
    assert depends["postgres"] == {"condition": "service_healthy"}
    assert depends["redis"] == {"condition": "service_healthy"}
    assert depends["migrate"] == {"condition": "service_completed_successfully"}
    assert depends["minio-init"] == {"condition": "service_completed_successfully"}


@pytest.mark.parametrize("name", ["postgres", "redis", "minio", "api", "worker"])
def test_healthchecks(compose, name):
    assert compose["services"][name]["healthcheck"]["test"]


def test_worker_reserves_a_gpu_and_runs_both_training_queues(compose):
    worker = compose["services"]["worker"]
    devices = worker["deploy"]["resources"]["reservations"]["devices"]
    assert devices == [{"driver": "nvidia", "count": 1, "capabilities": ["gpu"]}]
    command = worker["command"]
    assert command[:4] == ["celery", "-A", "workers.celery_app", "worker"]
    assert command[command.index("-Q") + 1].split(",") == [Settings().gpu_queue, Settings().queue]
    assert "cu" in worker["build"]["args"]["TORCH_INDEX_URL"].rsplit("/", 1)[-1]


def test_models_store_is_the_minio_bucket_the_one_shot_creates(compose):
    services = compose["services"]
    minio = services["minio"]
    init = " ".join(services["minio-init"]["entrypoint"])
    assert services["minio-init"]["depends_on"] == {"minio": {"condition": "service_healthy"}}
    for name in ("api", "worker"):
        env = services[name]["environment"]
        settings = Settings(**{"MODELS_STORE": env["MODELS_STORE"]})
        assert isinstance(settings.models_store, str) and settings.models_store.startswith("s3://")
        bucket, prefix = settings.models_store[5:].split("/", 1)
        assert f"mc mb --ignore-existing store/{bucket}" in init
        assert f"--prefix {prefix}/tmp/" in init  # leftovers of interrupted uploads expire
        assert env["ODESERVE_S3_ENDPOINT_URL"] == "http://minio:9000"
        assert env["AWS_ACCESS_KEY_ID"] == minio["environment"]["MINIO_ROOT_USER"]
        assert env["AWS_SECRET_ACCESS_KEY"] == minio["environment"]["MINIO_ROOT_PASSWORD"]
        assert "volumes" not in services[name], "API and worker share nothing but the services"
    assert set(compose["volumes"]) == {"pgdata", "redisdata", "miniodata"}


def test_images_install_the_s3_extra():
    assert 'RUN pip install ".[s3]"' in (ROOT / "Dockerfile").read_text()


@pytest.mark.skipif(shutil.which("docker-compose") is None, reason="docker-compose is not installed")
def test_docker_compose_accepts_the_file():
    done = subprocess.run(["docker-compose", "config", "-q"], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def test_environment_names_are_settings_names(compose, monkeypatch):
    for name in ("migrate", "api", "worker"):
        env = compose["services"][name]["environment"]
        assert {"DATABASE_URL", "REDIS_URL", "MODELS_STORE"} <= env.keys()
        for key, value in env.items():
            monkeypatch.setenv(key, str(value))
        settings = Settings()
        assert settings.database_url == env["DATABASE_URL"].replace("$$", "$")
        assert settings.redis_url.startswith("redis://redis:")
        assert str(settings.models_store) == env["MODELS_STORE"]
        unknown = [k for k in env if k.startswith("ODESERVE_") and k[9:].lower() not in Settings.model_fields]
        assert not unknown, unknown


def test_dockerfile_takes_torch_build_as_argument():
    text = (ROOT / "Dockerfile").read_text()
    assert "ARG TORCH_INDEX_URL" in text and '--index-url "${TORCH_INDEX_URL}"' in text
    assert "service.api.main:create_app" in text and "USER odeserve" in text


def test_api_serves_with_the_coalescing_protocol_that_exists(compose):
    from uvicorn.importer import import_from_string

    command = compose["services"]["api"]["command"]
    assert command[:3] == ["uvicorn", "--factory", "service.api.main:create_app"]
    protocol = import_from_string(command[command.index("--http") + 1])
    assert protocol.__name__ == "CoalescingHttpToolsProtocol"
