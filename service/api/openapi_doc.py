"""OpenAPI post-processing: every error response is documented as what it is, RFC 9457 problem+json.

FastAPI documents error responses as ``application/json`` and the automatic ``422`` with its own
``HTTPValidationError`` shape; this API answers every error with ``application/problem+json`` and
the ``Problem`` schema (see ``service.api.errors``). Rewriting the generated document once keeps the
routes free of repeated boilerplate and lets schema-conformance tests (schemathesis) hold the API to
what it serves.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from service.api.errors import PROBLEM_JSON
from service.schemas.runs import Problem

__all__ = ["install_openapi"]

_PROBLEM_REF = {"$ref": "#/components/schemas/Problem"}
_FASTAPI_VALIDATION = ("HTTPValidationError", "ValidationError")


_BODY_ERRORS = {
    "400": "Body could not be parsed (not UTF-8, or nested too deeply)",
    "413": "Body over ODESERVE_MAX_UPLOAD_BYTES",
}


def _problem_responses(schema: dict[str, Any]) -> None:
    for path_item in schema.get("paths", {}).values():
        for operation in path_item.values():
            responses = operation.setdefault("responses", {})
            if "requestBody" in operation:  # answered by the body parser and the body-size limit
                for code, description in _BODY_ERRORS.items():
                    responses.setdefault(code, {"description": description})
            for code, response in responses.items():
                if code.isdigit() and int(code) >= 400:
                    response["content"] = {PROBLEM_JSON: {"schema": _PROBLEM_REF}}
            security = operation.get("security")
            if security and {} not in security:  # API keys are optional (ODESERVE_API_KEYS)
                operation["security"] = [{}, *security]


def _add_problem_schemas(schema: dict[str, Any]) -> None:
    components = schema.setdefault("components", {}).setdefault("schemas", {})
    problem = Problem.model_json_schema(ref_template="#/components/schemas/{model}")
    for name, definition in problem.pop("$defs", {}).items():
        components.setdefault(name, definition)
    components.setdefault("Problem", problem)
    for name in _FASTAPI_VALIDATION:
        components.pop(name, None)


def install_openapi(app: FastAPI) -> None:
    """Replace ``app.openapi`` with a cached generator that documents problem+json errors."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = get_openapi(
                title=app.title, version=app.version, description=app.description, routes=app.routes
            )
            _problem_responses(schema)
            _add_problem_schemas(schema)
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
