"""Latent ODE forecasts: observations, predicted mean and a +-2 std band per channel.

Plain arrays in, so it draws a ``POST /predict`` response (latent ODE, arXiv:1907.03907) without
depending on the model class.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from service.ml.errors import DataError
from service.plots.canvas import as_numpy, new_figure, to_png

__all__ = ["MAX_CHANNELS", "forecast_png"]

MAX_CHANNELS = 4  # panels drawn; further channels are left out (the title says so)


def _matrix(values: Any, name: str, rows: int) -> np.ndarray:
    array = as_numpy(values, name)
    if array.ndim == 1:
        array = array[:, None]
    if array.ndim != 2 or array.shape[0] != rows:
        raise DataError(
            f"{name} must have shape ({rows}, C), got {tuple(array.shape)}",
            value=tuple(array.shape),
            fix=f"give one row of channel values per time ({rows} times)",
        )
    return array


def forecast_png(times_obs: Any, values_obs: Any, predict_times: Any, mean: Any, std: Any) -> bytes:
    """PNG of a forecast, one panel per channel (at most ``MAX_CHANNELS``).

    Shapes: ``times_obs (N,)``, ``values_obs (N, C)`` (NaN = not observed), ``predict_times (M,)``,
    ``mean (M, C)`` and ``std (M, C)``; a 1-D ``values_obs``/``mean``/``std`` means ``C = 1``.
    """
    t_obs = as_numpy(times_obs, "times_obs").reshape(-1)
    t_pred = as_numpy(predict_times, "predict_times").reshape(-1)
    observed = _matrix(values_obs, "values_obs", len(t_obs))
    mean_ = _matrix(mean, "mean", len(t_pred))
    std_ = _matrix(std, "std", len(t_pred))
    channels = mean_.shape[1]
    if observed.shape[1] != channels or std_.shape[1] != channels:
        raise DataError(
            "values_obs, mean and std must have the same number of channels",
            value=(observed.shape[1], channels, std_.shape[1]),
            fix="pass the observations the forecast was computed from",
        )
    shown = min(channels, MAX_CHANNELS)
    fig, axes = new_figure(6, 1.2 + 1.6 * shown, nrows=shown, sharex=True, squeeze=False)
    order = np.argsort(t_pred)
    for c, ax in enumerate(axes[:, 0]):
        m, s = mean_[order, c], std_[order, c]
        ax.fill_between(t_pred[order], m - 2 * s, m + 2 * s, color=f"C{c}", alpha=0.2, lw=0, label="±2 std")
        ax.plot(t_pred[order], m, color=f"C{c}", lw=1.5, label="predicted mean")
        ax.plot(t_obs, observed[:, c], "o", color="k", ms=3, label="observed")
        ax.set_ylabel(f"channel {c}")
    axes[0, 0].legend(frameon=False, fontsize=8, ncols=3)
    axes[-1, 0].set_xlabel("t")
    extra = f" (first {shown} of {channels} channels)" if channels > shown else ""
    axes[0, 0].set_title("Forecast" + extra)
    return to_png(fig)
