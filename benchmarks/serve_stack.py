"""The real service for benchmarks: ``odeserve up`` in a subprocess and a run trained by its worker.

``running_service`` starts ``odeserve up`` (SQLite, embedded Redis, one Celery worker, uvicorn) in
a fresh data directory on 127.0.0.1, waits for ``/health``-style readiness, and on exit stops it with
SIGTERM (``up`` then stops its worker and Redis); only if that fails are the processes it started
killed, by PID. ``train_run`` posts ``POST /train`` and polls until the run has succeeded.
"""

from __future__ import annotations

import http.client
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

from service.cli.embedded import stop_process

__all__ = ["BENCH_RUN", "HOST", "free_port", "request_json", "running_service", "train_run"]

HOST = "127.0.0.1"
START_TIMEOUT_S = 90
STOP_TIMEOUT_S = 30

# What a user gets with no settings (the measured defaults, benchmarks/results/bench_train.md):
# 2x64 exact trace, RNODE 0.01, trained with rk4 at step 0.5 (step check on), served by dopri5 at 1e-3.
BENCH_RUN: dict[str, Any] = {
    "model": "ffjord",
    "dataset": {"name": "8gaussians", "n_train": 4096, "n_test": 512},
    "training": {"iterations": 600},
    "name": "bench_serve",
}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def request_json(
    port: int, method: str, path: str, body: Any = None, timeout: float = 30.0
) -> tuple[int, Any]:
    """One request on a fresh connection; returns ``(status, decoded JSON or None)``."""
    conn = http.client.HTTPConnection(HOST, port, timeout=timeout)
    try:
        payload = None if body is None else json.dumps(body)
        headers = {"content-type": "application/json"} if body is not None else {}
        conn.request(method, path, body=payload, headers=headers)
        response = conn.getresponse()
        data = response.read()
        return response.status, json.loads(data) if data else None
    finally:
        conn.close()


def _children(pid: int) -> list[int]:
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return [int(p) for p in text.split()]


def _wait_ready(proc: subprocess.Popen, port: int) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"odeserve up exited with {proc.returncode}; see its log")
        try:
            status, _ = request_json(port, "GET", "/datasets", timeout=2.0)
            if status == 200:
                return
        except OSError:
            pass
        time.sleep(0.2)
    raise TimeoutError(f"odeserve up not ready on port {port} after {START_TIMEOUT_S}s")


def _stop(proc: subprocess.Popen, started: list[tuple[int, bytes]]) -> None:
    stop_process(proc, STOP_TIMEOUT_S)
    for pid, cmdline in started:  # what `up` started, should it have failed to stop it
        if _cmdline(pid) == cmdline:  # still that process, not a reused PID
            with suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


def _redis_pid(log_path: Path) -> int | None:
    """The embedded redis-server (a daemon, not a child of `up`), from the socket path `up` logs."""
    match = re.search(r"embedded redis at (\S+)", log_path.read_text(errors="replace"))
    pid_file = Path(match.group(1)).parent / "redis.pid" if match else None
    try:
        return int(pid_file.read_text().strip()) if pid_file else None
    except (OSError, ValueError):
        return None


@contextmanager
def running_service(data_dir: Path, env: dict[str, str] | None = None) -> Iterator[int]:
    """Run ``odeserve up`` on a free loopback port; yields the port."""
    port = free_port()
    clean = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL", "MODELS_STORE")}
    command = [
        sys.executable, "-m", "service.cli.main", "up",
        "--host", HOST, "--port", str(port), "--data-dir", str(data_dir),
    ]  # fmt: skip
    data_dir.mkdir(parents=True, exist_ok=True)
    log_path = data_dir / "service.log"
    with open(log_path, "ab") as log:
        env = {**clean, **(env or {})}
        proc = subprocess.Popen(
            command, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
    started: list[int] = []
    try:
        _wait_ready(proc, port)
        started = _children(proc.pid)
        yield port
    finally:
        started = started or _children(proc.pid)
        redis = _redis_pid(log_path)
        pids = started + ([redis] if redis else [])
        _stop(proc, [(pid, _cmdline(pid)) for pid in pids if _cmdline(pid)])


def train_run(port: int, body: dict[str, Any], timeout_s: float = 600.0) -> dict[str, Any]:
    """``POST /train`` then poll ``GET /runs/{id}`` until it succeeds; returns the run resource."""
    status, run = request_json(port, "POST", "/train", body)
    if status != 202:
        raise RuntimeError(f"POST /train answered {status}: {run}")
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        _, run = request_json(port, "GET", f"/runs/{run['id']}")
        if run["status"] == "succeeded":
            return run
        if run["status"] in ("failed", "canceled"):
            raise RuntimeError(f"training run {run['id']} ended {run['status']}: {run.get('error')}")
        time.sleep(0.5)
    raise TimeoutError(f"run {run['id']} did not succeed within {timeout_s}s")
