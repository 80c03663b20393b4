"""Runs on their way to a worker: publishing, watching the broker, and republishing what it lost.

Owns ``queue`` (the API's Celery producer and broker health check), ``broker_scan`` (which run ids
have a message in Redis), ``reconcile`` (the loop that republishes lost runs so each accepted run
completes exactly once) and ``sweeps`` (expanding a grid into train requests and tabulating the
finished runs). May import ``service.config``, ``service.db`` and ``service.ml``; never FastAPI,
serving or the worker code (only the task name is shared with ``workers.tasks``).
"""
