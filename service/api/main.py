"""The FastAPI application factory: ``create_app(settings)``.

Run with ``uvicorn --factory service.api.main:create_app`` (settings from the environment) or
through ``odeserve up``. Tests pass their own settings, session factory and dispatcher.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import torch
from fastapi import FastAPI

from service.api.errors import install_error_handlers
from service.api.routes import ROUTERS
from service.api.telemetry import Telemetry, TelemetryMiddleware
from service.config import Settings, get_settings
from service.db import SessionFactory, make_engine, make_session_factory
from service.model_cache import ModelCache
from service.queue import CeleryDispatcher, Dispatcher
from service.store import ModelStore

__all__ = ["create_app"]

log = logging.getLogger(__name__)

DESCRIPTION = """Train continuous normalizing flows (FFJORD, arXiv:1810.01367) and latent ODEs
(arXiv:1907.03907) as background jobs, then query densities and samples of trained runs.
Errors are RFC 9457 `application/problem+json`."""


def create_app(
    settings: Settings | None = None,
    *,
    session_factory: SessionFactory | None = None,
    dispatcher: Dispatcher | None = None,
) -> FastAPI:
    """Build the app; parts not given are made from ``settings`` (the environment by default)."""
    settings = settings or get_settings()
    if settings.torch_threads:
        torch.set_num_threads(settings.torch_threads)
    owned_engine = None
    if session_factory is None:
        owned_engine = make_engine(settings.database_url)
        session_factory = make_session_factory(owned_engine)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        yield
        if owned_engine is not None:
            owned_engine.dispose()

    app = FastAPI(title="odeserve", version="0.1.0", description=DESCRIPTION, lifespan=lifespan)
    store = ModelStore(settings.models_store)
    app.state.settings = settings
    app.state.session_factory = session_factory
    app.state.store = store
    app.state.model_cache = ModelCache(store, settings.model_cache_size)
    app.state.dispatcher = dispatcher or CeleryDispatcher(settings)
    app.state.telemetry = Telemetry()
    install_error_handlers(app)
    for router in ROUTERS:
        app.include_router(router)
    app.add_middleware(TelemetryMiddleware, telemetry=app.state.telemetry)
    return app
