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
from pathlib import Path

import pytest

from service.cli.embedded import stop_process
from service.config import Settings

__all__ = ["ROOT", "Redis", "free_port", "start_worker", "stop", "worker_env"]

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
