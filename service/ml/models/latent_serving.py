"""Serving queries of a latent ODE: prior trajectories and posterior predictions.

Kept apart from the model (``service.ml.models.latent_ode``), whose ``sample`` and ``predict``
call these; see that module for the generative model and the units (Rubanova et al.,
arXiv:1907.03907).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from service.ml.series_io import series_for_prediction

if TYPE_CHECKING:
    from service.ml.models.latent_ode import LatentODE

__all__ = ["posterior_predictive", "prior_trajectories"]


def prior_trajectories(
    model: LatentODE,
    n: int,
    generator: torch.Generator | None = None,
    times: Tensor | Sequence[float] | None = None,
    noise: bool = False,
) -> Tensor:
    """``n`` trajectories from the prior at ``times`` (time since the series start), (n, T, D).

    Default times: 100 points over the mean training duration. ``noise`` adds observation noise.
    """
    times = (
        torch.linspace(0, float(model.train_span), 100, dtype=torch.float64)
        if times is None
        else torch.as_tensor(times, dtype=torch.float64).reshape(-1)
    )
    tau = model._tau(times.to(model.loc.device), times.new_zeros(()).to(model.loc.device))
    z0 = model._draw(model.loc.new_zeros(n, model.config.latent_dim), 1.0, 1, generator)  # (1, n, L)
    pred = model.decode(z0, tau.expand(n, -1))[0]
    if bool(model.anchored.any()):  # a level from the training marginal of one value
        level = model._draw(model.loc.new_zeros(n, 1, model.dim), 1.0, 1, generator)[0]
        pred = pred + level * model.anchored
    if noise:
        eps = torch.randn(pred.shape, generator=generator, dtype=pred.dtype).to(pred.device)
        pred = pred + model.config.obs_noise_std * eps
    return pred * model.scale + model.loc


def posterior_predictive(
    model: LatentODE,
    times: Tensor,
    values: Tensor,
    mask: Tensor | None = None,
    predict_times: Tensor | None = None,
    n_samples: int = 32,
    generator: torch.Generator | None = None,
    include_noise: bool = True,
) -> tuple[Tensor, Tensor]:
    """Posterior predictive mean and std at ``predict_times`` (interpolation and extrapolation).

    One series: ``times`` (T,), ``values`` (T, D), ``mask`` (T, D) or None, ``predict_times``
    (P,) -> mean, std (P, D). A batch: (B, T), (B, T, D), (B, T, D), and (P,) or (B, P) ->
    (B, P, D); rows whose mask is all zero are padding. All given points condition ``q(z0)``;
    time 0 of the latent ODE is each series' first time. ``n_samples = 0`` decodes the posterior
    mean only. ``std`` is the spread over samples, plus the observation noise if
    ``include_noise``.
    """
    single = torch.as_tensor(times).dim() == 1
    series, targets = series_for_prediction(times, values, mask, predict_times, model.dim)
    batch, absolute, tau = model._standardise(series)
    values_std, level, _, _ = model._anchor(batch, absolute)
    mean, std = model.posterior(batch, values_std, tau)
    z0 = mean.unsqueeze(0) if n_samples == 0 else model._draw(mean, std, n_samples, generator)
    origin = batch.times[:, :1]
    pred = model.decode(z0, model._tau(targets.to(origin.device), origin))  # (K, B, P, D)
    pred = (pred + level) * model.scale + model.loc
    out_mean = pred.mean(0)
    var = pred.var(0, unbiased=False)
    if include_noise:
        var = var + (model.config.obs_noise_std * model.scale).square()
    out_std = var.sqrt()
    return (out_mean[0], out_std[0]) if single else (out_mean, out_std)
