"""``POST /predict``: a latent ODE run's posterior prediction for one observed series."""

from __future__ import annotations

from fastapi import APIRouter

from service.api.deps import ModelCacheDep, SessionDep, SettingsDep
from service.api.serving import served_model
from service.schemas.runs import Problem
from service.schemas.series import (
    MAX_PREDICT_SAMPLES,
    MAX_PREDICT_TIMES,
    MAX_SERIES_POINTS,
    PredictOut,
    PredictRequest,
)
from service.serving.series_queries import predict, validation_rmse

__all__ = ["router"]

router = APIRouter(tags=["queries"])


@router.post(
    "/predict",
    response_model=PredictOut,
    responses={
        404: {"model": Problem, "description": "Unknown run"},
        409: {"model": Problem, "description": "Run has not succeeded (run_status says where it is)"},
        422: {
            "model": Problem,
            "description": (
                "Invalid series (unsorted times, ragged values, NaN), limits exceeded (times: "
                f"{MAX_SERIES_POINTS}, predict_times: {MAX_PREDICT_TIMES}, n_samples: "
                f"{MAX_PREDICT_SAMPLES}), a query estimated over ODESERVE_QUERY_MEMORY_BYTES (the "
                "problem names the n_samples that fits), or a run that is not a latent ODE"
            ),
        },
    },
)
def predict_post(
    body: PredictRequest, session: SessionDep, cache: ModelCacheDep, settings: SettingsDep
) -> PredictOut:
    """Condition a latent ODE run on ``times``/``values`` and predict at ``predict_times``.

    Query times inside the observed span interpolate, later ones extrapolate. ``mean`` and ``std``
    are (P, D): the mean and spread of ``n_samples`` decoded draws of ``z0 ~ q(z0 | series)``
    (plus the observation noise unless ``include_noise`` is false); the same ``seed`` gives the same
    answer. ``val_rmse`` and ``val_rmse_last_value`` say how the model forecast the run's held-out
    validation series against repeating their last value: a model that does not beat the baseline
    (``beats_last_value`` false) should not be trusted for extrapolation.
    """
    row, entry = served_model(session, cache, body.run_id, kind="series")
    mean, std = predict(entry, body, settings.query_memory_bytes)
    val_rmse, val_baseline = validation_rmse(entry)
    beats = None if val_rmse is None or val_baseline is None else val_rmse < val_baseline
    return PredictOut(
        run_id=row.id,
        predict_times=body.predict_times,
        mean=mean,
        std=std,
        n_samples=body.n_samples,
        seed=body.seed,
        val_rmse=val_rmse,
        val_rmse_last_value=val_baseline,
        beats_last_value=beats,
    )
