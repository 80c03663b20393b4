"""The ``fit`` callbacks of one training attempt: progress rows, stop polling, checkpoints.

Split from :mod:`workers.runner`, which builds a :class:`Recorder` per attempt and re-exports
``TimeLimitReached``. Every write goes through :mod:`service.db.repository` with the attempt's
fencing token; log lines carry the run id (:class:`RunLog`).
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Mapping
from typing import Any

from service.config import Settings
from service.db import SessionFactory
from service.db import repository as repo
from service.db.leases import checkpoint_lease
from service.ml.checkpoint import discard_previous, save_checkpoint
from service.ml.errors import TrainingPaused
from service.ml.training import ProgressEvent, TrainConfig, TrainState
from service.storage.models_store import ModelStore

__all__ = ["Recorder", "RunLog", "TimeLimitReached", "finite_values"]


class TimeLimitReached(Exception):
    """The attempt ran past the soft time limit (checked between iterations)."""


class RunLog(logging.LoggerAdapter):
    """Prefixes every line with the run id."""

    def process(self, msg: Any, kwargs: Any) -> tuple[Any, Any]:
        return f"run={self.extra['run_id']} {msg}", kwargs  # type: ignore[index]


def finite_values(values: Mapping[str, Any]) -> dict[str, Any]:
    """``values`` with non-finite floats as None (metrics are stored as strict JSON)."""
    return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in values.items()}


class Recorder:
    """The ``fit`` callbacks of one attempt: progress, cancellation polling, checkpoints."""

    def __init__(
        self,
        attempt: repo.Attempt,
        *,
        settings: Settings,
        sessions: SessionFactory,
        store: ModelStore,
        config: TrainConfig,
        extra: dict[str, Any],
        log: RunLog,
        shutdown: threading.Event | None = None,
    ) -> None:
        self.attempt, self.settings, self.sessions, self.store = attempt, settings, sessions, store
        self.config, self.extra, self.log, self.shutdown = config, extra, log, shutdown
        self.pending: list[dict[str, Any]] = []
        self.last_event: ProgressEvent | None = None
        self.last_poll = 0.0
        self.started = time.monotonic()
        self.model: Any = None

    def on_progress(self, event: ProgressEvent) -> None:
        record = {
            "iteration": event.iteration,
            "wall_s": event.wall_s,
            "loss": event.loss,
            "nfe_forward": event.nfe_forward,
            "nfe_backward": event.nfe_backward,
            **{k: float(v) for k, v in event.stats.items() if k != "loss"},
        }
        self.pending.append(record)
        self.last_event = event
        if event.iteration % self.settings.progress_every == 0 or event.iteration == event.total:
            self.flush(event)

    def flush(self, event: ProgressEvent) -> None:
        metrics = {
            "train_loss": event.loss,
            "nfe_forward_mean": event.nfe_forward_mean,
            "nfe_backward_mean": event.nfe_backward_mean,
            "nfe_forward_last": event.nfe_forward,
            "nfe_backward_last": event.nfe_backward,
            "wall_clock_s": event.wall_s,
            "iterations_per_s": event.iteration / event.wall_s if event.wall_s > 0 else None,
        }
        with self.sessions() as session:
            repo.record_progress(
                session,
                self.attempt,
                iteration=event.iteration,
                wall_s=event.wall_s,
                metrics=finite_values(metrics),
                history=[finite_values(r) for r in self.pending],
            )
        self.pending.clear()
        self.log.debug("iteration %d/%d loss %.4f", event.iteration, event.total, event.loss)

    def should_stop(self) -> bool:
        if self.shutdown is not None and self.shutdown.is_set():
            raise TrainingPaused("the worker is shutting down")
        now = time.monotonic()
        if now - self.started > self.settings.max_run_seconds:
            raise TimeLimitReached(
                f"the attempt ran past ODESERVE_MAX_RUN_SECONDS={self.settings.max_run_seconds}"
            )
        if now - self.last_poll < self.settings.cancel_poll_s:
            return False
        self.last_poll = now
        with self.sessions() as session:
            return repo.should_stop(session, self.attempt)

    def on_checkpoint(self, state: TrainState) -> None:
        if self.pending and self.last_event is not None:
            self.flush(self.last_event)  # metric rows up to the checkpoint survive a resume
        with self.sessions() as session, checkpoint_lease(session, self.attempt):
            digest = save_checkpoint(
                self.store.run_dir(self.attempt.run_id),
                self.model,
                train_config=self.config,
                state=state,
                extra=self.extra,
            )
            self.store.publish_checkpoint(self.attempt.run_id, digest)
            repo.record_checkpoint(session, self.attempt, sha256=digest, iteration=state.iteration)
        discard_previous(self.store.run_dir(self.attempt.run_id))  # the new digest is committed
        self.store.retire_checkpoints(self.attempt.run_id, keep=digest)
        self.log.info("checkpoint at iteration %d (%s)", state.iteration, digest[:12])
