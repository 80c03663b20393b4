"""Service settings: one ``Settings`` object read from the environment.

| Variable | Default | Meaning |
|---|---|---|
| ``DATABASE_URL`` | ``sqlite:///data/odeserve.db`` | SQLAlchemy URL (PostgreSQL in production) |
| ``REDIS_URL`` | ``redis://127.0.0.1:6379/0`` | Celery broker and result backend (``redis+socket://`` too) |
| ``MODELS_STORE`` | ``models_store`` | Checkpoints, uploads, plots: a directory or ``s3://bucket/prefix`` |
| ``ODESERVE_STORE_CACHE_DIR`` | ``models_cache`` | Local checkpoint copies when ``MODELS_STORE`` is a URL |
| ``ODESERVE_S3_ENDPOINT_URL`` | unset | S3 endpoint (MinIO, moto); else ``AWS_ENDPOINT_URL``, else AWS |
| ``ODESERVE_QUEUE`` | ``training`` | Celery queue of training jobs with ``device`` ``auto`` or ``cpu`` |
| ``ODESERVE_GPU_QUEUE`` | ``training-gpu`` | Celery queue of ``device: cuda`` runs (GPU workers only) |
| ``ODESERVE_PROGRESS_EVERY`` | ``5`` | Write progress + per-iteration metrics every N iterations |
| ``ODESERVE_CHECKPOINT_EVERY`` | ``100`` | Resumable checkpoint every N iterations (0: only at the end) |
| ``ODESERVE_TIGHT_EVAL_POINTS`` | ``1000`` | FFJORD test points re-scored at 1e-8 (``test_nll_tight``) |
| ``ODESERVE_TIGHT_EVAL_MAX_S`` | ``120`` | Time budget of that re-score; past it ``test_nll_tight`` is null |
| ``ODESERVE_CANCEL_POLL_S`` | ``0.5`` | How often a running job checks its cancel flag |
| ``ODESERVE_MAX_RUN_SECONDS`` | ``21600`` | Soft time limit of an attempt (visibility timeout is above it) |
| ``ODESERVE_MAX_ATTEMPTS`` | ``3`` | Deliveries of one run before it is failed as ``worker_lost`` |
| ``ODESERVE_MODEL_CACHE_SIZE`` | ``8`` | Loaded models kept in memory per API process |
| ``ODESERVE_MAX_UPLOAD_BYTES`` | ``10485760`` | Largest request body (413 above) |
| ``ODESERVE_DEVICE`` | ``auto`` | ``auto`` (cuda when available), ``cpu`` or ``cuda`` for training |
| ``ODESERVE_TORCH_THREADS`` | ``0`` | Torch intra-op threads in API and worker (0: torch default) |
| ``ODESERVE_LOG_LEVEL`` | ``INFO`` | Logging level |
| ``ODESERVE_SERVE_TORCH_THREADS`` | ``1`` | API torch threads if ``TORCH_THREADS`` is 0 (0: torch default) |
| ``ODESERVE_BATCH_MAX_POINTS`` | ``1024`` | Most points merged into one density pass (larger: alone) |
| ``ODESERVE_BATCH_MAX_WAIT_MS`` | ``5`` | Longest a density request waits for companions, under contention |
| ``ODESERVE_BATCH_INLINE_MAX_POINTS`` | ``64`` | Density requests this small are solved on the event loop |
| ``ODESERVE_BATCH_TIMEOUT_S`` | ``60`` | A density/sample request waiting longer for its model gets 503 |
| ``ODESERVE_API_THREADS`` | ``128`` | Threadpool of sync routes and large-input parsing |
| ``ODESERVE_HARD_LIMIT_GRACE_S`` | ``60`` | Hard time limit = ``MAX_RUN_SECONDS`` + this (see below) |
| ``ODESERVE_HEARTBEAT_INTERVAL_S`` | ``10`` | A running job stamps ``heartbeat_at`` this often (own thread) |
| ``ODESERVE_HEARTBEAT_TIMEOUT_S`` | ``60`` | A ``running`` run with an older heartbeat is presumed lost |
| ``ODESERVE_RECONCILE_INTERVAL_S`` | ``30`` | Reconciler pass period in each worker (0: only at start) |
| ``ODESERVE_QUEUED_GRACE_S`` | ``60`` | A ``queued`` run with no broker message this long is re-enqueued |
| ``ODESERVE_SERVE_RTOL_FLOOR`` | ``1e-6`` | Served solves use rtol no tighter than this (any run) |
| ``ODESERVE_SERVE_ATOL_FLOOR`` | ``1e-6`` | Likewise atol |
| ``ODESERVE_SERVE_MAX_NUM_STEPS`` | ``2000`` | Step budget of a served solve (the run's own if lower) |
| ``ODESERVE_BATCH_INLINE_MAX_STEPS`` | ``64`` | A pass on the event loop past this: thread |
| ``ODESERVE_TRAIN_MEMORY_BYTES`` | 8 GiB | ``POST /train``: 422 if a step is estimated above |
| ``ODESERVE_QUERY_MEMORY_BYTES`` | 256 MiB | Estimated peak of one model pass; larger: chunks |
| ``ODESERVE_API_KEYS`` | unset | Comma-separated API keys; when set, mutating routes need ``Bearer`` |
| ``ODESERVE_PROTECT_READS`` | ``false`` | With keys set, read routes need a key too (ops routes never) |
| ``ODESERVE_CORS_ORIGINS`` | unset | Comma-separated allowed origins; unset = no CORS headers at all |
| ``ODESERVE_EVENTS_POLL_S`` | ``0.5`` | ``GET /runs/{id}/events`` reads the run's rows this often |
| ``ODESERVE_EVENTS_HEARTBEAT_S`` | ``15`` | An idle event stream sends a comment line this often |
| ``ODESERVE_EVENTS_MAX_S`` | ``300`` | An event stream ends after this; the client reconnects |

Fixed limits (part of the API contract, shown in OpenAPI; 4xx problem+json above them):

| Limit | Value | Where | Answer |
|---|---|---|---|
| Request body bytes | ``ODESERVE_MAX_UPLOAD_BYTES`` | every route | 413 |
| Training iterations | 200 000 | ``TrainConfig.iterations`` | 422 |
| Points per density request | 10 000 | ``schemas.MAX_DENSITY_POINTS`` | 422 |
| Samples per ``GET /sample`` | 10 000 | ``schemas.MAX_SAMPLE_N`` | 422 |
| Points per uploaded dataset | 200 000 | ``schemas.MAX_UPLOAD_POINTS`` | 422 |
| Dimensions of points | 64 | ``ml.data.MAX_DIM`` | 422 |
| Runs per sweep | 64 | ``sweeps.MAX_SWEEP_RUNS`` | 422 |
| Attempt wall time (soft) | ``ODESERVE_MAX_RUN_SECONDS`` | worker | run ``failed``, ``time_limit`` |
| Attempt wall time (hard) | soft + ``ODESERVE_HARD_LIMIT_GRACE_S`` | heartbeat | ``failed``, ``time_limit`` |
| Deliveries of one run | ``ODESERVE_MAX_ATTEMPTS`` | worker | run ``failed``, ``worker_lost`` |

Time limits are per attempt. The soft limit is checked between iterations (and raised by Celery's
``soft_time_limit`` under the prefork pool): the run ends ``failed`` with error type ``time_limit``.
The hard limit is enforced by the job's heartbeat thread, which records the same failure even when
an iteration never returns (the stuck attempt is then fenced out), and by Celery's ``time_limit``
(hard limit + 30 s, prefork pool), which kills the process. The broker visibility timeout is set
above the hard limit, so a job is never redelivered while it may still be running.

Broker down at ``POST /train``: the run is *accepted* (202) and stays ``queued``; the reconciler in
the workers publishes it once the broker is back (``ODESERVE_QUEUED_GRACE_S`` after it was
accepted). The database is the source of truth, so no accepted run is lost and none runs twice.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import AliasChoices, Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

__all__ = ["Settings", "get_settings"]


class Settings(BaseSettings):
    """Everything the API, the worker and ``odeserve up`` read from the environment."""

    model_config = SettingsConfigDict(env_prefix="ODESERVE_", extra="ignore", frozen=True)

    database_url: str = Field(
        "sqlite:///data/odeserve.db", validation_alias=AliasChoices("DATABASE_URL", "database_url")
    )
    redis_url: str = Field(
        "redis://127.0.0.1:6379/0", validation_alias=AliasChoices("REDIS_URL", "redis_url")
    )
    models_store: Path | str = Field(
        Path("models_store"),
        validation_alias=AliasChoices("MODELS_STORE", "models_store"),
        description="A directory (a Path) or an object-store URL ``s3://bucket/prefix`` (a str).",
    )
    store_cache_dir: Path = Path("models_cache")
    s3_endpoint_url: str | None = None
    queue: str = Field("training", min_length=1)
    gpu_queue: str = Field("training-gpu", min_length=1)
    progress_every: int = Field(5, ge=1)
    checkpoint_every: int = Field(100, ge=0)
    tight_eval_points: int = Field(1000, ge=1, le=200_000)
    tight_eval_max_s: float = Field(120.0, gt=0)
    cancel_poll_s: float = Field(0.5, gt=0)
    max_run_seconds: int = Field(6 * 3600, ge=1)
    max_attempts: int = Field(3, ge=1)
    model_cache_size: int = Field(8, ge=1)
    max_upload_bytes: int = Field(10 * 1024 * 1024, ge=1024)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    torch_threads: int = Field(0, ge=0)
    log_level: str = "INFO"
    serve_torch_threads: int = Field(1, ge=0)
    batch_max_points: int = Field(1024, ge=1, le=1_000_000)
    batch_max_wait_ms: float = Field(5.0, ge=0, le=1000)
    batch_inline_max_points: int = Field(64, ge=0, le=4096)
    batch_timeout_s: float = Field(60.0, gt=0)
    api_threads: int = Field(128, ge=1, le=4096)
    hard_limit_grace_s: int = Field(60, ge=1)
    heartbeat_interval_s: float = Field(10.0, gt=0)
    heartbeat_timeout_s: float = Field(60.0, gt=0)
    reconcile_interval_s: float = Field(30.0, ge=0)
    queued_grace_s: float = Field(60.0, ge=0)
    serve_rtol_floor: float = Field(1e-6, gt=0, lt=1)
    serve_atol_floor: float = Field(1e-6, gt=0, lt=1)
    serve_max_num_steps: int = Field(2000, ge=1, le=100_000)
    batch_inline_max_steps: int = Field(64, ge=1, le=100_000)
    train_memory_bytes: int = Field(8 << 30, ge=1 << 24)
    query_memory_bytes: int = Field(256 << 20, ge=1 << 20)
    api_keys: SecretStr | None = Field(None, description="Comma-separated; never logged.")
    protect_reads: bool = False
    cors_origins: str = ""
    events_poll_s: float = Field(0.5, ge=0.01, le=60)
    events_heartbeat_s: float = Field(15.0, gt=0, le=300)
    events_max_s: float = Field(300.0, gt=0, le=86400)

    @field_validator("models_store", mode="before")
    @classmethod
    def _store_location(cls, value: object) -> Path | str:
        if isinstance(value, str) and "://" in value:
            if not value.startswith("s3://") or not value[5:].split("/", 1)[0]:
                raise ValueError(
                    f"MODELS_STORE {value!r} is not supported: use a directory or s3://bucket/prefix"
                )
            return value.rstrip("/")
        return Path(value) if isinstance(value, str) else value  # type: ignore[return-value]

    @property
    def hard_time_limit(self) -> int:
        """Seconds after which an attempt is failed even if it never reaches an iteration boundary."""
        return self.max_run_seconds + self.hard_limit_grace_s

    @property
    def visibility_timeout(self) -> int:
        """Seconds before the broker redelivers an unacknowledged job: above the longest run."""
        return self.hard_time_limit + 600

    @property
    def api_key_values(self) -> tuple[str, ...]:
        """The configured API keys (empty: authentication is off)."""
        raw = self.api_keys.get_secret_value() if self.api_keys is not None else ""
        return tuple(k.strip() for k in raw.split(",") if k.strip())

    @property
    def cors_origin_list(self) -> tuple[str, ...]:
        return tuple(o.strip() for o in self.cors_origins.split(",") if o.strip())


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """Process-wide settings (tests build their own ``Settings`` and override the dependency)."""
    return Settings()
