"""Optional API keys: ``ODESERVE_API_KEYS`` (comma-separated) and ``ODESERVE_PROTECT_READS``.

With no keys configured every route is open. With keys, mutating routes take
``RequireWriteKey`` and need ``Authorization: Bearer <key>``: a missing or malformed header is
``401`` (with ``WWW-Authenticate: Bearer``), an unknown key ``403``, both problem+json. Read routes
take ``RequireReadKey`` (``create_app`` puts it on every router but the operations one), which asks
for a key only when ``ODESERVE_PROTECT_READS=true``. Keys are compared with
:func:`hmac.compare_digest` against every configured key, and never logged or echoed.

``require_write_key`` returns the caller's *principal*: ``"key:<first 16 hex of sha256(key)>"`` for
a valid key, ``"anonymous"`` with authentication off. State a client names itself (its
``Idempotency-Key``) is scoped by it, so two clients choosing the same value never meet.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from service.api.errors import ApiError
from service.api.telemetry import log_safe
from service.config import Settings
from service.schemas.runs import Problem

__all__ = [
    "ANONYMOUS",
    "AUTH_RESPONSES",
    "Principal",
    "RequireReadKey",
    "RequireWriteKey",
    "require_read_key",
    "require_write_key",
]

log = logging.getLogger(__name__)

_bearer = HTTPBearer(auto_error=False, description="An API key from ODESERVE_API_KEYS.")
Credentials = Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]

AUTH_RESPONSES: dict[int | str, dict[str, object]] = {
    401: {"model": Problem, "description": "API key missing (only when ODESERVE_API_KEYS is set)"},
    403: {"model": Problem, "description": "API key not recognised"},
}


ANONYMOUS = "anonymous"


def _matching_key(given: str, keys: tuple[str, ...]) -> str | None:
    # Compare with every key (no early exit), so timing tells nothing about which prefix matched.
    found = None
    for key in keys:
        if hmac.compare_digest(given.encode(), key.encode()):
            found = key
    return found


def _principal(key: str) -> str:
    """A stable, non-secret name for the holder of ``key`` (the key itself is never stored)."""
    return "key:" + hashlib.sha256(key.encode()).hexdigest()[:16]


def _check(request: Request, credentials: HTTPAuthorizationCredentials | None) -> str:
    """The caller's principal; 401/403 problem+json when keys are configured and none matches."""
    settings: Settings = request.app.state.settings
    keys = settings.api_key_values
    if not keys:
        return ANONYMOUS
    if credentials is None or credentials.scheme.lower() != "bearer" or not credentials.credentials:
        raise ApiError(
            401,
            "unauthorized",
            "this route needs an API key: send Authorization: Bearer <key>",
            errors=[("Authorization", "missing bearer token")],
            headers={"WWW-Authenticate": 'Bearer realm="odeserve"'},
        )
    key = _matching_key(credentials.credentials, keys)
    if key is None:
        log.warning("rejected an unknown API key for %s %s", request.method, log_safe(request.scope["path"]))
        raise ApiError(
            403,
            "forbidden",
            "the API key is not valid for this service",
            errors=[("Authorization", "unknown API key")],
        )
    return _principal(key)


# async: pure checks, so FastAPI runs them on the loop instead of a threadpool round trip per request.
async def require_write_key(request: Request, credentials: Credentials) -> str:
    """Mutating routes: a valid key whenever keys are configured; returns the caller's principal."""
    return _check(request, credentials)


async def require_read_key(request: Request, credentials: Credentials) -> None:
    """Read routes: a valid key only when keys are configured and ``protect_reads`` is on."""
    if request.app.state.settings.protect_reads:
        _check(request, credentials)


RequireWriteKey = Annotated[str, Depends(require_write_key)]
Principal = RequireWriteKey  # the same dependency, named for routes that use its value
RequireReadKey = Annotated[None, Depends(require_read_key)]
