"""Request and response models of the latent ODE queries and series uploads.

``POST /predict``, trajectories from ``GET /sample``, series bodies of ``POST /density`` and
``POST /datasets`` with ``series``. Shapes follow ``API.md``; limits below are part of the contract
and appear in the OpenAPI schema (422 above them).
"""

from __future__ import annotations

import uuid

from pydantic import BaseModel, ConfigDict, Field

from service.ml.series_io import MAX_POINTS_PER_SERIES, MAX_SERIES

__all__ = [
    "MAX_DENSITY_SERIES",
    "MAX_PREDICT_SAMPLES",
    "MAX_PREDICT_TIMES",
    "MAX_SERIES_POINTS",
    "MAX_TRAJECTORY_TIMES",
    "MAX_TRAJECTORY_VALUES",
    "PredictOut",
    "PredictRequest",
    "SeriesIn",
    "SeriesUpload",
    "TrajectoryOut",
]

MAX_SERIES_POINTS = MAX_POINTS_PER_SERIES
"""Most observations one series may carry (uploads, density and predict queries)."""
MAX_PREDICT_TIMES = 2_000
"""Most ``predict_times`` of one ``POST /predict``."""
MAX_PREDICT_SAMPLES = 256
"""Most posterior samples (``n_samples``) of one ``POST /predict``."""
MAX_DENSITY_SERIES = 1_000
"""Most series one ``POST /density`` may score."""
MAX_TRAJECTORY_TIMES = 1_000
"""Most times (``t``) of one trajectory query on ``GET /sample``."""
MAX_TRAJECTORY_VALUES = 200_000
"""Most trajectory points (``n`` x number of times) one ``GET /sample`` on a latent ODE run returns."""

Values = list[list[float | None]]


class SeriesIn(BaseModel):
    """One irregularly sampled series: strictly increasing ``times`` (T,) and ``values`` (T, D)."""

    model_config = ConfigDict(extra="forbid")

    times: list[float] = Field(..., min_length=1, max_length=MAX_SERIES_POINTS)
    values: Values = Field(
        ...,
        min_length=1,
        max_length=MAX_SERIES_POINTS,
        description="One row of D values per time; null marks a missing channel.",
    )


class SeriesUpload(BaseModel):
    """JSON upload of a time-series dataset (``kind`` ``series``)."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(..., min_length=1, max_length=200)
    series: list[SeriesIn] = Field(
        ..., min_length=2, max_length=MAX_SERIES, description="At least 2 series (train/test split)."
    )


class PredictRequest(BaseModel):
    """``POST /predict``: condition on one observed series, predict at ``predict_times``."""

    model_config = ConfigDict(extra="forbid")

    run_id: uuid.UUID
    times: list[float] = Field(
        ..., min_length=1, max_length=MAX_SERIES_POINTS, description="Observation times, increasing."
    )
    values: Values = Field(
        ...,
        min_length=1,
        max_length=MAX_SERIES_POINTS,
        description="(T, D) observed values; null marks a missing channel.",
    )
    predict_times: list[float] = Field(
        ...,
        min_length=1,
        max_length=MAX_PREDICT_TIMES,
        description="Query times: inside the observed span interpolates, after it extrapolates.",
    )
    n_samples: int = Field(
        20,
        ge=0,
        le=MAX_PREDICT_SAMPLES,
        description="Posterior samples of z0 (0: decode the posterior mean only).",
    )
    seed: int = Field(0, ge=0, le=2**31 - 1, description="Seeds the posterior samples.")
    include_noise: bool = Field(True, description="Add the observation noise to std.")


class PredictOut(BaseModel):
    run_id: str
    predict_times: list[float]
    mean: list[list[float | None]] = Field(..., description="(P, D) posterior predictive mean.")
    std: list[list[float | None]] = Field(..., description="(P, D) posterior predictive std.")
    n_samples: int
    seed: int
    val_rmse: float | None = Field(
        None,
        description=(
            "Forecast RMSE of the model on the run's validation series (each one's held-out "
            "second half predicted from its first half), in data units; null for runs trained "
            "before validation existed."
        ),
    )
    val_rmse_last_value: float | None = Field(
        None,
        description="The same RMSE for repeating each series' last observed value.",
    )
    beats_last_value: bool | None = Field(
        None,
        description=(
            "val_rmse < val_rmse_last_value. False: on held-out data this model forecast worse "
            "than repeating the last observation; prefer the baseline or retrain."
        ),
    )


class TrajectoryOut(BaseModel):
    """``GET /sample`` on a latent ODE run: ``n`` trajectories from the prior at ``times``."""

    run_id: str
    seed: int
    times: list[float]
    samples: list[list[list[float | None]]] = Field(..., description="(n, T, D) trajectories.")
