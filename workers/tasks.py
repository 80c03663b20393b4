"""Celery tasks: a run id in, everything else read from the database by ``workers.runner``."""

from __future__ import annotations

import socket
from functools import lru_cache

from sqlalchemy.exc import OperationalError

from service.config import get_settings
from service.db import SessionFactory, make_engine, make_session_factory
from service.jobs.queue import TRAIN_TASK, CeleryDispatcher
from service.storage.models_store import open_store
from workers.celery_app import app
from workers.runner import run_job
from workers.signals import shutting_down

__all__ = ["train"]


@lru_cache(maxsize=1)
def _sessions() -> SessionFactory:
    return make_session_factory(make_engine(get_settings().database_url))


@lru_cache(maxsize=1)
def _dispatcher() -> CeleryDispatcher:
    return CeleryDispatcher(get_settings())


@app.task(
    name=TRAIN_TASK,
    acks_late=True,
    autoretry_for=(OperationalError,),  # database briefly unreachable: redeliver, resume
    retry_backoff=5,
    retry_backoff_max=120,
    max_retries=3,
)
def train(run_id: str) -> str | None:
    """Train run ``run_id``; returns its final status (None when there was nothing to do)."""
    settings = get_settings()
    return run_job(
        run_id,
        settings=settings,
        sessions=_sessions(),
        store=open_store(settings.models_store, settings.store_cache_dir, settings.s3_endpoint_url),
        worker=f"{socket.gethostname()}:{train.request.hostname or 'local'}",
        shutdown=shutting_down,
        publisher=_dispatcher(),
    )
