"""Prometheus metrics: request latency per route template, requests per batched model pass, runs by
status (read at scrape time); ``log_safe`` for client text in log lines.

Metrics are labelled by route template (``unmatched`` for no route), never by the raw path, and a
request path or other client text is logged only through ``log_safe``: a decoded ``%0a`` would
otherwise start a forged log line."""

from __future__ import annotations

import time
from typing import Any

from prometheus_client import CollectorRegistry, Gauge, Histogram

__all__ = ["LOGGED_TEXT_MAX", "Telemetry", "TelemetryMiddleware", "log_safe"]

LOGGED_TEXT_MAX = 200


def log_safe(text: str, limit: int = LOGGED_TEXT_MAX) -> str:
    """``text`` for one log line: control and other non-printable characters (CR, LF, ESC, ...) and
    backslashes escaped as Python would write them, at most ``limit`` characters (then ``...``)."""
    if text.isprintable() and "\\" not in text and len(text) <= limit:
        return text
    escaped = "".join(
        c if c.isprintable() and c != "\\" else c.encode("unicode_escape").decode() for c in text
    )
    return escaped if len(escaped) <= limit else escaped[:limit] + "..."


class Telemetry:
    """One registry per app, so several apps (tests) never clash on metric names."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.latency = Histogram(
            "odeserve_http_request_duration_seconds",
            "HTTP request latency by method, route template and status code.",
            ["method", "route", "status"],
            registry=self.registry,
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
        )
        self.batch_requests = Histogram(
            "odeserve_batch_requests",
            "Requests answered by one model pass of the query batcher (1: not merged).",
            registry=self.registry,
            buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 1024),
        )
        self._latency_children: dict[tuple[str, str, int], Any] = {}
        self.runs = Gauge("odeserve_runs", "Training runs by status.", ["status"], registry=self.registry)

    def observe_latency(self, method: str, route: str, status: int, seconds: float) -> None:
        key = (method, route, status)
        child = self._latency_children.get(key)
        if child is None:  # labels() costs more than the observation: keep each series' child
            child = self._latency_children[key] = self.latency.labels(method, route, str(status))
        child.observe(seconds)

    def set_run_counts(self, counts: dict[str, int]) -> None:
        for status, n in counts.items():
            self.runs.labels(status=status).set(n)


class TelemetryMiddleware:
    """Pure ASGI middleware; the route template comes from the scope the router filled in."""

    def __init__(self, app: Any, telemetry: Telemetry) -> None:
        self.app = app
        self.telemetry = telemetry

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = {"code": 500}

        async def send_wrapper(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            route = scope.get("route")
            template = getattr(route, "path", None) or "unmatched"
            self.telemetry.observe_latency(
                scope.get("method", ""), template, status["code"], time.perf_counter() - started
            )
