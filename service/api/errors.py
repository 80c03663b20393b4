"""Every error leaves the API as RFC 9457 ``application/problem+json``.

``{"type", "title", "status", "detail", "errors": [{"field", "message"}]}``. Core domain errors,
request validation errors and HTTP exceptions are mapped here and nowhere else; bad input is always
a 4xx naming the field, never a 500. A checkpoint that fails its DB checksum (tampered, truncated,
missing) is a ``409 checkpoint_error`` telling the client to retrain the run.

No answer names a server file: absolute filesystem paths in a detail or field message (an
``OSError`` text inside a ``CheckpointError``, say) are cut to their last component before they
leave (``redact_paths``); the full text stays in the server log.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Sequence
from http import HTTPStatus
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from service.ml.errors import OdeServeError

__all__ = ["PROBLEM_JSON", "ApiError", "install_error_handlers", "problem_response", "redact_paths"]

log = logging.getLogger(__name__)

PROBLEM_JSON = "application/problem+json"
MAX_LISTED_ERRORS = 20

_STATUS_BY_KIND = {
    "data_error": 422,
    "config_error": 422,
    "unknown_name": 422,
    "solver_error": 422,
    "checkpoint_error": 409,  # missing or tampered checkpoint: the run must be retrained, not a 500
    "canceled": 409,
    "store_unavailable": 503,  # MODELS_STORE=s3://... unreachable: retry later
}


# An absolute POSIX path of two or more components (not one of the API's own routes, which details
# may name), or a Windows drive path; ``file://`` URLs too.
_API_ROOTS = ("runs", "sweeps", "datasets", "density", "sample", "predict", "train", "problems", "docs")
_PATH = re.compile(
    r"(?:file://|(?<![\w.~:/-]))/(?!(?:{})\b)(?:[^\s'\"`/:;,()<>]+/)+[^\s'\"`/:;,()<>]*"
    r"|\b[A-Za-z]:\\(?:[^\s'\"`\\:;,()<>]+\\)+[^\s'\"`\\:;,()<>]*".format("|".join(_API_ROOTS))
)


def _last_part(match: re.Match[str]) -> str:
    parts = [p for p in re.split(r"[/\\]", match.group(0)) if p]
    return f"<server path>/{parts[-1]}" if parts else "<server path>"


def redact_paths(text: str) -> str:
    """``text`` with every absolute server path replaced by ``<server path>/<its last part>``."""
    return _PATH.sub(_last_part, text) if "/" in text or "\\" in text else text


class ApiError(Exception):
    """An error raised by a route: status, a problem slug, detail and the offending fields."""

    def __init__(
        self,
        status: int,
        slug: str,
        detail: str,
        *,
        errors: Sequence[tuple[str, str]] = (),
        headers: dict[str, str] | None = None,
        extra: dict[str, Any] | None = None,
    ) -> None:
        self.status, self.slug, self.detail = status, slug, detail
        self.errors = list(errors)
        self.headers = headers
        self.extra = extra or {}
        super().__init__(detail)


def problem_response(
    status: int,
    *,
    slug: str | None = None,
    detail: str | None = None,
    errors: Iterable[tuple[str, str]] = (),
    headers: dict[str, str] | None = None,
    extra: dict[str, Any] | None = None,
) -> JSONResponse:
    listed = [{"field": f, "message": redact_paths(m)} for f, m in errors][:MAX_LISTED_ERRORS]
    body = {
        "type": f"/problems/{slug}" if slug else "about:blank",
        "title": HTTPStatus(status).phrase,
        "status": status,
        "detail": None if detail is None else redact_paths(detail),
        "errors": listed,
        **(extra or {}),
    }
    return JSONResponse(body, status_code=status, media_type=PROBLEM_JSON, headers=headers)


def _field(loc: Sequence[Any]) -> str:
    parts = [str(p) for p in loc]
    if parts and parts[0] in ("body", "query", "path", "header", "cookie", "form"):
        parts = parts[1:]
    return ".".join(parts) or "body"


def validation_errors(errors: Iterable[dict[str, Any]], prefix: Sequence[Any] = ()) -> list[tuple[str, str]]:
    out = []
    for error in errors:
        loc = (*prefix, *error.get("loc", ()))
        message = error.get("msg", "invalid value")
        if error.get("type") == "json_invalid":  # its loc ends in a character offset, not a field
            loc = ("body",)
            message = f"body is not valid JSON: {error.get('ctx', {}).get('error', message)}"
        out.append((_field(loc), message))
    return out


def _summary(errors: list[tuple[str, str]]) -> str:
    shown = "; ".join(f"{f}: {m}" for f, m in errors[:3])
    more = f" (and {len(errors) - 3} more)" if len(errors) > 3 else ""
    return f"{len(errors)} invalid field(s): {shown}{more}"


def api_error_response(exc: ApiError) -> JSONResponse:
    """The problem+json answer to ``exc`` (what the app's handler sends for it)."""
    return problem_response(
        exc.status,
        slug=exc.slug,
        detail=exc.detail,
        errors=exc.errors,
        headers=exc.headers,
        extra=exc.extra,
    )


async def _on_api_error(_: Request, exc: ApiError) -> JSONResponse:
    return api_error_response(exc)


async def _on_domain_error(_: Request, exc: OdeServeError) -> JSONResponse:
    status = _STATUS_BY_KIND.get(exc.kind, 422)
    if exc.kind == "checkpoint_error":
        log.error("checkpoint failed verification: %s", exc)
    errors = [(exc.field or ("run_id" if exc.kind == "checkpoint_error" else "body"), str(exc))]
    extra = {"valid": exc.valid} if hasattr(exc, "valid") else None
    return problem_response(status, slug=exc.kind, detail=str(exc), errors=errors, extra=extra)


async def _on_request_validation(_: Request, exc: RequestValidationError) -> JSONResponse:
    errors = validation_errors(exc.errors())
    return problem_response(422, slug="validation_error", detail=_summary(errors), errors=errors)


async def _on_pydantic_validation(_: Request, exc: ValidationError) -> JSONResponse:
    errors = validation_errors(exc.errors())
    return problem_response(422, slug="validation_error", detail=_summary(errors), errors=errors)


async def _on_http_exception(_: Request, exc: StarletteHTTPException) -> JSONResponse:
    detail = exc.detail if isinstance(exc.detail, str) else HTTPStatus(exc.status_code).description
    errors = getattr(exc, "errors", ())
    if exc.status_code == 400 and not errors:  # FastAPI's body parser: not UTF-8, nested too deeply
        errors = [("body", detail)]
    return problem_response(
        exc.status_code,
        slug=getattr(exc, "slug", None),
        detail=detail,
        errors=errors,
        headers=getattr(exc, "headers", None),
    )


async def _on_unexpected(_: Request, exc: Exception) -> JSONResponse:
    log.exception("unhandled error", exc_info=exc)
    return problem_response(500, slug="internal_error", detail="internal error; see the server log")


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(ApiError, _on_api_error)  # type: ignore[arg-type]
    app.add_exception_handler(OdeServeError, _on_domain_error)  # type: ignore[arg-type]
    app.add_exception_handler(RequestValidationError, _on_request_validation)  # type: ignore[arg-type]
    app.add_exception_handler(ValidationError, _on_pydantic_validation)  # type: ignore[arg-type]
    app.add_exception_handler(StarletteHTTPException, _on_http_exception)  # type: ignore[arg-type]
    app.add_exception_handler(Exception, _on_unexpected)
