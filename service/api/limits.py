"""A request-body byte limit for every route (``ODESERVE_MAX_UPLOAD_BYTES``): ``413`` problem+json.

A declared ``Content-Length`` over the limit is refused before the body is read; a chunked body is
counted as it arrives and refused as soon as it passes the limit, so no route ever buffers more than
the limit. ``POST /datasets`` streams and limits its own body (naming the ``file`` field), so it is
exempt here.
"""

from __future__ import annotations

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.api.errors import problem_response

__all__ = ["BodyLimitMiddleware", "BodyTooLarge"]


class BodyTooLarge(HTTPException):
    """Raised from ``receive`` when a streamed body passes the limit (rendered as problem+json)."""

    slug = "payload_too_large"

    def __init__(self, limit: int) -> None:
        super().__init__(413, f"the request body is larger than {limit} bytes")
        self.errors = [("body", f"send at most {limit} bytes")]


class BodyLimitMiddleware:
    """Pure ASGI middleware (no buffering): refuse bodies over ``max_bytes`` with 413."""

    def __init__(self, app: ASGIApp, *, max_bytes: int, exempt: tuple[str, ...] = ()) -> None:
        self.app, self.max_bytes, self.exempt = app, max_bytes, exempt

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in self.exempt:
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or []).get(b"content-length", b"")
        if declared.isdigit() and int(declared) > self.max_bytes:
            error = BodyTooLarge(self.max_bytes)
            response = problem_response(413, slug=error.slug, detail=error.detail, errors=error.errors)
            await response(scope, receive, send)
            return
        received = 0

        async def limited() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise BodyTooLarge(self.max_bytes)
            return message

        await self.app(scope, limited, send)
