"""Training curves: loss and NFE against iteration and against wall-clock time."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from service.plots.canvas import new_figure, to_png

__all__ = ["loss_png"]


def _column(history: Sequence[Mapping[str, Any]], key: str) -> np.ndarray:
    return np.array([float(h[key]) if h.get(key) is not None else np.nan for h in history])


def loss_png(history: Sequence[Mapping[str, Any]]) -> bytes:
    """PNG with 2x2 panels: loss (top) and NFE forward/backward (bottom) against iteration (left)
    and wall time (right).

    ``history`` is ``fit``'s list of records with keys ``iteration``, ``wall_s``, ``loss``,
    ``nfe_forward``, ``nfe_backward``; records that also carry ``test_nll`` are marked on the loss
    panels. An empty history (a run that has not started) gives a figure that says so.
    """
    fig, axes = new_figure(8, 5.5, nrows=2, ncols=2, sharex="col")
    if not history:
        for ax in axes.flat:
            ax.text(0.5, 0.5, "no iterations yet", ha="center", va="center", transform=ax.transAxes)
    iteration, wall = _column(history, "iteration"), _column(history, "wall_s")
    loss, test = _column(history, "loss"), _column(history, "test_nll")
    forward, backward = _column(history, "nfe_forward"), _column(history, "nfe_backward")
    for col, (x, label) in enumerate(((iteration, "iteration"), (wall, "wall clock (s)"))):
        top, bottom = axes[0, col], axes[1, col]
        if len(history):
            top.plot(x, loss, color="C0", lw=1, label="train loss")
            if np.isfinite(test).any():
                top.plot(x, test, "o", color="C3", ms=4, label="test NLL")
            bottom.plot(x, forward, color="C2", lw=1, label="NFE forward")
            bottom.plot(x, backward, color="C4", lw=1, label="NFE backward")
            top.legend(frameon=False, fontsize=8)
            bottom.legend(frameon=False, fontsize=8)
        top.set_ylabel("loss (nats)")
        bottom.set(xlabel=label, ylabel="NFE per iteration")
    axes[0, 0].set_title("against iteration")
    axes[0, 1].set_title("against wall time")
    return to_png(fig)
