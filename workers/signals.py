"""Celery signal handlers: per-process setup of logging and torch threads."""

from __future__ import annotations

import logging

import torch
from celery.signals import worker_process_init, worker_ready

from service.config import get_settings

__all__ = ["configure_process"]

log = logging.getLogger(__name__)


def configure_process() -> None:
    """Apply ``ODESERVE_TORCH_THREADS`` and ``ODESERVE_LOG_LEVEL`` to this process."""
    settings = get_settings()
    if settings.torch_threads:
        torch.set_num_threads(settings.torch_threads)
    logging.getLogger("service").setLevel(settings.log_level.upper())
    logging.getLogger("workers").setLevel(settings.log_level.upper())


@worker_process_init.connect
def _on_process_init(**_: object) -> None:
    configure_process()


@worker_ready.connect
def _on_ready(**_: object) -> None:
    configure_process()  # the solo pool runs tasks in the main process
    log.info("worker ready (torch threads: %d)", torch.get_num_threads())
