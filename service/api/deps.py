"""FastAPI dependencies as ``Annotated`` aliases; tests override them or pass parts to ``create_app``.

The getters only read ``app.state``, so they are ``async def``: FastAPI runs a plain ``def``
dependency in the threadpool, a round trip per dependency per request for an attribute read.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends, Request
from sqlalchemy.orm import Session

from service.config import Settings
from service.db import SessionFactory
from service.jobs.queue import Dispatcher
from service.serving.model_cache import ModelCache
from service.storage.models_store import ModelStore

__all__ = [
    "DispatcherDep",
    "ModelCacheDep",
    "SessionDep",
    "SessionFactoryDep",
    "SettingsDep",
    "StoreDep",
    "get_dispatcher",
    "get_model_cache",
    "get_session",
    "get_session_factory",
    "get_settings",
    "get_store",
]


async def get_settings(request: Request) -> Settings:
    return request.app.state.settings


def get_session(request: Request) -> Iterator[Session]:
    with request.app.state.session_factory() as session:
        yield session


async def get_session_factory(request: Request) -> SessionFactory:
    """For routes that touch the database only sometimes: open a session when needed."""
    return request.app.state.session_factory


async def get_model_cache(request: Request) -> ModelCache:
    return request.app.state.model_cache


async def get_store(request: Request) -> ModelStore:
    return request.app.state.store


async def get_dispatcher(request: Request) -> Dispatcher:
    return request.app.state.dispatcher


SettingsDep = Annotated[Settings, Depends(get_settings)]
SessionDep = Annotated[Session, Depends(get_session)]
SessionFactoryDep = Annotated[SessionFactory, Depends(get_session_factory)]
ModelCacheDep = Annotated[ModelCache, Depends(get_model_cache)]
StoreDep = Annotated[ModelStore, Depends(get_store)]
DispatcherDep = Annotated[Dispatcher, Depends(get_dispatcher)]
