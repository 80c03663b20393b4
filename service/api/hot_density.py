"""The hot path of ``GET /density``: a small point query on a loaded model, answered before FastAPI.

Under 16 concurrent 1-point clients the API's event loop is CPU-bound, and the requests' HTTP side
(uvicorn, routing, middleware, parsing, JSON) took about as much GIL time as their model passes
(py-spy ``--gil``: 45 % vs 52 % of the samples). :class:`HotDensity` answers exactly the common case
itself, ahead of the app's middleware stack (the app calls it first, see ``service.api.main``):
``GET /density`` with one valid ``run_id`` and at most ``LOOP_PARSE_MAX_POINTS`` valid ``x`` points,
for a run the model cache remembers as succeeded and holds loaded. It sends the route's JSON object
(the same keys and float values) and records the request's latency under the route's template.
Anything else (an unknown or unloaded run, a bad number, a wrong dimension or model kind, extra
parameters, an error while serving) goes to the FastAPI route untouched, which gives the documented
answer, including every problem+json error. The app only installs it when reads need no API key and
no CORS headers are sent.
"""

from __future__ import annotations

import math
import time
import uuid
from typing import Any
from urllib.parse import parse_qsl

from service.api.errors import api_error_response
from service.api.routes.density import LOOP_PARSE_MAX_POINTS, parse_query_points
from service.api.serving import loaded_model, model_busy, model_points
from service.api.telemetry import Telemetry
from service.ml.errors import DataError
from service.ml.models import MODELS
from service.serving.batching import BatchTimeout
from service.serving.model_cache import CachedModel, ModelCache

__all__ = ["HotDensity", "density_json"]

PATH = "/density"
RUN_IDS_KEPT = 1024
_HEADERS = [(b"content-type", b"application/json")]


def density_json(run_id: str, values: list[float]) -> bytes:
    """The route's ``{"run_id": ..., "log_density": [...]}`` body (compact; non-finite -> null).

    ``repr`` is what ``json.dumps`` writes for a finite float."""
    cells = ",".join(repr(v) if math.isfinite(v) else "null" for v in values)
    return f'{{"run_id":"{run_id}","log_density":[{cells}]}}'.encode()


class HotDensity:
    """Answers hot ``GET /density`` queries of the models in ``cache``."""

    def __init__(self, cache: ModelCache, telemetry: Telemetry) -> None:
        self.cache = cache
        self.telemetry = telemetry
        self._run_ids: dict[str, str] = {}  # query value -> canonical id, for those seen lately

    async def answered(self, scope: dict[str, Any], receive: Any, send: Any) -> bool:
        """Answer ``scope`` (a ``GET /density``) if it is a hot query; False: nothing was sent.

        A query the batcher does not answer within its timeout gets the route's 503 from here, so
        it does not wait a second time in the route."""
        started = time.perf_counter()
        hit = self._lookup(scope["query_string"])
        if hit is None:
            return False
        run_id, entry, xs = hit
        try:  # a bad number or a wrong dimension: the route answers it, with its problem+json
            points = model_points(entry, parse_query_points(xs), "x")
        except DataError:
            return False
        try:
            values = await entry.batcher.log_prob_async(points, scope.get("client"))
        except BatchTimeout as exc:
            await api_error_response(model_busy(exc))(scope, receive, send)
            self.telemetry.observe_latency("GET", PATH, 503, time.perf_counter() - started)
            return True
        except Exception:  # the route answers it, with its problem+json
            return False
        body = density_json(run_id, values.tolist())
        headers = [*_HEADERS, (b"content-length", str(len(body)).encode())]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": body})
        self.telemetry.observe_latency("GET", PATH, 200, time.perf_counter() - started)
        return True

    def _lookup(self, query_string: bytes) -> tuple[str, CachedModel, list[str]] | None:
        run_ids, xs = [], []
        for key, value in _query_pairs(query_string.decode("latin-1")):
            if key == "x":
                xs.append(value)
            elif key == "run_id":
                run_ids.append(value)
            else:
                return None
        if len(run_ids) != 1 or not 1 <= len(xs) <= LOOP_PARSE_MAX_POINTS:
            return None
        run_id = self._run_ids.get(run_ids[0]) or self._canonical(run_ids[0])
        hot = loaded_model(self.cache, run_id) if run_id is not None else None
        if hot is None or MODELS[hot[0].model].data_kind != "points":
            return None
        return hot[0].id, hot[1], xs

    def _canonical(self, value: str) -> str | None:
        """``value`` as a canonical run id (None: not a UUID); remembered, as parsing costs ~2 us."""
        try:
            run_id = str(uuid.UUID(value))
        except ValueError:
            return None
        if len(self._run_ids) >= RUN_IDS_KEPT:
            self._run_ids.clear()
        self._run_ids[value] = run_id
        return run_id


def _query_pairs(query: str) -> list[tuple[str, str]]:
    """``parse_qsl(query, keep_blank_values=True)``, split by hand when nothing is escaped."""
    if "%" in query or "+" in query:
        return parse_qsl(query, keep_blank_values=True)
    return [pair.partition("=")[::2] for pair in query.split("&") if pair]
