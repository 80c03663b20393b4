"""The HTTP face: the FastAPI application, its routes, and everything that is only about HTTP.

Owns the app factory (``main``), routes, API keys, problem+json errors, body limits, Prometheus
telemetry, the OpenAPI post-processing and the ``GET /density`` hot path that answers ahead of
FastAPI. May import every layer beneath it (config, storage, db, jobs, plots, schemas, serving, ml);
only ``service.cli`` imports it.
"""
