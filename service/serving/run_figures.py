"""Figures of a stored run: the data a run trained on, and which plot needs which model kind.

Sits between the API and :mod:`service.plots`: it rebuilds a run's held-out data from its recorded
dataset reference and seed (built-ins are regenerated, uploads read from the store) and renders
one ``PlotKind``. No FastAPI and no database here; the route checks status and caches the bytes.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from service.ml.data import DATASETS, PointData, load_dataset, point_data_from_tensor
from service.ml.errors import ConfigError, DataError
from service.ml.models import DensityModel
from service.ml.series import SERIES_DATASETS, load_series_dataset
from service.plots import density_png, flow_gif, flow_png, forecast_png, loss_png, samples_png
from service.storage.models_store import ModelStore

__all__ = [
    "FORECAST_POINTS",
    "PlotKind",
    "load_point_data",
    "needs_kind",
    "render_forecast",
    "render_history",
    "render_points",
]

FORECAST_POINTS = 200
"""Prediction times of ``forecast.png`` (over the whole span of the shown series)."""


class PlotKind(enum.StrEnum):
    """``GET /runs/{id}/plots/{kind}.png`` (``flow_gif`` is served as ``flow.gif``)."""

    density = "density"
    samples = "samples"
    loss = "loss"
    flow = "flow"
    forecast = "forecast"
    flow_gif = "flow_gif"


_POINT_KINDS = {PlotKind.density, PlotKind.samples, PlotKind.flow, PlotKind.flow_gif}


def needs_kind(kind: PlotKind) -> str | None:
    """The data kind a plot needs from its model (``points`` or ``series``), None for any model."""
    if kind in _POINT_KINDS:
        return "points"
    return "series" if kind == PlotKind.forecast else None


def load_point_data(
    dataset: Mapping[str, Any], seed: int, store: ModelStore, upload: tuple[str, str] | None = None
) -> PointData:
    """The points a run trained on: a built-in by name and sizes, or an upload ``(id, sha256)``."""
    if dataset.get("id"):
        if upload is None:
            raise DataError(
                f"uploaded dataset {dataset['id']} no longer exists",
                fix="plots of points need the run's dataset; upload it again and retrain",
                field="run_id",
            )
        points = store.load_points(upload[0], upload[1])
        return point_data_from_tensor(str(dataset.get("name", "upload")), points, seed=seed)
    name = dataset["name"]
    if name not in DATASETS:
        raise DataError(f"dataset {name!r} is not a point dataset", field="run_id")
    sizes = {k: int(dataset[k]) for k in ("n_train", "n_test") if dataset.get(k)}
    return load_dataset(name, seed=seed, **sizes)


def render_points(kind: PlotKind, model: DensityModel, data: PointData, seed: int = 0) -> bytes:
    """density / samples / flow PNG, or the flow GIF, of a point model over its test points."""
    if kind == PlotKind.density:
        return density_png(model, data.test, data.true_log_prob)
    if kind == PlotKind.samples:
        return samples_png(model, data.test, 1000, seed)
    if kind == PlotKind.flow:
        return flow_png(model, data.test)
    if kind == PlotKind.flow_gif:
        return flow_gif(model, data.test)
    raise ConfigError(f"{kind} is not a plot of points", value=str(kind), field="kind")


def render_history(history: Sequence[Mapping[str, Any]]) -> bytes:
    """Loss and NFE curves from per-iteration records (``GET /runs/{id}/metrics`` rows)."""
    return loss_png(history)


@torch.no_grad()
def render_forecast(model: Any, dataset: Mapping[str, Any], seed: int) -> bytes:
    """Forecast of the first held-out series: condition on its observed prefix, predict its span.

    Only built-in series datasets can be regenerated from a run row.
    """
    name = dataset.get("name")
    if dataset.get("id") or name not in SERIES_DATASETS:
        raise DataError(
            f"cannot rebuild the series of dataset {name!r} for a forecast plot",
            fix="forecast.png draws a held-out series of a built-in series dataset; use POST "
            "/predict for your own series",
            field="run_id",
        )
    series = load_series_dataset(str(name), seed=seed).test[0]
    shown = max(1, min(series.n_observed, len(series)))
    times, values, mask = series.times[:shown], series.values[:shown], series.mask[:shown]
    grid = torch.linspace(float(series.times[0]), float(series.times[-1]), FORECAST_POINTS)
    generator = torch.Generator().manual_seed(seed)
    mean, std = model.predict(times, values, mask, grid.double(), n_samples=32, generator=generator)
    observed = torch.where(mask.bool(), values, torch.full_like(values, float("nan")))
    return forecast_png(times, observed, grid, mean, std)
