"""Service settings: one ``Settings`` object read from the environment.

| Variable | Default | Meaning |
|---|---|---|
| ``DATABASE_URL`` | ``sqlite:///data/odeserve.db`` | SQLAlchemy URL (PostgreSQL in production) |
| ``REDIS_URL`` | ``redis://127.0.0.1:6379/0`` | Celery broker and result backend (``redis+socket://`` too) |
| ``MODELS_STORE`` | ``models_store`` | Directory of checkpoints and uploaded datasets |
| ``ODESERVE_QUEUE`` | ``training`` | Celery queue of training jobs |
| ``ODESERVE_PROGRESS_EVERY`` | ``5`` | Write progress + per-iteration metrics every N iterations |
| ``ODESERVE_CHECKPOINT_EVERY`` | ``100`` | Resumable checkpoint every N iterations (0: only at the end) |
| ``ODESERVE_CANCEL_POLL_S`` | ``0.5`` | How often a running job checks its cancel flag |
| ``ODESERVE_MAX_RUN_SECONDS`` | ``21600`` | Longest run; the broker visibility timeout is set above it |
| ``ODESERVE_MAX_ATTEMPTS`` | ``3`` | Deliveries of one run before it is failed as ``worker_lost`` |
| ``ODESERVE_MODEL_CACHE_SIZE`` | ``8`` | Loaded models kept in memory per API process |
| ``ODESERVE_MAX_UPLOAD_BYTES`` | ``10485760`` | Largest request body (413 above) |
| ``ODESERVE_DEVICE`` | ``auto`` | ``auto`` (cuda when available), ``cpu`` or ``cuda`` for training |
| ``ODESERVE_TORCH_THREADS`` | ``0`` | Torch intra-op threads in API and worker (0: torch default) |
| ``ODESERVE_LOG_LEVEL`` | ``INFO`` | Logging level |
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import AliasChoices, Field
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
    models_store: Path = Field(
        Path("models_store"), validation_alias=AliasChoices("MODELS_STORE", "models_store")
    )
    queue: str = Field("training", min_length=1)
    progress_every: int = Field(5, ge=1)
    checkpoint_every: int = Field(100, ge=0)
    cancel_poll_s: float = Field(0.5, gt=0)
    max_run_seconds: int = Field(6 * 3600, ge=60)
    max_attempts: int = Field(3, ge=1)
    model_cache_size: int = Field(8, ge=1)
    max_upload_bytes: int = Field(10 * 1024 * 1024, ge=1024)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    torch_threads: int = Field(0, ge=0)
    log_level: str = "INFO"

    @property
    def visibility_timeout(self) -> int:
        """Seconds before the broker redelivers an unacknowledged job: above the longest run."""
        return self.max_run_seconds + 600


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """Process-wide settings (tests build their own ``Settings`` and override the dependency)."""
    return Settings()
