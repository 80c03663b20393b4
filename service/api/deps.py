"""FastAPI dependencies as ``Annotated`` aliases; tests override them or pass parts to ``create_app``."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends, Request
from sqlalchemy.orm import Session

from service.config import Settings
from service.model_cache import ModelCache
from service.queue import Dispatcher
from service.store import ModelStore

__all__ = [
    "DispatcherDep",
    "ModelCacheDep",
    "SessionDep",
    "SettingsDep",
    "StoreDep",
    "get_dispatcher",
    "get_model_cache",
    "get_session",
    "get_settings",
    "get_store",
]


def get_settings(request: Request) -> Settings:
    return request.app.state.settings


def get_session(request: Request) -> Iterator[Session]:
    with request.app.state.session_factory() as session:
        yield session


def get_model_cache(request: Request) -> ModelCache:
    return request.app.state.model_cache


def get_store(request: Request) -> ModelStore:
    return request.app.state.store


def get_dispatcher(request: Request) -> Dispatcher:
    return request.app.state.dispatcher


SettingsDep = Annotated[Settings, Depends(get_settings)]
SessionDep = Annotated[Session, Depends(get_session)]
ModelCacheDep = Annotated[ModelCache, Depends(get_model_cache)]
StoreDep = Annotated[ModelStore, Depends(get_store)]
DispatcherDep = Annotated[Dispatcher, Depends(get_dispatcher)]
