"""Celery worker: thin tasks over ``workers.runner``, which trains through the core ``fit``."""
