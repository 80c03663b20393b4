"""Figure creation and encoding shared by the plot modules (Agg canvas, no pyplot)."""

from __future__ import annotations

import io
from typing import Any

import numpy as np
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from service.ml.errors import DataError

__all__ = ["DPI", "as_numpy", "model_dtype", "new_figure", "padded_limits", "to_png", "to_rgb"]

DPI = 100


def new_figure(width: float = 6.0, height: float = 4.0, **subplots: Any) -> tuple[Figure, Any]:
    """A small figure with an Agg canvas and its axes (``subplots`` as in ``Figure.subplots``)."""
    fig = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig, fig.subplots(**subplots)


def to_png(fig: Figure) -> bytes:
    """Encode ``fig`` as PNG bytes."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=DPI)
    return buffer.getvalue()


def to_rgb(fig: Figure) -> np.ndarray:
    """Render ``fig`` to an ``(H, W, 3)`` uint8 array (one animation frame)."""
    canvas = fig.canvas
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].copy()


def as_numpy(values: Any, name: str) -> np.ndarray:
    """Tensor / array / nested list as a float64 array; raises ``DataError`` when impossible."""
    if isinstance(values, torch.Tensor):
        return values.detach().cpu().to(torch.float64).numpy()
    try:
        return np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError):
        raise DataError(f"{name} is not a numeric array", fix=f"pass {name} as numbers") from None


def model_dtype(model: torch.nn.Module) -> torch.dtype:
    """Floating dtype of the model's parameters (float32 when it has none)."""
    for param in model.parameters():
        return param.dtype
    return torch.float32


def padded_limits(values: np.ndarray, pad: float = 0.1) -> tuple[float, float]:
    """``(low, high)`` of finite ``values`` widened by ``pad`` of the range (never empty)."""
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        return -1.0, 1.0
    low, high = float(finite.min()), float(finite.max())
    span = high - low if high > low else max(1.0, abs(low))
    return low - pad * span, high + pad * span
