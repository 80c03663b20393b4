"""The job queue seen from the API: a Celery app used as a producer, and a broker health check.

Only the task *name* is shared with ``workers.tasks``, so the API never imports worker code.
Two queues: ``ODESERVE_QUEUE`` for runs that train anywhere (``device`` ``auto``) or on a CPU, and
``ODESERVE_GPU_QUEUE`` for runs that asked for ``cuda``, which only GPU workers consume (a GPU
worker consumes both: ``-Q training-gpu,training``).
"""

from __future__ import annotations

import logging
from typing import Protocol
from urllib.parse import urlsplit

import redis
from celery import Celery

from service.config import Settings
from service.jobs.broker_scan import BrokerView, scan_broker

__all__ = ["TRAIN_TASK", "CeleryDispatcher", "Dispatcher", "make_celery", "queue_for", "redis_client"]

log = logging.getLogger(__name__)

TRAIN_TASK = "odeserve.train"


class Dispatcher(Protocol):
    """Hands a run id to whatever executes training jobs."""

    def enqueue(self, run_id: str, device: str = "auto") -> None: ...

    def ping(self) -> None: ...


def queue_for(settings: Settings, device: str) -> str:
    """The Celery queue of a run that asked for ``device`` (``auto``, ``cpu`` or ``cuda``)."""
    return settings.gpu_queue if device == "cuda" else settings.queue


def make_celery(settings: Settings) -> Celery:
    """A Celery app on the Redis broker/backend of ``settings`` (JSON only, one job at a time)."""
    app = Celery("odeserve", broker=settings.redis_url, backend=settings.redis_url)
    transport = {"visibility_timeout": settings.visibility_timeout}
    app.conf.update(
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        task_default_queue=settings.queue,
        task_routes={TRAIN_TASK: {"queue": settings.queue}},
        task_time_limit=settings.hard_time_limit + 30,  # the heartbeat watchdog records it first
        task_soft_time_limit=settings.max_run_seconds,
        broker_transport_options=transport,
        result_backend_transport_options=transport,
        result_expires=24 * 3600,
        broker_connection_retry_on_startup=True,
        broker_connection_timeout=3,
        task_publish_retry_policy={
            "max_retries": 2,
            "interval_start": 0,
            "interval_step": 0.5,
            "interval_max": 1,
        },
        worker_hijack_root_logger=False,
        worker_send_task_events=False,
    )
    return app


def redis_client(url: str, timeout: float = 2.0) -> redis.Redis:
    """A redis-py client for a Celery-style URL (``redis://`` or ``redis+socket:///path``)."""
    parts = urlsplit(url)
    if parts.scheme in ("redis+socket", "socket", "unix"):
        return redis.Redis(unix_socket_path=parts.path, socket_timeout=timeout)
    return redis.Redis.from_url(url, socket_timeout=timeout, socket_connect_timeout=timeout)


class CeleryDispatcher:
    """Publishes ``odeserve.train(run_id)`` to the queue of the run's device."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.app = make_celery(settings)

    def enqueue(self, run_id: str, device: str = "auto") -> None:
        queue = queue_for(self.settings, device)
        self.app.send_task(TRAIN_TASK, args=[run_id], queue=queue)
        log.info("run=%s queued on %s", run_id, queue)

    def ping(self) -> None:
        client = redis_client(self.settings.redis_url)
        try:
            client.ping()
        finally:
            client.close()

    def scan(self, delivered_within_s: float) -> BrokerView:
        """Run ids with a message in either training queue (see :mod:`service.jobs.broker_scan`)."""
        client = redis_client(self.settings.redis_url)
        try:
            queues = dict.fromkeys((self.settings.queue, self.settings.gpu_queue))
            views = [scan_broker(client, q, delivered_within_s=delivered_within_s) for q in queues]
        finally:
            client.close()
        return BrokerView(
            frozenset().union(*(v.waiting for v in views)), frozenset().union(*(v.delivered for v in views))
        )
