"""Scores of a latent ODE on whole data sets: the test metrics and the validation forecast error.

Kept apart from the model (``service.ml.models.latent_ode``), whose ``evaluate`` and ``validate``
call these. Both work in chunks of ``EVAL_CHUNK`` series so memory stays bounded.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch

from service.ml.models.latent_parts import last_observed
from service.ml.series import Series, SeriesBatch, collate

if TYPE_CHECKING:
    from service.ml.models.latent_ode import LatentODE

__all__ = ["EVAL_CHUNK", "test_scores", "validation_scores"]

EVAL_CHUNK = 128
SeriesInput = SeriesBatch | Sequence[Series]


def test_scores(model: LatentODE, data: SeriesInput, generator: torch.Generator) -> dict[str, float]:
    """``test_nll`` (nats per series), per-observation NLL, interpolation/extrapolation errors."""
    series = data if isinstance(data, Sequence) else None
    chunks = (
        [data]
        if series is None
        else [collate(series[i : i + EVAL_CHUNK]) for i in range(0, len(series), EVAL_CHUNK)]
    )
    sums = dict.fromkeys(["nll", "n", "obs", "interp", "n_interp", "extrap", "base", "n_ext"], 0.0)
    for chunk in chunks:
        batch, bound, pred = model._bound(chunk, model.config.iwae_samples, generator)
        prefix, tail = batch.prefix_mask(), batch.tail_mask()
        sums["nll"] -= float(bound.sum())
        sums["n"] += len(batch)
        sums["obs"] += float((prefix + tail).sum())
        sums["interp"] += float(((pred - batch.values).square() * prefix).sum())
        sums["n_interp"] += float(prefix.sum())
        sums["extrap"] += float(((pred - batch.values).square() * tail).sum())
        last = last_observed(batch.values, prefix, model.loc)
        sums["base"] += float(((last - batch.values).square() * tail).sum())
        sums["n_ext"] += float(tail.sum())
    metrics = {
        "test_nll": sums["nll"] / max(1.0, sums["n"]),
        "test_nll_per_obs": sums["nll"] / max(1.0, sums["obs"]),
        "test_mse_interp": sums["interp"] / max(1.0, sums["n_interp"]),
    }
    if sums["n_ext"] > 0:
        mse = sums["extrap"] / sums["n_ext"]
        metrics |= {
            "test_mse_extrap": mse,
            "test_rmse_extrap": math.sqrt(mse),
            "test_rmse_extrap_baseline": math.sqrt(sums["base"] / sums["n_ext"]),
        }
    return metrics


def validation_scores(model: LatentODE, items: Sequence[Series]) -> dict[str, float]:
    """Forecast errors of held-out series (see ``latent_ode``'s module doc).

    Series without a held-out tail are scored on their prefix (reconstruction).
    """
    sums = torch.zeros(4, dtype=torch.float64)  # sq. error std units, data units, baseline, n
    for start in range(0, len(items), EVAL_CHUNK):
        batch, values, tau = model._standardise(items[start : start + EVAL_CHUNK])
        prefix, target = batch.prefix_mask(), batch.tail_mask()
        target = target if bool(target.sum() > 0) else prefix
        relative = model._anchor(batch, values)[0]
        mean, _ = model.posterior(batch, relative, tau)
        error = (model.decode(mean.unsqueeze(0), tau)[0] - relative) * target
        baseline = (last_observed(batch.values, prefix, model.loc) - batch.values) * target
        sums += (
            torch.stack(
                [
                    error.square().sum(),
                    (error * model.scale).square().sum(),
                    baseline.square().sum(),
                    target.sum(),
                ]
            )
            .double()
            .cpu()
        )
    n = float(sums[3].clamp_min(1))
    metrics = {
        "val_score": float(sums[0]) / n,
        "val_rmse": math.sqrt(float(sums[1]) / n),
        "val_rmse_last_value": math.sqrt(float(sums[2]) / n),
    }
    return metrics
