"""Figures of trained runs as PNG (and GIF) bytes: densities, samples, losses, flows, sweeps.

Every function takes plain inputs (a loaded model, tensors or arrays, a history list) and returns the
encoded image, so routes, workers and the CLI can cache or stream it. Rendering uses matplotlib's Agg
canvas through the object-oriented ``Figure`` API: no GUI, no pyplot global state, safe in threads.
"""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")  # before anything can import pyplot; the service never opens a window

from service.plots.density import density_png, samples_png  # noqa: E402
from service.plots.flow import flow_gif, flow_png  # noqa: E402
from service.plots.forecast import forecast_png  # noqa: E402
from service.plots.loss import loss_png, losses_png  # noqa: E402
from service.plots.sweep import sweep_png  # noqa: E402

__all__ = [
    "density_png",
    "flow_gif",
    "flow_png",
    "forecast_png",
    "loss_png",
    "losses_png",
    "samples_png",
    "sweep_png",
]
