"""Optional API keys: ``ODESERVE_API_KEYS`` (comma-separated) and ``ODESERVE_PROTECT_READS``.

With no keys configured every route is open. With keys, mutating routes take
``RequireWriteKey`` and need ``Authorization: Bearer <key>``: a missing or malformed header is
``401`` (with ``WWW-Authenticate: Bearer``), an unknown key ``403``, both problem+json. Read routes
take ``RequireReadKey`` (``create_app`` puts it on every router but the operations one), which asks
for a key only when ``ODESERVE_PROTECT_READS=true``. Keys are compared with
:func:`hmac.compare_digest` against every configured key, and never logged or echoed.
"""

from __future__ import annotations

import hmac
import logging
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from service.api.errors import ApiError
from service.config import Settings
from service.schemas.runs import Problem

__all__ = [
    "AUTH_RESPONSES",
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


def _key_matches(given: str, keys: tuple[str, ...]) -> bool:
    # Compare with every key (no early exit), so timing tells nothing about which prefix matched.
    found = False
    for key in keys:
        found |= hmac.compare_digest(given.encode(), key.encode())
    return found


def _check(request: Request, credentials: HTTPAuthorizationCredentials | None) -> None:
    settings: Settings = request.app.state.settings
    keys = settings.api_key_values
    if not keys:
        return
    if credentials is None or credentials.scheme.lower() != "bearer" or not credentials.credentials:
        raise ApiError(
            401,
            "unauthorized",
            "this route needs an API key: send Authorization: Bearer <key>",
            errors=[("Authorization", "missing bearer token")],
            headers={"WWW-Authenticate": 'Bearer realm="odeserve"'},
        )
    if not _key_matches(credentials.credentials, keys):
        log.warning("rejected an unknown API key for %s %s", request.method, request.url.path)
        raise ApiError(
            403,
            "forbidden",
            "the API key is not valid for this service",
            errors=[("Authorization", "unknown API key")],
        )


# async: pure checks, so FastAPI runs them on the loop instead of a threadpool round trip per request.
async def require_write_key(request: Request, credentials: Credentials) -> None:
    """Mutating routes: a valid key whenever keys are configured."""
    _check(request, credentials)


async def require_read_key(request: Request, credentials: Credentials) -> None:
    """Read routes: a valid key only when keys are configured and ``protect_reads`` is on."""
    if request.app.state.settings.protect_reads:
        _check(request, credentials)


RequireWriteKey = Annotated[None, Depends(require_write_key)]
RequireReadKey = Annotated[None, Depends(require_read_key)]
