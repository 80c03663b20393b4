"""The FastAPI application factory: ``create_app(settings)``.

Run with ``uvicorn --factory service.api.main:create_app`` (settings from the environment) or
through ``odeserve up``. Tests pass their own settings, session factory and dispatcher.
"""

from __future__ import annotations

import gc
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial

import torch
from anyio import to_thread
from fastapi import Depends, FastAPI
from fastapi.middleware.cors import CORSMiddleware
from fastapi.telemetry import TelemetryConfig
from starlette.types import Receive, Scope, Send

from service.api.auth import AUTH_RESPONSES, require_read_key
from service.api.errors import install_error_handlers
from service.api.hot_density import PATH as HOT_PATH
from service.api.hot_density import HotDensity
from service.api.limits import BodyLimitMiddleware
from service.api.openapi_doc import install_openapi
from service.api.routes import ROUTERS, events, ops
from service.api.serving import confirmed_run
from service.api.telemetry import Telemetry, TelemetryMiddleware
from service.api.ui import install_ui
from service.config import Settings, get_settings
from service.db import SessionFactory, make_engine, make_session_factory
from service.jobs.queue import CeleryDispatcher, Dispatcher
from service.serving.batching import BatchPolicy
from service.serving.model_cache import ModelCache
from service.storage.models_store import open_store

__all__ = ["ServiceApp", "create_app"]

log = logging.getLogger(__name__)

NO_OTEL: TelemetryConfig = {"tracing": False, "metrics": False, "logs": False}

DESCRIPTION = """Train continuous normalizing flows (FFJORD, arXiv:1810.01367) and latent ODEs
(arXiv:1907.03907) as background jobs, then query densities and samples of trained runs.
Errors are RFC 9457 `application/problem+json`."""


class ServiceApp(FastAPI):
    """FastAPI with :class:`HotDensity` ahead of the middleware stack (when it is installed).

    The stack's five layers (FastAPI's error, telemetry and body-limit middleware, ours) cost a
    1-point density query about 5 % of its CPU under load (py-spy); the hot path needs none of them.
    """

    hot_density: HotDensity | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        hot = self.hot_density
        if (
            hot is not None
            and scope["type"] == "http"
            and scope["path"] == HOT_PATH
            and scope["method"] == "GET"
            and await hot.answered(scope, receive, send)
        ):
            return
        await super().__call__(scope, receive, send)


def create_app(
    settings: Settings | None = None,
    *,
    session_factory: SessionFactory | None = None,
    dispatcher: Dispatcher | None = None,
) -> ServiceApp:
    """Build the app; parts not given are made from ``settings`` (the environment by default)."""
    settings = settings or get_settings()
    # Serving batches are small and request threads need the cores too: one intra-op thread by default.
    if threads := settings.torch_threads or settings.serve_torch_threads:
        torch.set_num_threads(threads)
    owned_engine = None
    if session_factory is None:
        owned_engine = make_engine(settings.database_url)
        session_factory = make_session_factory(owned_engine)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        # Sync routes and large-input parsing run in anyio's threadpool (40 threads by default).
        # Point queries await their batch on the loop and hold no thread while they wait.
        to_thread.current_default_thread_limiter().total_tokens = settings.api_threads
        # Move the ~300k objects of the imports (torch, FastAPI, SQLAlchemy, Celery) out of the
        # collector's reach: a full collection scanned them all, ~300 ms each, which cost a
        # 1000-sample query 2.1 ms on average (0.001 ms frozen; measured in the API's process).
        gc.collect()
        gc.freeze()
        yield
        if owned_engine is not None:
            owned_engine.dispose()

    # Metrics are Prometheus (service.api.telemetry). FastAPI's native OpenTelemetry hook would look
    # up the global OTel providers (environment reads) on every request: about 8% of a 1-point
    # density query's CPU under load (py-spy), for nothing unless OTel is configured.
    app = ServiceApp(
        title="odeserve", version="0.1.0", description=DESCRIPTION, lifespan=lifespan, telemetry=NO_OTEL
    )
    store = open_store(settings.models_store, settings.store_cache_dir, settings.s3_endpoint_url)
    app.state.settings = settings
    app.state.session_factory = session_factory
    app.state.store = store
    policy = BatchPolicy(
        max_points=settings.batch_max_points,
        max_wait_s=settings.batch_max_wait_ms / 1000,
        timeout_s=settings.batch_timeout_s,
        inline_max_points=settings.batch_inline_max_points,
        max_pass_bytes=settings.query_memory_bytes,
        rtol_floor=settings.serve_rtol_floor,
        atol_floor=settings.serve_atol_floor,
        max_num_steps=settings.serve_max_num_steps,
        inline_max_steps=settings.batch_inline_max_steps,
    )
    app.state.telemetry = Telemetry()
    on_pass = app.state.telemetry.batch_requests.observe
    confirm = partial(confirmed_run, session_factory)
    app.state.model_cache = ModelCache(store, settings.model_cache_size, policy, on_pass, confirm)
    app.state.dispatcher = dispatcher or CeleryDispatcher(settings)
    install_error_handlers(app)
    for router in ROUTERS:
        if router is ops.router:  # probes and metrics stay open (orchestrators call them)
            app.include_router(router)
        elif router is events.router:  # reads the key from the header or ?api_key= (EventSource)
            app.include_router(router, responses=AUTH_RESPONSES)
        else:
            app.include_router(router, dependencies=[Depends(require_read_key)], responses=AUTH_RESPONSES)
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_upload_bytes, exempt=("/datasets",))
    if settings.cors_origin_list:  # off by default: no CORS headers unless origins are listed
        app.add_middleware(
            CORSMiddleware,
            allow_origins=list(settings.cors_origin_list),
            allow_methods=["GET", "POST", "PATCH", "DELETE"],
            allow_headers=["Authorization", "Content-Type", "Idempotency-Key"],
            expose_headers=["Location", "Retry-After", "Link"],
        )
    if not settings.protect_reads and not settings.cors_origin_list:  # hot path sends no auth/CORS
        app.hot_density = HotDensity(app.state.model_cache, app.state.telemetry)
    app.add_middleware(TelemetryMiddleware, telemetry=app.state.telemetry)
    install_ui(app)
    install_openapi(app)
    return app
