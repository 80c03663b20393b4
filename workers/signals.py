"""Celery signal handlers: per-process setup, the reconciler thread of each worker, warm shutdown.

On SIGTERM (``docker stop``, a deploy, ``odeserve up`` stopping) Celery starts a warm shutdown and
sends ``worker_shutting_down`` in the main process; :data:`shutting_down` is then set and the
running job checkpoints and hands itself back before its next step (``workers.runner.run_job``).
That needs the job to run in the worker's own process: start workers with ``--pool=solo`` (the
embedded service, the tests) or ``--pool=threads`` (compose: the ping health check stays answered).
"""

from __future__ import annotations

import logging
import threading

import torch
from celery.signals import worker_process_init, worker_ready, worker_shutdown, worker_shutting_down

from service.config import get_settings
from service.db import make_engine, make_session_factory
from service.jobs.queue import CeleryDispatcher
from service.jobs.reconcile import Reconciler

__all__ = ["configure_process", "shutting_down", "start_reconciler", "stop_reconciler"]

log = logging.getLogger(__name__)

_reconciler: Reconciler | None = None
shutting_down = threading.Event()
"""Set once this worker's warm shutdown has begun: the running job hands itself back."""


def configure_process() -> None:
    """Apply ``ODESERVE_TORCH_THREADS`` and ``ODESERVE_LOG_LEVEL`` to this process."""
    settings = get_settings()
    if settings.torch_threads:
        torch.set_num_threads(settings.torch_threads)
    logging.getLogger("service").setLevel(settings.log_level.upper())
    logging.getLogger("workers").setLevel(settings.log_level.upper())


def start_reconciler() -> Reconciler:
    """Reconcile now and every ``ODESERVE_RECONCILE_INTERVAL_S`` in a daemon thread of this worker."""
    global _reconciler
    settings = get_settings()
    sessions = make_session_factory(make_engine(settings.database_url))
    _reconciler = Reconciler(settings, sessions, CeleryDispatcher(settings), settings.reconcile_interval_s)
    _reconciler.start()
    return _reconciler


def stop_reconciler() -> None:
    if _reconciler is not None:
        _reconciler.stop()


@worker_process_init.connect
def _on_process_init(**_: object) -> None:
    configure_process()


@worker_ready.connect
def _on_ready(**_: object) -> None:
    configure_process()  # the solo pool runs tasks in the main process
    start_reconciler()
    log.info("worker ready (torch threads: %d), reconciler started", torch.get_num_threads())


@worker_shutdown.connect
def _on_shutdown(**_: object) -> None:
    stop_reconciler()


@worker_shutting_down.connect
def _on_shutting_down(**_: object) -> None:
    shutting_down.set()  # runs inside the signal handler: no logging here (the runner logs)
