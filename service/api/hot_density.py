"""The hot path of ``GET /density``: a small point query on a loaded model, answered below FastAPI.

Under load a 1-point density query spent about two thirds of the API's GIL time in routing,
dependency injection, validation and response models (py-spy ``--gil``), more than in the model.
This pure ASGI middleware answers exactly the common case itself: ``GET /density`` with one valid
``run_id`` and at most ``LOOP_PARSE_MAX_POINTS`` ``x`` points, for a run the model cache remembers
as succeeded and holds loaded, with open reads and no CORS. It parses and serves with the route's
own functions and sends the same JSON. Anything else (an unknown or unloaded run, a bad number, a
wrong dimension or model kind, extra parameters, an error while serving) goes to the FastAPI route
untouched, which gives the documented answer, including every problem+json error.
"""

from __future__ import annotations

import json
import uuid
from typing import Any
from urllib.parse import parse_qsl

from service.api.routes.density import LOOP_PARSE_MAX_POINTS, parse_query_points
from service.api.serving import loaded_model, log_density_async
from service.ml.models import MODELS
from service.model_cache import CachedModel, ModelCache

__all__ = ["HotDensityMiddleware"]

_HEADERS = [(b"content-type", b"application/json")]


class _Route:
    """What the telemetry middleware reads from ``scope["route"]``: the route template."""

    path = "/density"


class HotDensityMiddleware:
    """Answers hot ``GET /density`` queries; passes every other request to ``app``."""

    def __init__(self, app: Any, cache: ModelCache) -> None:
        self.app = app
        self.cache = cache

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["method"] == "GET" and scope["path"] == "/density":
            hit = self._lookup(scope["query_string"])
            if hit is not None:
                body = await self._answer(*hit, scope.get("client"))
                if body is not None:
                    scope["route"] = _Route
                    headers = [*_HEADERS, (b"content-length", str(len(body)).encode())]
                    await send({"type": "http.response.start", "status": 200, "headers": headers})
                    await send({"type": "http.response.body", "body": body})
                    return
        await self.app(scope, receive, send)

    def _lookup(self, query_string: bytes) -> tuple[str, CachedModel, list[str]] | None:
        run_ids, xs = [], []
        for key, value in parse_qsl(query_string.decode("latin-1"), keep_blank_values=True):
            if key == "x":
                xs.append(value)
            elif key == "run_id":
                run_ids.append(value)
            else:
                return None
        if len(run_ids) != 1 or not 1 <= len(xs) <= LOOP_PARSE_MAX_POINTS:
            return None
        try:
            hot = loaded_model(self.cache, str(uuid.UUID(run_ids[0])))
        except ValueError:
            return None
        if hot is None or MODELS[hot[0].model].data_kind != "points":
            return None
        return hot[0].id, hot[1], xs

    @staticmethod
    async def _answer(
        run_id: str, entry: CachedModel, xs: list[str], client: tuple[str, int] | None
    ) -> bytes | None:
        try:  # a wrong dimension or bad number raises here, like in the route
            values = await log_density_async(entry, parse_query_points(xs), "x", client)
        except Exception:  # the route answers it, with its problem+json
            return None
        return json.dumps({"run_id": run_id, "log_density": values}, separators=(",", ":")).encode()
