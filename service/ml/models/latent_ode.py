"""Latent ODE for irregularly sampled time series (Rubanova et al., arXiv:1907.03907).

Generative model (Chen et al., arXiv:1806.07366, Sec. 5): ``z0 ~ N(0, I)``; ``z(t)`` solves
``dz/dt = f(z)`` from ``t = 0`` (each series' first time); ``x(t) ~ N(decoder(z(t)), sigma^2 I)``
with a fixed ``sigma`` (``obs_noise_std``). The recognition network runs backwards in time over the
observed prefix of each series (GRU or ODE-RNN) and returns a Gaussian ``q(z0 | x_prefix)``.

Units. Values are standardised per channel and times are rescaled so that the mean training series
spans ``time_horizon``; both maps are fitted in ``prepare`` and stored as buffers. ``obs_noise_std``
is in standardised units. Reported likelihoods and errors are in data units (the standardisation's
log-determinant is added back).

Anchor. A channel is *anchored* (``anchor='mean'``, or chosen by ``'auto'`` in ``prepare`` when
the training series differ mostly in a level that persists, e.g. windows cut from a trend) when
the model describes it relative to the mean of the series' observed prefix: encoder and decoder
see ``x - level``, so a forecast starts from where the series is even at a level never seen in
training. The density stays exact: see :meth:`LatentODE._level_log_density`.

Training maximises the ELBO of all observed values of each series (prefix and tail, or the prefix
only with ``extrapolation_loss=False``) with the KL term annealed from 0 to 1. By default the
encoder prefix is cut at a random fraction of each series' span per step, so one model both
interpolates and extrapolates from any number of observations. Evaluation uses the dataset's
split and reports
``test_nll``: minus the importance-weighted bound (IWAE, k samples from ``q(z0 | x_prefix)``) on the
log-likelihood of all observed values of a series, in nats per series; ``test_nll_per_obs`` divides
by the number of observed scalars. ``test_mse_interp`` scores the posterior-mean prediction at the
observed prefix, ``test_mse_extrap``/``test_rmse_extrap`` at the held-out tail, and
``test_rmse_extrap_baseline`` predicts the last observed value of each channel.

Validation (``validate``, used by ``fit`` to stop early and keep the best weights) decodes the
posterior mean from each held-out series' prefix and scores its tail: ``val_score`` is the MSE in
standardised units, ``val_rmse`` and ``val_rmse_last_value`` the RMSE of the model and of the
last-value baseline in data units. The last two are kept as buffers, so a checkpoint tells
``POST /predict`` whether the model beats the baseline (NaN for checkpoints written before).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import torch
from torch import Tensor

from service.ml.errors import DataError
from service.ml.memory import FLOAT_BYTES, SAFETY
from service.ml.models.base import DensityModel, LossOutput, standard_normal_log_prob
from service.ml.models.latent_config import ANCHOR_LEVEL_SHARE, ANCHOR_MAX_DRIFT, LatentODEConfig
from service.ml.models.latent_parts import (
    LatentDynamics,
    RecognitionRNN,
    first_observed,
    gather_times,
    level_statistics,
    masked_gaussian_log_density,
    mlp,
    normal_kl,
    normal_log_density,
    solve_on_grid,
)
from service.ml.models.latent_scoring import test_scores, validation_scores
from service.ml.models.latent_serving import posterior_predictive, prior_trajectories
from service.ml.ode import NfeCounter, SolverConfig
from service.ml.series import Series, SeriesBatch, collate

__all__ = ["LatentODE", "LatentODEConfig"]

SeriesInput = SeriesBatch | Sequence[Series]


DEFAULT_LR, DEFAULT_GRAD_CLIP = 1e-2, 1.0
"""Measured with benchmarks/bench_latent_real's sets (seed 0 unless said): at lr 3e-3 unclipped,
noisy spirals stall at a forecast RMSE of 0.27 (seed 1: 0.62) after 1000 steps; at 1e-2 they reach
0.13 (0.23), but elnino's gradient norm, median 39, spikes to 6e15 near step 100 and the run never
recovers (2.09 against 0.90). Clipping at norm 1 (below the median, so every step is normalised)
keeps 1e-2 stable: elnino 0.88, co2 1.52 (1.85 before), sunspots 60.9 (65.3), spirals 0.29 (0.25).
Clipping at 100 gives spirals 0.12 but elnino 2.05; at 1000 elnino 1.15."""


class LatentODE(DensityModel):
    """Latent ODE over series of dimension ``D``; batches are ``SeriesBatch`` or lists of ``Series``."""

    name = "latent_ode"
    config_class = LatentODEConfig
    data_kind = "series"
    can_validate = True
    VALIDATION_BUFFERS = ("val_rmse", "val_rmse_last_value")

    @classmethod
    def training_defaults(cls, objective: str) -> dict[str, float]:
        """lr 1e-2 with the gradient norm clipped at 1 (see ``DEFAULT_LR``)."""
        return {"lr": DEFAULT_LR, "grad_clip": DEFAULT_GRAD_CLIP}

    def __init__(self, config: LatentODEConfig, dim: int, solver: SolverConfig) -> None:
        super().__init__(config, dim, solver)
        self.config: LatentODEConfig = config
        self.encoder = RecognitionRNN(
            dim,
            config.encoder_hidden,
            config.latent_dim,
            config.encoder == "ode_rnn",
            config.encoder_ode_hidden,
        )
        self.dynamics = LatentDynamics(config.latent_dim, config.dynamics_hidden)
        self.decoder = mlp(config.latent_dim, config.decoder_hidden, dim)
        self.encoder_nfe = NfeCounter()
        self.register_buffer("loc", torch.zeros(dim))
        self.register_buffer("scale", torch.ones(dim))
        self.register_buffer("time_scale", torch.tensor(1.0))
        self.register_buffer("anchored", torch.full((dim,), 1.0 if config.anchor == "mean" else 0.0))
        self.register_buffer("train_span", torch.tensor(config.time_horizon))
        for name in self.VALIDATION_BUFFERS:
            self.register_buffer(name, torch.tensor(math.nan))

    def _load_from_state_dict(self, state_dict: dict[str, Tensor], prefix: str, *args: Any) -> None:
        # Checkpoints from before validation have no validation buffers: they load as unknown (NaN).
        for name in self.VALIDATION_BUFFERS:
            state_dict.setdefault(prefix + name, torch.tensor(math.nan))
        state_dict.setdefault(prefix + "anchored", torch.zeros(self.dim))  # before anchors: none
        super()._load_from_state_dict(state_dict, prefix, *args)

    # ----------------------------------------------------------------- normalisation
    def prepare(self, data: Any) -> None:
        """Fit per-channel loc/scale of the training values and the time scale of ``data.train``."""
        series: list[Series] = list(data.train)
        values = torch.cat([s.values for s in series]).to(self.loc)
        mask = torch.cat([s.mask for s in series]).to(self.loc)
        count = mask.sum(0).clamp_min(1)
        loc = (values * mask).sum(0) / count
        var = ((values - loc).square() * mask).sum(0) / count
        std = var.sqrt()
        self.loc.copy_(loc)
        self.scale.copy_(torch.where(std > 1e-6, std, torch.ones_like(std)))
        span = sum(float(s.times[-1] - s.times[0]) for s in series) / len(series)
        span = span if span > 0 else 1.0
        self.train_span.fill_(span)
        self.time_scale.fill_(span / self.config.time_horizon)
        if self.config.anchor == "auto":
            share, drift = level_statistics(series)
            self.anchored.copy_(((share > ANCHOR_LEVEL_SHARE) & (drift < ANCHOR_MAX_DRIFT)).to(self.anchored))

    def _tau(self, times: Tensor, origin: Tensor) -> Tensor:
        """Model time since each series' origin: float64 ``times`` (B, T), ``origin`` (B, 1)."""
        return ((times - origin) / float(self.time_scale)).to(self.loc.dtype)

    def _standardise(self, batch: SeriesInput) -> tuple[SeriesBatch, Tensor, Tensor]:
        """Batch on this device, standardised values (B, T, D) and model times (B, T)."""
        batch = batch if isinstance(batch, SeriesBatch) else collate(list(batch))
        if batch.dim != self.dim:
            raise DataError(
                f"series have {batch.dim} channels but the model was trained on {self.dim}",
                value=batch.dim,
                fix=f"send {self.dim} values per time",
                field="values",
            )
        batch = batch.to(self.loc)
        values = (batch.values - self.loc) / self.scale * batch.mask
        return batch, values, self._tau(batch.times, batch.times[:, :1])

    def _log_scale(self, mask: Tensor) -> Tensor:
        """Log-determinant of the standardisation over the masked entries: (B, T, D) -> (B,)."""
        return (mask * self.scale.log()).sum(dim=(-2, -1))

    def _anchor(self, batch: SeriesBatch, values: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Standardised ``values`` (B, T, D) relative to each series' level: the relative values,
        the level (B, 1, D), the entries the model does not score (B, T, D) and the prefix counts
        (B, 1, D). See :meth:`_level_log_density`. ``anchor='none'``: level 0, nothing left out."""
        if not bool(self.anchored.any()):
            zero = torch.zeros_like(values[:, :1])
            return values, zero, torch.zeros_like(values), zero
        prefix = batch.prefix_mask() * self.anchored
        count = prefix.sum(1, keepdim=True)
        level = (values * prefix).sum(1, keepdim=True) / count.clamp_min(1)
        return (values - level) * batch.mask, level, first_observed(prefix), count

    @staticmethod
    def _level_log_density(level: Tensor, count: Tensor) -> Tensor:
        """log p(level) - log|Jacobian| per series, (B, 1, D) -> (B,).

        A channel's ``n`` prefix values ``s`` map one-to-one to their mean ``m`` and the residuals
        ``s_i - m`` for ``i >= 2`` (the first residual is minus their sum; tail residuals are
        ``s - m``), with Jacobian determinant ``n``. So ``log p(s) = log p(m) + log p(residuals |
        m) - log n``: the model scores every residual but each channel's first, and ``m`` is drawn
        from the training marginal of a mean of ``n`` values, ``N(0, 1/n)`` in standardised units.
        """
        seen = count > 0
        n = count.clamp_min(1)
        log_p = -0.5 * n * level.square() - 0.5 * math.log(2 * math.pi) - 0.5 * n.log()
        return (log_p * seen).sum(dim=(-2, -1))

    # ----------------------------------------------------------------- building blocks
    def posterior(self, batch: SeriesBatch, values: Tensor, tau: Tensor) -> tuple[Tensor, Tensor]:
        """``q(z0 | prefix)``: mean and std, each (B, L), from the (anchored) standardised values."""
        return self.encoder(values, batch.mask, tau, batch.observed, self._solver_now, self.encoder_nfe)

    @property
    def _solver_now(self) -> SolverConfig:
        """The serving budget (``query_solver``) for no-grad solves when set, else ``solver``."""
        if self.query_solver is not None and not torch.is_grad_enabled():
            return self.query_solver
        return self.solver

    def decode(self, z0: Tensor, tau: Tensor) -> Tensor:
        """Decoded means (K, B, T, D), standardised, for ``z0`` (K, B, L) at model times ``tau`` (B, T)."""
        samples, batch, latent = z0.shape
        grid = torch.unique(torch.cat([tau.flatten(), tau.new_zeros(1)]))
        index = torch.searchsorted(grid, tau.contiguous())
        states = solve_on_grid(
            self.dynamics, z0.reshape(samples * batch, latent), grid, self._solver_now, self.nfe
        )
        return self.decoder(gather_times(states.view(-1, samples, batch, latent), index))

    def _draw(self, mean: Tensor, std: Tensor, k: int, generator: torch.Generator | None) -> Tensor:
        eps = torch.randn((k, *mean.shape), generator=generator, dtype=mean.dtype)
        return mean + std * eps.to(mean.device)

    # ----------------------------------------------------------------- training
    def training_loss(self, batch: SeriesInput, generator: torch.Generator, iteration: int) -> LossOutput:
        """Negative ELBO per observed scalar, with the KL weight annealed (Rubanova et al., Sec. 3)."""
        batch, absolute, tau = self._standardise(batch)
        if self.config.train_prefix == "random":
            batch = self._random_prefix(batch, generator)
        values, _, entries, _ = self._anchor(batch, absolute)
        mean, std = self.posterior(batch, values, tau)
        z0 = self._draw(mean, std, self.config.train_samples, generator)
        pred = self.decode(z0, tau)
        if self.config.extrapolation_loss:
            target = batch.mask * batch.valid.unsqueeze(-1)
        else:
            target = batch.prefix_mask()
        target = target * (1 - entries)  # an anchor is given, not predicted
        sigma = self.config.obs_noise_std
        log_lik = masked_gaussian_log_density(values, pred, sigma, target).mean(0)
        log_lik = log_lik - self._log_scale(target)
        kl = normal_kl(mean, std)
        anneal = self.config.kl_anneal_iterations
        weight = min(1.0, iteration / anneal) if anneal else 1.0
        entries = target.sum().clamp_min(1)
        loss = -(log_lik - weight * kl).sum() / entries
        with torch.no_grad():
            error = ((pred - values) * self.scale).square() * target
            mse = error.sum() / (entries * pred.shape[0])
        stats = {
            "elbo": float((log_lik - kl).detach().mean()),
            "kl": float(kl.detach().mean()),
            "kl_weight": weight,
            "mse": float(mse),
            "nfe_encoder": float(self.encoder_nfe.forward),
        }
        return LossOutput(loss=loss, stats=stats)

    def _random_prefix(self, batch: SeriesBatch, generator: torch.Generator) -> SeriesBatch:
        """The batch with each encoder prefix cut at a random fraction of the series' span."""
        low = self.config.min_prefix_fraction
        fraction = low + (1 - low) * torch.rand(len(batch), 1, generator=generator)
        start, end = batch.times[:, :1], batch.times[:, -1:]  # padding repeats the last time
        cut = start + fraction.to(batch.times) * (end - start)
        observed = batch.valid & (batch.times <= cut)
        observed[:, 0] = batch.valid[:, 0]
        return replace(batch, observed=observed)

    # ----------------------------------------------------------------- likelihood bound
    def _bound(
        self, batch: SeriesInput, k: int, generator: torch.Generator | None
    ) -> tuple[SeriesBatch, Tensor, Tensor]:
        """IWAE bound (B,) on log p(all observed values) and the mean of the k decodes (B, T, D)."""
        batch, absolute, tau = self._standardise(batch)
        values, level, entries, count = self._anchor(batch, absolute)
        mean, std = self.posterior(batch, values, tau)
        z0 = self._draw(mean, std, k, generator)
        pred = self.decode(z0, tau)
        observed = batch.mask * batch.valid.unsqueeze(-1)
        target = observed * (1 - entries)
        log_lik = masked_gaussian_log_density(values, pred, self.config.obs_noise_std, target)
        log_w = log_lik + standard_normal_log_prob(z0) - normal_log_density(z0, mean, std)
        bound = torch.logsumexp(log_w, 0) - math.log(k) + self._level_log_density(level, count)
        bound = bound - self._log_scale(observed)
        return batch, bound, (pred.mean(0) + level) * self.scale + self.loc

    def bound_bytes(self, count: int, total: int, longest: int) -> int:
        """Estimated peak bytes of ``log_prob`` on ``count`` series of ``total`` points in all, the
        longest of ``longest``: every importance sample's latent states on the union time grid (at
        most ``total + 1`` times, which grows with the product of series and times), the decodes on
        the padded grid and the encoder's states. Serving splits a query to keep this in budget."""
        k, latent = self.config.iwae_samples, self.config.latent_dim
        decoded = latent + sum(self.config.decoder_hidden) + 4 * self.dim
        # The grid states twice: the solver's solution and solve_on_grid's concatenated copy.
        floats = k * count * (2 * (total + 1) * latent + longest * decoded + 8 * latent)
        floats += count * longest * (4 * self.config.encoder_hidden + 3 * self.dim)
        return FLOAT_BYTES * SAFETY * floats

    def predict_bytes(self, n_samples: int, times: int, predict_times: int) -> int:
        """Estimated peak bytes of ``predict`` on one series: every draw's latent states on the grid
        of the query times (twice, as in ``bound_bytes``) and its decodes, plus the encoder."""
        k, latent = max(1, n_samples), self.config.latent_dim
        decoded = latent + sum(self.config.decoder_hidden) + 4 * self.dim
        floats = k * (2 * (predict_times + 1) * latent + predict_times * decoded + 8 * latent)
        floats += times * (4 * self.config.encoder_hidden + 3 * self.dim)
        return FLOAT_BYTES * SAFETY * floats

    @torch.no_grad()
    def log_prob(self, x: SeriesInput, generator: torch.Generator | None = None) -> Tensor:
        """IWAE lower bound (``iwae_samples``) on each series' log-likelihood, (B,), in data units."""
        generator = generator or torch.Generator().manual_seed(0)
        return self._bound(x, self.config.iwae_samples, generator)[1]

    @torch.no_grad()
    def evaluate(self, data: SeriesInput, generator: torch.Generator) -> dict[str, float]:
        """``test_nll`` (nats per series), per-observation NLL, interpolation/extrapolation errors."""
        return test_scores(self, data, generator)

    @torch.no_grad()
    def validate(self, items: Sequence[Series]) -> dict[str, float]:
        """Forecast errors of held-out series (see the module doc); sets the validation buffers.

        Series without a held-out tail are scored on their prefix (reconstruction).
        """
        metrics = validation_scores(self, items)
        for name in self.VALIDATION_BUFFERS:
            getattr(self, name).fill_(metrics[name])
        return metrics

    # ----------------------------------------------------------------- serving
    @torch.no_grad()
    def sample(
        self,
        n: int,
        generator: torch.Generator | None = None,
        times: Tensor | Sequence[float] | None = None,
        noise: bool = False,
        **_: Any,
    ) -> Tensor:
        """``n`` prior trajectories at ``times``, (n, T, D); see ``latent_serving``."""
        return prior_trajectories(self, n, generator, times, noise)

    @torch.no_grad()
    def predict(
        self,
        times: Tensor,
        values: Tensor,
        mask: Tensor | None = None,
        predict_times: Tensor | None = None,
        n_samples: int = 32,
        generator: torch.Generator | None = None,
        include_noise: bool = True,
    ) -> tuple[Tensor, Tensor]:
        """Posterior predictive mean and std at ``predict_times``, (P, D) or (B, P, D); see
        ``latent_serving.posterior_predictive`` for the shapes and options."""
        return posterior_predictive(
            self, times, values, mask, predict_times, n_samples, generator, include_noise
        )
