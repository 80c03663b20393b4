"""Answering queries on trained models, independent of HTTP.

Owns ``model_cache`` (a bounded LRU of loaded models keyed by run id and checkpoint digest),
``batching`` (concurrent density requests on one model share a solve), ``series_queries`` (latent
ODE prediction, trajectories and likelihood bounds) and ``run_figures`` (a stored run's data and
plots). May import ``service.ml``, ``service.plots``, ``service.schemas`` and ``service.storage``;
never FastAPI or the database. The HTTP side (routing, status checks, the ``GET /density`` hot path
ahead of FastAPI) stays in ``service.api``.
"""
