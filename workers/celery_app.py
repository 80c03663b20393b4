"""The worker's Celery app: ``celery -A workers.celery_app worker -Q training -c 1``.

Configuration (Redis broker and backend, JSON only, ``acks_late``, ``task_reject_on_worker_lost``,
prefetch 1, visibility timeout above the longest run) lives in :func:`service.jobs.queue.make_celery`,
shared with the API's producer.
"""

from __future__ import annotations

from service.config import get_settings
from service.jobs.queue import make_celery

__all__ = ["app"]

app = make_celery(get_settings())
app.conf.include = ["workers.tasks"]

import workers.signals  # noqa: E402,F401  (connects the worker signal handlers)
