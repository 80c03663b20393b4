"""One training job, start to finish: claim the run, load data, ``fit``, checkpoint, record.

Everything the job needs is re-read from its row; every write goes through
:mod:`service.db.repository` with the attempt's fencing token. Called by the Celery task and, in
tests, directly.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
from collections.abc import Mapping
from typing import Any, Protocol

import torch
from celery.exceptions import SoftTimeLimitExceeded

from service.config import Settings
from service.db import RunRow, SessionFactory, session_scope
from service.db import repository as repo
from service.db.leases import checkpoint_lease, release_attempt
from service.ml.checkpoint import discard_previous, load_checkpoint, save_checkpoint
from service.ml.data import DATASETS, PointData, load_dataset, point_data_from_tensor
from service.ml.errors import ConfigError, DataError, OdeServeError, TrainingCanceled, TrainingPaused
from service.ml.models import stored_model_config
from service.ml.ode import SolverConfig
from service.ml.rescore import tight_test_nll
from service.ml.series import load_series_dataset, series_data_from_list
from service.ml.training import TrainConfig, TrainingData, TrainState, fit, init_model
from service.storage.models_store import ModelStore
from service.storage.series_store import load_series
from workers.heartbeat import Heartbeat
from workers.recorder import Recorder, RunLog, TimeLimitReached, finite_values

__all__ = ["Publisher", "TimeLimitReached", "load_training_data", "pick_device", "run_job"]

log = logging.getLogger(__name__)


class Publisher(Protocol):
    """Where a job handed back on warm shutdown is published again (``CeleryDispatcher``)."""

    def enqueue(self, run_id: str, device: str = "auto") -> None: ...


def pick_device(settings: Settings, requested: str = "auto") -> str:
    """The device to train on: the run's request (``cpu``/``cuda``), else the worker's setting."""
    if requested in ("cpu", "cuda"):
        return requested
    if settings.device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return settings.device


def _check_device(device: str) -> None:
    if device == "cuda" and not torch.cuda.is_available():
        raise ConfigError(
            "this run asked for device cuda but the worker that took it has no CUDA",
            value="cuda",
            fix="consume ODESERVE_GPU_QUEUE only with GPU workers, or ask for device auto or cpu",
            field="device",
        )


def load_training_data(
    dataset: Mapping[str, Any], seed: int, store: ModelStore, sessions: SessionFactory
) -> TrainingData:
    """The data a run row refers to: an uploaded point set or series dataset by id, or a built-in."""
    if dataset.get("id"):
        with sessions() as session:
            row = repo.get_dataset(session, dataset["id"])
        if row is None:
            raise DataError(f"uploaded dataset {dataset['id']} no longer exists", field="dataset.id")
        if row.kind == "series":
            return series_data_from_list(row.name, load_series(store, row.id, row.sha256), seed=seed)
        points = store.load_points(row.id, row.sha256)
        return point_data_from_tensor(row.name, points, seed=seed)
    name = dataset["name"]
    if name in DATASETS:
        sizes = {k: int(dataset[k]) for k in ("n_train", "n_test") if dataset.get(k)}
        return load_dataset(name, seed=seed, **sizes)
    return load_series_dataset(name, seed=seed)


def _final_train_stats(history: list[dict[str, float]]) -> dict[str, float]:
    """Model statistics averaged over the last 10 iterations (latent ODE: ``train_elbo``, nats/series)."""
    tail = [h["elbo"] for h in history[-10:] if "elbo" in h]
    return {"train_elbo": sum(tail) / len(tail)} if tail else {}


def stored_training(training: dict[str, Any]) -> TrainConfig:
    """A run's recorded training settings. Runs recorded before ``grad_clip`` existed trained
    unclipped (new runs record the resolved value), so a missing one means 0, not the default."""
    return TrainConfig(**{"grad_clip": 0.0, **training})


def _on_device(data: TrainingData, device: str) -> TrainingData:
    if device == "cpu" or not isinstance(data, PointData):
        return data
    cells = None if data.cells is None else data.cells.to(device)
    return dataclasses.replace(data, train=data.train.to(device), test=data.test.to(device), cells=cells)


def _tight_metrics(model: Any, data: TrainingData, settings: Settings, rlog: RunLog) -> dict[str, Any]:
    """``test_nll_tight`` and its companions (``service.ml.rescore``); failures are recorded, not raised."""
    metrics = tight_test_nll(
        model, data.test, points=settings.tight_eval_points, max_seconds=settings.tight_eval_max_s
    )
    if metrics.get("test_nll_tight_error"):
        rlog.warning("test_nll_tight is null: %s", metrics["test_nll_tight_error"])
    elif metrics:
        rlog.info("tight re-score in %.2fs: %.5f", metrics["test_nll_tight_s"], metrics["test_nll_tight"])
    return metrics


def _resume_state(row: RunRow, store: ModelStore, log: RunLog) -> TrainState | None:
    if not row.checkpoint_iteration or not row.checkpoint_sha256:
        return None
    try:
        directory = store.checkpoint_dir(row.id, row.checkpoint_sha256)
        loaded = load_checkpoint(directory, expected_digest=row.checkpoint_sha256, with_state=True)
    except OdeServeError as exc:
        log.warning("cannot resume from checkpoint, starting over: %s", exc)
        return None
    log.info("resuming from iteration %d", row.checkpoint_iteration)
    return loaded.state


def run_job(
    run_id: str,
    *,
    settings: Settings,
    sessions: SessionFactory,
    store: ModelStore,
    worker: str,
    shutdown: threading.Event | None = None,
    publisher: Publisher | None = None,
) -> str | None:
    """Train ``run_id`` to a final status and return it (None when there was nothing to do).

    Once ``shutdown`` is set (the worker's warm shutdown), training stops before its next step,
    checkpoints the last finished one and hands the job back: the run returns to ``queued`` without
    counting the attempt, is published again through ``publisher``, and ``"queued"`` is returned.
    """
    rlog = RunLog(log, {"run_id": run_id})
    with session_scope(sessions) as session:
        device = pick_device(settings, repo.requested_device(session, run_id))
        attempt = repo.start_attempt(
            session,
            run_id,
            device=device,
            worker=worker,
            max_attempts=settings.max_attempts,
            heartbeat_timeout_s=settings.heartbeat_timeout_s,
        )
        row = repo.get_run(session, run_id)
    if attempt is None or row is None:
        rlog.info("nothing to do (status %s)", row.status if row else "deleted")
        return None
    rlog.info("attempt %d started on %s (%s)", attempt.attempt, device, worker)
    config = stored_training(row.training)
    recorder = Recorder(
        attempt,
        settings=settings,
        sessions=sessions,
        store=store,
        config=config,
        extra={"run_id": run_id, "dataset": row.dataset},
        log=rlog,
        shutdown=shutdown,
    )
    heartbeat = Heartbeat(
        attempt,
        sessions,
        interval_s=settings.heartbeat_interval_s,
        hard_limit_s=settings.hard_time_limit,
        log=rlog,
    )
    try:
        with heartbeat:
            return _train(row, attempt, recorder, device, settings, sessions, store, rlog)
    except TrainingPaused:
        return _hand_back(row, attempt, sessions, publisher, rlog)


def _hand_back(
    row: RunRow, attempt: repo.Attempt, sessions: SessionFactory, publisher: Publisher | None, rlog: RunLog
) -> str | None:
    try:
        with sessions() as session:
            status = release_attempt(session, attempt)
    except repo.StaleAttempt as exc:
        rlog.warning("not handing back: %s", exc)
        return None
    if status != "queued":
        rlog.info("%s during shutdown", status)
        return status
    rlog.info("worker shutting down: handed back after a checkpoint, attempt not counted")
    if publisher is not None:
        try:
            publisher.enqueue(row.id, row.device_request or "auto")
        except Exception as exc:  # the reconciler republishes a queued run whose message is missing
            rlog.warning("could not republish (the reconciler will): %s", exc)
    return status


def _train(
    row: RunRow,
    attempt: repo.Attempt,
    recorder: Recorder,
    device: str,
    settings: Settings,
    sessions: SessionFactory,
    store: ModelStore,
    rlog: RunLog,
) -> str | None:
    run_id, config = row.id, recorder.config
    try:
        _check_device(device)
        data = load_training_data(row.dataset, config.seed, store, sessions)
        if not isinstance(data, PointData):
            device = "cpu"  # series batches are built on the CPU
        model_config = stored_model_config(row.model, row.model_config)
        model = init_model(row.model, model_config, data.dim, SolverConfig(**row.solver), config.seed)
        recorder.model = model.to(device)
        data = _on_device(data, device)
        result = fit(
            model,
            data,
            config,
            on_progress=recorder.on_progress,
            should_stop=recorder.should_stop,
            checkpoint_every=settings.checkpoint_every,
            on_checkpoint=recorder.on_checkpoint,
            resume=_resume_state(row, store, rlog),  # a handed-back job resumes on attempt 1
        )
        metrics = finite_values(
            {
                "train_loss": result.final_loss,
                **_final_train_stats(result.history),
                **result.metrics,
                **_tight_metrics(model, data, settings, rlog),
                **result.nfe_metrics(),
                "wall_clock_s": result.wall_s,
                "iterations_per_s": result.iterations / result.wall_s if result.wall_s > 0 else None,
            }
        )
        with sessions() as session, checkpoint_lease(session, attempt):
            digest = save_checkpoint(
                store.run_dir(run_id), model, train_config=config, metrics=metrics, extra=recorder.extra
            )
            store.publish_checkpoint(run_id, digest)
            repo.finish_succeeded(
                session,
                attempt,
                metrics=metrics,
                sha256=digest,
                iteration=result.iterations,
                wall_s=result.wall_s,
            )
        discard_previous(store.run_dir(run_id))
        store.retire_checkpoints(run_id, keep=digest)
        rlog.info("succeeded in %.1fs: %s", result.wall_s, metrics)
        return "succeeded"
    except repo.StaleAttempt as exc:
        rlog.warning("stopping: %s", exc)
        return None
    except TrainingCanceled:
        return _finish(sessions, attempt, rlog, "canceled")
    except TrainingPaused:
        raise  # run_job hands the job back once the heartbeat has stopped
    except OdeServeError as exc:
        return _finish(sessions, attempt, rlog, "failed", exc.kind, str(exc))
    except TimeLimitReached as exc:
        return _finish(sessions, attempt, rlog, "failed", "time_limit", str(exc))
    except SoftTimeLimitExceeded:
        detail = f"the attempt exceeded ODESERVE_MAX_RUN_SECONDS={settings.max_run_seconds}"
        return _finish(sessions, attempt, rlog, "failed", "time_limit", detail)
    except Exception as exc:
        if type(exc).__module__.startswith("sqlalchemy"):
            raise  # database trouble: let the task's declared retry redeliver the job
        rlog.exception("unexpected error")
        return _finish(sessions, attempt, rlog, "failed", "internal_error", f"{type(exc).__name__}: {exc}")


def _finish(
    sessions: SessionFactory,
    attempt: repo.Attempt,
    rlog: RunLog,
    status: str,
    error_type: str = "",
    detail: str = "",
) -> str | None:
    try:
        with sessions() as session:
            if status == "canceled":
                repo.finish_canceled(session, attempt)
            else:
                repo.finish_failed(session, attempt, error_type=error_type, detail=detail)
    except repo.StaleAttempt as exc:
        rlog.warning("not recording %s: %s", status, exc)
        return None
    rlog.info("%s%s", status, f" ({error_type}: {detail})" if error_type else "")
    return status
