"""How a continuous flow moves points: data at ``t = 0`` to the base distribution at ``t = T``.

Uses the model's ``trajectory(points, times)`` (FFJORD, arXiv:1810.01367) and ``end_time``.
1-D: each point's path x(t) against t. 2-D and above: the transported points (first two
coordinates) at several times, coloured by where they started. ``flow_gif`` animates the same.
"""

from __future__ import annotations

import io

import numpy as np
import torch
from matplotlib.collections import LineCollection
from matplotlib.figure import Figure
from PIL import Image
from torch import Tensor

from service.ml.errors import ConfigError
from service.ml.models import DensityModel
from service.plots.canvas import as_numpy, model_dtype, new_figure, padded_limits, to_png, to_rgb
from service.plots.density import check_points

__all__ = ["flow_gif", "flow_png"]

PATHS_1D = 40  # trajectories drawn in 1-D (at evenly spaced data quantiles)
POINTS_2D = 800  # transported points drawn in 2-D
TIME_STEPS = 60  # solver output times of the 1-D trajectory plot
SNAPSHOTS = 4  # panels of the 2-D flow plot


def _end_time(model: DensityModel) -> float:
    if not hasattr(model, "trajectory") or not hasattr(model, "end_time"):
        raise ConfigError(
            f"{model.name} models have no flow trajectory to draw",
            value=model.name,
            fix="flow plots need a continuous normalizing flow such as ffjord",
            field="kind",
        )
    return float(torch.as_tensor(model.end_time).detach())


def _starts(data: np.ndarray, count: int) -> np.ndarray:
    if data.shape[1] == 1:
        quantiles = np.linspace(0.01, 0.99, count)
        return np.quantile(data[:, 0], quantiles)[:, None]
    if len(data) <= count:
        return data
    return data[np.random.default_rng(0).choice(len(data), count, replace=False)]


@torch.no_grad()
def _paths(model: DensityModel, starts: np.ndarray, times: np.ndarray) -> np.ndarray:
    """States ``(len(times), B, D)`` of the flow started at ``starts`` at ``times[0] = 0``."""
    dtype = model_dtype(model)
    states = model.trajectory(torch.as_tensor(starts, dtype=dtype), torch.as_tensor(times, dtype=dtype))
    return as_numpy(states, "trajectory")


def _colours(starts: np.ndarray) -> np.ndarray:
    key = starts[:, 0]
    span = np.ptp(key) or 1.0
    return (key - key.min()) / span


def _scatter(ax, states: np.ndarray, colours: np.ndarray, t: float, limits) -> None:  # noqa: ANN001
    ax.scatter(states[:, 0], states[:, 1], c=colours, cmap="viridis", s=3, linewidths=0)
    ax.set(xlim=limits[0], ylim=limits[1], xticks=[], yticks=[], title=f"t = {t:.2f}")


def _limits(paths: np.ndarray) -> tuple[tuple[float, float], ...]:
    return tuple(padded_limits(paths[..., i].ravel(), 0.05) for i in range(min(2, paths.shape[-1])))


def flow_png(model: DensityModel, data_points: Tensor | np.ndarray) -> bytes:
    """PNG of the flow of ``data_points`` ``(N, D)`` from the data (t = 0) to the base (t = T)."""
    data = check_points(model, data_points)
    end = _end_time(model)
    if model.dim == 1:
        starts = _starts(data, PATHS_1D)
        times = np.linspace(0.0, end, TIME_STEPS)
        paths = _paths(model, starts, times)[..., 0]
        fig, ax = new_figure(6, 4)
        segments = np.stack([np.broadcast_to(times, paths.T.shape), paths.T], axis=-1)
        lines = LineCollection(list(segments), array=_colours(starts), cmap="viridis", lw=0.9)
        ax.add_collection(lines)
        ax.set_ylim(*padded_limits(paths.ravel(), 0.05))
        ax.set(xlabel="t  (data at 0, base at T)", ylabel="x(t)", xlim=(0, end), title="Flow paths")
        return to_png(fig)
    starts = _starts(data, POINTS_2D)
    times = np.linspace(0.0, end, SNAPSHOTS)
    paths = _paths(model, starts, times)
    limits, colours = _limits(paths), _colours(starts)
    fig, axes = new_figure(2.6 * SNAPSHOTS, 2.9, ncols=SNAPSHOTS)
    for ax, t, states in zip(axes, times, paths, strict=True):
        _scatter(ax, states, colours, t, limits)
    fig.suptitle("Data (t = 0) flowing to the base (t = T)")
    return to_png(fig)


def _frame_1d(paths: np.ndarray, t: float, limits: tuple[float, float], top: float) -> Figure:
    fig, ax = new_figure(4, 3.2)
    ax.hist(paths, bins=50, range=limits, density=True, color="C0")
    ax.set(xlim=limits, ylim=(0, top), xlabel="x(t)", ylabel="density", title=f"t = {t:.2f}")
    return fig


def flow_gif(
    model: DensityModel,
    data_points: Tensor | np.ndarray,
    frames: int = 16,
    frame_ms: int = 150,
) -> bytes:
    """Animated GIF of the flow: one frame per time in ``linspace(0, T, frames)``.

    1-D frames are histograms of the transported points; 2-D frames scatter them (first two
    coordinates above 2-D), with axes fixed across frames so the motion is visible.
    """
    data = check_points(model, data_points)
    end = _end_time(model)
    frames = max(2, min(int(frames), 60))
    times = np.linspace(0.0, end, frames)
    starts = data[: POINTS_2D * 2] if model.dim == 1 else _starts(data, POINTS_2D)
    paths = _paths(model, starts, times)
    images = []
    if model.dim == 1:
        limits = padded_limits(paths.ravel(), 0.05)
        peaks = [np.histogram(p[:, 0], bins=50, range=limits, density=True)[0].max() for p in paths]
        top = 1.1 * max(peaks)
        for t, states in zip(times, paths, strict=True):
            images.append(to_rgb(_frame_1d(states[:, 0], t, limits, top)))
    else:
        limits, colours = _limits(paths), _colours(starts)
        for t, states in zip(times, paths, strict=True):
            fig, ax = new_figure(3.6, 3.6)
            _scatter(ax, states, colours, t, limits)
            images.append(to_rgb(fig))
    pictures = [Image.fromarray(image).convert("P", palette=Image.Palette.ADAPTIVE) for image in images]
    buffer = io.BytesIO()
    pictures[0].save(
        buffer, format="GIF", save_all=True, append_images=pictures[1:], duration=frame_ms, loop=0
    )
    return buffer.getvalue()
