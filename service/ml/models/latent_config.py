"""The configuration of a latent ODE (``LatentODEConfig``) and the thresholds of ``anchor='auto'``.

Split from :mod:`service.ml.models.latent_ode`, which re-exports ``LatentODEConfig``: the
architecture, likelihood, objective and anchoring of a latent ODE (Rubanova et al.,
arXiv:1907.03907), validated when built.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field

from service.ml.models.base import Width

__all__ = ["ANCHOR_LEVEL_SHARE", "ANCHOR_MAX_DRIFT", "LatentODEConfig"]

ANCHOR_LEVEL_SHARE = 0.5
ANCHOR_MAX_DRIFT = 0.25
"""``anchor='auto'`` anchors a channel whose training series differ mostly in level (share of the
variance between series above ``ANCHOR_LEVEL_SHARE``) and keep it (drift below
``ANCHOR_MAX_DRIFT``), see ``level_statistics``. co2 windows: share 0.97, drift 0.03 (anchored);
sunspots 0.18 / 2.1, elnino 0.07 / 2.7, noisy spirals 0.05 / 2.2, the built-in spirals 0.88 / 0.98
and 0.68 / 4.1 (a level that moves with the dynamics): not anchored."""


class LatentODEConfig(BaseModel):
    """Architecture, likelihood and objective of a latent ODE."""

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)

    latent_dim: int = Field(6, ge=1, le=128, description="Dimension of z.")
    encoder: Literal["gru", "ode_rnn"] = Field(
        "gru", description="Recognition network: GRU, or ODE-RNN (ODE between observations)."
    )
    encoder_hidden: int = Field(32, ge=1, le=1024, description="GRU hidden size.")
    encoder_ode_hidden: tuple[Width, ...] = Field(
        (32,), max_length=4, description="Hidden widths of the ODE-RNN's dynamics."
    )
    dynamics_hidden: tuple[Width, ...] = Field(
        (64, 64), min_length=1, max_length=8, description="Hidden widths of the latent dynamics."
    )
    decoder_hidden: tuple[Width, ...] = Field(
        (32,), max_length=8, description="Hidden widths of the decoder z -> x."
    )
    obs_noise_std: float = Field(
        0.05, ge=1e-3, le=1.0, description="Fixed observation noise (standardised units)."
    )
    kl_anneal_iterations: int = Field(
        200, ge=0, le=1_000_000, description="KL weight rises linearly from 0 to 1 over these."
    )
    train_samples: int = Field(1, ge=1, le=64, description="Posterior samples per training series.")
    iwae_samples: int = Field(16, ge=1, le=1024, description="Importance samples of the evaluation bound.")
    extrapolation_loss: bool = Field(
        True, description="Score the held-out tail in training too (False: prefix only)."
    )
    train_prefix: Literal["random", "data"] = Field(
        "random",
        description=(
            "Encoder prefix in training: a random fraction of each series' span (so the encoder "
            "learns any number of observations), or the dataset's observed/held-out split."
        ),
    )
    min_prefix_fraction: float = Field(
        0.25, gt=0, le=1, description="Smallest random prefix, as a fraction of the series span."
    )
    time_horizon: float = Field(
        4.0, gt=0, le=1000, description="Mean training series duration in model time units."
    )
    anchor: Literal["auto", "mean", "none"] = Field(
        "auto",
        description=(
            "Model a channel relative to the mean of each series' observed prefix ('mean'), so a "
            "level never seen in training (a trend) is forecast from where the series is; or in "
            "absolute values ('none'). 'auto': 'mean' for the channels whose training prefixes "
            "differ mostly in a level that persists (see ANCHOR_LEVEL_SHARE)."
        ),
    )

    LEGACY_DEFAULTS: ClassVar[dict[str, Any]] = {"anchor": "none"}
