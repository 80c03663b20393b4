"""Real processes for the recovery tests: Celery workers and a private redis-server, on 127.0.0.1.

Every process is started here, remembered, and stopped by its own PID (SIGTERM, then SIGKILL).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from service.cli.embedded import stop_process
from service.config import Settings

__all__ = [
    "QUICK_RUN",
    "ROOT",
    "TERMINAL",
    "Redis",
    "fast_recovery",
    "free_port",
    "post_run",
    "start_api",
    "start_worker",
    "stop",
    "wait_for_run",
    "worker_env",
]

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def worker_env(settings: Settings) -> dict[str, str]:
    """The environment a worker subprocess reads its ``Settings`` from."""
    names = [
        "queue",
        "progress_every",
        "checkpoint_every",
        "cancel_poll_s",
        "max_attempts",
        "heartbeat_interval_s",
        "heartbeat_timeout_s",
        "reconcile_interval_s",
        "queued_grace_s",
        "max_run_seconds",
    ]
    env = {f"ODESERVE_{name.upper()}": str(getattr(settings, name)) for name in names}
    env["ODESERVE_STORE_CACHE_DIR"] = str(settings.store_cache_dir)  # used when MODELS_STORE is s3://
    if settings.s3_endpoint_url:
        env["ODESERVE_S3_ENDPOINT_URL"] = settings.s3_endpoint_url
    return {
        **os.environ,
        **env,
        "DATABASE_URL": settings.database_url,
        "REDIS_URL": settings.redis_url,
        "MODELS_STORE": str(settings.models_store),
        "ODESERVE_TORCH_THREADS": "1",
        "ODESERVE_DEVICE": "cpu",
        "PYTHONPATH": str(ROOT),
    }


def start_worker(settings: Settings, log_path: Path, timeout: float = 90) -> subprocess.Popen:
    """A solo-pool worker on ``settings.queue``; returns once it logs ``ready``."""
    command = [
        sys.executable, "-m", "celery", "-A", "workers.celery_app", "worker",
        "-Q", settings.queue, "-c", "1", "--pool=solo", "--loglevel=INFO",
        "-n", f"rec-{uuid.uuid4().hex[:6]}@%h", "--without-gossip", "--without-mingle", "--without-heartbeat",
    ]  # fmt: skip
    start = log_path.stat().st_size if log_path.exists() else 0
    with log_path.open("ab") as log:
        proc = subprocess.Popen(
            command, cwd=ROOT, env=worker_env(settings), stdout=log, stderr=subprocess.STDOUT
        )
    deadline = time.monotonic() + timeout
    while b"ready" not in log_path.read_bytes()[start:]:
        if proc.poll() is not None or time.monotonic() > deadline:
            stop(proc)
            pytest.fail(f"worker did not start:\n{log_path.read_text(errors='replace')[-4000:]}")
        time.sleep(0.2)
    return proc


def start_api(
    settings: Settings, log_path: Path, env: dict[str, str] | None = None, timeout: float = 90
) -> tuple[subprocess.Popen, str]:
    """A uvicorn API process with ``settings`` (and extra ``env``); returns it and its base URL once
    ``/livez`` answers."""
    port = free_port()
    command = [
        sys.executable, "-m", "uvicorn", "--factory", "service.api.main:create_app",
        "--host", "127.0.0.1", "--port", str(port), "--no-access-log",
    ]  # fmt: skip
    full_env = {**worker_env(settings), **(env or {})}
    with log_path.open("ab") as log:
        proc = subprocess.Popen(command, cwd=ROOT, env=full_env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    wait_until_serving(proc, f"{url}/livez", log_path, timeout)
    return proc, url


def wait_until_serving(
    proc: subprocess.Popen, url: str, log_path: Path, timeout: float, log_says: str = ""
) -> None:
    """Return once ``url`` answers 200 (and the log holds ``log_says``); fail with the log's tail
    if ``proc`` exits or ``timeout`` passes first (the process is stopped)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            up = httpx.get(url, timeout=1).status_code == 200
            if up and log_says in log_path.read_text(errors="replace"):
                return
        except httpx.HTTPError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            stop(proc)
            pytest.fail(f"{url} did not come up:\n{log_path.read_text(errors='replace')[-4000:]}")
        time.sleep(0.2)


def stop(proc: subprocess.Popen | None, timeout: float = 20) -> None:
    """Stop a process we started: SIGTERM, then SIGKILL if it lingers."""
    if proc is not None:
        stop_process(proc, timeout)


class Redis:
    """A private, non-persistent redis-server on a free port that can be killed and restarted empty."""

    def __init__(self, directory: Path) -> None:
        self.binary = shutil.which("redis-server")
        if self.binary is None:
            pytest.skip("redis-server is not installed")
        self.directory, self.port = directory, free_port()
        self.proc: subprocess.Popen | None = None
        self.restarts = 0

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        command = [
            self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
            "--dir", str(self.directory), "--protected-mode", "yes",
        ]  # fmt: skip
        self.proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 15
        while True:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as sock:
                    sock.sendall(b"PING\r\n")
                    if sock.recv(16).startswith(b"+PONG"):
                        return
            except OSError:
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"redis-server did not start on port {self.port}")
            time.sleep(0.1)

    def kill(self) -> None:
        """SIGKILL: everything in memory (queued messages, unacked deliveries) is gone."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)

    def restart_empty(self) -> None:
        self.kill()
        self.start()
        self.restarts += 1

    def stop(self) -> None:
        stop(self.proc, timeout=5)


TERMINAL = frozenset({"succeeded", "failed", "canceled"})
QUICK_RUN = {
    "model": "ffjord",
    "dataset": {"name": "8gaussians", "n_train": 300, "n_test": 50},
    "model_config": {"hidden_dims": [8]},
    "solver": {"method": "dopri5", "rtol": 1e-3, "atol": 1e-3},
    "training": {"iterations": 12, "batch_size": 32},
}
"""A POST /train body that trains in about a second."""


def fast_recovery(settings: Settings, queue_prefix: str, **update: object) -> Settings:
    """``settings`` on a fresh queue with recovery sped up: heartbeats every 0.3 s, stale after
    2 s, a reconciler pass every 0.5 s, queued runs republished after 2 s."""
    fast = {
        "queue": f"{queue_prefix}-{uuid.uuid4().hex[:8]}",
        "checkpoint_every": 10,
        "heartbeat_interval_s": 0.3,
        "heartbeat_timeout_s": 2.0,
        "reconcile_interval_s": 0.5,
        "queued_grace_s": 2.0,
        "max_attempts": 3,
    }
    return settings.model_copy(update={**fast, **update})


def post_run(client: httpx.Client, body: dict[str, Any]) -> str:
    """POST /train, asserting 202; returns the run id."""
    response = client.post("/train", json=body)
    assert response.status_code == 202, response.text
    return response.json()["id"]


def wait_for_run(
    client: httpx.Client,
    run_id: str,
    until: Callable[[dict[str, Any]], bool],
    logs: list[Path],
    timeout: float = 180,
) -> dict[str, Any]:
    """Poll GET /runs/{id} until ``until(run)``; on timeout fail with the tails of ``logs``."""
    deadline = time.monotonic() + timeout
    while True:
        run = client.get(f"/runs/{run_id}").json()
        if until(run):
            return run
        if time.monotonic() > deadline:
            tails = "\n".join(log.read_text(errors="replace")[-3000:] for log in logs if log.exists())
            pytest.fail(f"run {run_id} stuck at {run['status']} {run['progress']}\n{tails}")
        time.sleep(0.1)
