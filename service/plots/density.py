"""Learned density and samples of a point model (FFJORD) against its data.

1-D: the learned density curve over a histogram of the data (plus the true pdf when known).
2-D: a heatmap of the learned density on a grid beside a 2-D histogram of the data.
Higher D: the first two coordinates of samples against the data.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from torch import Tensor

from service.ml.errors import ConfigError, DataError
from service.ml.models import DensityModel
from service.plots.canvas import as_numpy, model_dtype, new_figure, padded_limits, to_png

__all__ = ["GRID_1D", "GRID_2D", "MAX_POINTS", "density_png", "samples_png"]

GRID_1D = 400  # points of the 1-D density curve
GRID_2D = 120  # cells per side of the 2-D heatmap (120 x 120 log_prob calls, one batch)
MAX_POINTS = 5000  # data points drawn; more only slows the scatter without changing the picture
TrueLogProb = Callable[[Tensor], Tensor]


def check_points(model: DensityModel, data_points: Tensor | np.ndarray) -> np.ndarray:
    """Data as a float64 ``(N, D)`` array (at most ``MAX_POINTS`` rows) for a point model."""
    if getattr(model, "data_kind", "points") != "points":
        raise ConfigError(
            f"{model.name} models do not define a density over points",
            value=model.name,
            fix="density and sample plots need a point model such as ffjord",
            field="kind",
        )
    data = as_numpy(data_points, "data_points")
    if data.ndim == 1:
        data = data[:, None]
    if data.ndim != 2 or data.shape[1] != model.dim or data.shape[0] == 0:
        raise DataError(
            f"data_points must have shape (N, {model.dim}), got {tuple(data.shape)}",
            value=tuple(data.shape),
            fix=f"pass at least one {model.dim}-D point per row",
        )
    return data[:MAX_POINTS]


@torch.no_grad()
def _log_prob(model: DensityModel, points: np.ndarray) -> np.ndarray:
    tensor = torch.as_tensor(points, dtype=model_dtype(model))
    return model.log_prob(tensor).detach().cpu().double().numpy()


def _true(true_log_prob: TrueLogProb, points: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        values = true_log_prob(torch.as_tensor(points, dtype=torch.float64))
    return np.exp(as_numpy(values, "true_log_prob(points)"))


@torch.no_grad()
def _samples(model: DensityModel, n: int, seed: int) -> np.ndarray:
    generator = torch.Generator().manual_seed(seed)
    return model.sample(n, generator).detach().cpu().double().numpy()


def _density_1d(model: DensityModel, data: np.ndarray, true_log_prob: TrueLogProb | None) -> bytes:
    fig, ax = new_figure(6, 4)
    low, high = padded_limits(data[:, 0], 0.15)
    grid = np.linspace(low, high, GRID_1D)
    ax.hist(data[:, 0], bins=60, range=(low, high), density=True, color="0.8", label="data")
    ax.plot(grid, np.exp(_log_prob(model, grid[:, None])), color="C0", lw=2, label="learned")
    if true_log_prob is not None:
        ax.plot(grid, _true(true_log_prob, grid[:, None]), "k--", lw=1.2, label="true")
    ax.set(xlabel="x", ylabel="density", xlim=(low, high), title="Learned density")
    ax.legend(frameon=False)
    return to_png(fig)


def _density_2d(model: DensityModel, data: np.ndarray, true_log_prob: TrueLogProb | None) -> bytes:
    panels = 3 if true_log_prob is not None else 2
    fig, axes = new_figure(3.2 * panels, 3.4, ncols=panels, sharex=True, sharey=True)
    (xlo, xhi), (ylo, yhi) = padded_limits(data[:, 0]), padded_limits(data[:, 1])
    xs, ys = np.linspace(xlo, xhi, GRID_2D), np.linspace(ylo, yhi, GRID_2D)
    mesh = np.stack(np.meshgrid(xs, ys), axis=-1).reshape(-1, 2)
    extent = (xlo, xhi, ylo, yhi)
    learned = np.exp(_log_prob(model, mesh)).reshape(GRID_2D, GRID_2D)
    axes[0].imshow(learned, origin="lower", extent=extent, aspect="auto", cmap="viridis")
    axes[0].set_title("learned density")
    axes[1].hist2d(data[:, 0], data[:, 1], bins=60, range=[[xlo, xhi], [ylo, yhi]], cmap="viridis")
    axes[1].set_title("data")
    if true_log_prob is not None:
        truth = _true(true_log_prob, mesh).reshape(GRID_2D, GRID_2D)
        axes[2].imshow(truth, origin="lower", extent=extent, aspect="auto", cmap="viridis")
        axes[2].set_title("true density")
    for ax in axes:
        ax.set(xlim=(xlo, xhi), ylim=(ylo, yhi), xticks=[], yticks=[])
    return to_png(fig)


def _scatter_pair(data: np.ndarray, samples: np.ndarray, title: str) -> bytes:
    fig, axes = new_figure(7, 3.5, ncols=2, sharex=True, sharey=True)
    both = np.concatenate([data[:, :2], samples[:, :2]])
    xlim, ylim = padded_limits(both[:, 0]), padded_limits(both[:, 1])
    for ax, points, name, color in ((axes[0], data, "data", "C1"), (axes[1], samples, "samples", "C0")):
        ax.scatter(points[:, 0], points[:, 1], s=2, alpha=0.5, color=color, linewidths=0)
        ax.set(xlim=xlim, ylim=ylim, title=name, xlabel="x[0]")
    axes[0].set_ylabel("x[1]")
    fig.suptitle(title)
    return to_png(fig)


def density_png(
    model: DensityModel,
    data_points: Tensor | np.ndarray,
    true_log_prob: TrueLogProb | None = None,
) -> bytes:
    """PNG of the learned density of ``model`` against ``data_points`` ``(N, D)``.

    ``true_log_prob`` maps ``(M, D)`` float64 points to ``(M,)`` natural-log densities. Above two
    dimensions the density cannot be drawn on a grid, so the first two coordinates of samples are
    shown beside those of the data instead.
    """
    data = check_points(model, data_points)
    if model.dim == 1:
        return _density_1d(model, data, true_log_prob)
    if model.dim == 2:
        return _density_2d(model, data, true_log_prob)
    samples = _samples(model, min(len(data), 2000), seed=0)
    return _scatter_pair(data, samples, f"first two of {model.dim} dimensions")


def samples_png(model: DensityModel, data_points: Tensor | np.ndarray, n: int = 1000, seed: int = 0) -> bytes:
    """PNG of ``n`` samples (drawn with ``seed``) beside the data: histograms in 1-D, else scatter."""
    data = check_points(model, data_points)
    samples = _samples(model, max(1, min(int(n), MAX_POINTS)), seed)
    if model.dim > 1:
        return _scatter_pair(data, samples, "samples vs data")
    fig, axes = new_figure(7, 3.5, ncols=2, sharex=True, sharey=True)
    low, high = padded_limits(np.concatenate([data[:, 0], samples[:, 0]]))
    for ax, points, name, color in ((axes[0], data, "data", "C1"), (axes[1], samples, "samples", "C0")):
        ax.hist(points[:, 0], bins=60, range=(low, high), density=True, color=color)
        ax.set(xlabel="x", title=f"{name} (n={len(points)})")
    axes[0].set_ylabel("density")
    return to_png(fig)
