"""Density and sample queries of point-density runs (``GET``/``POST /density``, ``GET /sample``).

Split from :mod:`service.schemas.runs`, which re-exports these; latent ODE series queries are in
:mod:`service.schemas.series`. The limits are part of the contract and appear in the OpenAPI schema.
"""

from __future__ import annotations

import uuid

from pydantic import BaseModel, ConfigDict, Field, model_validator

from service.schemas.series import MAX_DENSITY_SERIES, SeriesIn

__all__ = ["MAX_DENSITY_POINTS", "MAX_SAMPLE_N", "DensityOut", "DensityRequest", "SampleOut"]

MAX_SAMPLE_N = 10_000
"""Most samples one ``GET /sample`` returns (422 above)."""
MAX_DENSITY_POINTS = 10_000
"""Most points one density query may carry (422 above)."""


class DensityRequest(BaseModel):
    """Points for a point-density run, or ``series`` for a latent ODE run (exactly one of them)."""

    model_config = ConfigDict(extra="forbid")

    run_id: uuid.UUID
    points: list[list[float]] | None = Field(
        None, min_length=1, max_length=MAX_DENSITY_POINTS, description="One point per row."
    )
    series: list[SeriesIn] | None = Field(
        None,
        min_length=1,
        max_length=MAX_DENSITY_SERIES,
        description="Latent ODE runs: series scored with a lower bound on their log-likelihood.",
    )

    @model_validator(mode="after")
    def _points_or_series(self) -> DensityRequest:
        if (self.points is None) == (self.series is None):
            raise ValueError("give exactly one of points (density runs) or series (latent ODE runs)")
        return self


class DensityOut(BaseModel):
    run_id: str
    log_density: list[float | None] = Field(
        ..., description="Natural-log density per point (null where it underflows)."
    )


class SampleOut(BaseModel):
    run_id: str
    seed: int
    samples: list[list[float | None]]
