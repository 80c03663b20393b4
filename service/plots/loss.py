"""Training curves: loss and NFE against iteration and against wall-clock time, of one run or of
several runs overlaid (the compare view)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from matplotlib.axes import Axes

from service.plots.canvas import new_figure, to_png

__all__ = ["loss_png", "losses_png"]

History = Sequence[Mapping[str, Any]]


def _column(history: History, key: str) -> np.ndarray:
    return np.array([float(h[key]) if h.get(key) is not None else np.nan for h in history])


def _draw_loss(
    ax: Axes,
    history: History,
    x_key: str,
    colors: tuple[str, str],
    labels: tuple[str, str],
    style: str = "-",
) -> None:
    """On ``ax``: the train loss of ``history`` against ``x_key`` as a line and its ``test_nll``
    records as points; ``colors`` and ``labels`` are (loss, test NLL)."""
    x, test = _column(history, x_key), _column(history, "test_nll")
    ax.plot(x, _column(history, "loss"), style, color=colors[0], lw=1, label=labels[0])
    if np.isfinite(test).any():
        ax.plot(x, test, "o", color=colors[1], ms=4, label=labels[1])


_AXES = (("iteration", "iteration"), ("wall_s", "wall clock (s)"))


def loss_png(history: History) -> bytes:
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
    forward, backward = _column(history, "nfe_forward"), _column(history, "nfe_backward")
    for col, (key, label) in enumerate(_AXES):
        top, bottom = axes[0, col], axes[1, col]
        if len(history):
            _draw_loss(top, history, key, ("C0", "C3"), ("train loss", "test NLL"))
            x = _column(history, key)
            bottom.plot(x, forward, color="C2", lw=1, label="NFE forward")
            bottom.plot(x, backward, color="C4", lw=1, label="NFE backward")
            top.legend(frameon=False, fontsize=8)
            bottom.legend(frameon=False, fontsize=8)
        top.set_ylabel("loss (nats)")
        bottom.set(xlabel=label, ylabel="NFE per iteration")
    axes[0, 0].set_title("against iteration")
    axes[0, 1].set_title("against wall time")
    return to_png(fig)


def losses_png(curves: Sequence[tuple[str, History]]) -> bytes:
    """PNG with the train loss of several runs overlaid, against iteration (left) and wall time
    (right); test NLL records are points in the run's colour. One legend entry per run, beside
    the panels (up to 20 runs stay readable).

    ``curves`` is ``[(legend label, history)]`` in legend order, each history as for
    :func:`loss_png`; a run without iterations is listed in the legend as such.
    """
    fig, axes = new_figure(10, 4.2, ncols=2)
    for i, (label, history) in enumerate(curves):
        color = f"C{i % 10}"
        style = "-" if i < 10 else "--"  # the colour cycle repeats after ten runs
        name = label if history else f"{label} (no iterations yet)"
        for ax, (key, _) in zip(axes, _AXES, strict=True):
            if history:
                _draw_loss(ax, history, key, (color, color), (name, "_test NLL"), style)
            else:
                ax.plot([], [], style, color=color, lw=1, label=name)
    for ax, (_, label) in zip(axes, _AXES, strict=True):
        ax.set(xlabel=label, ylabel="loss (nats)")
        ax.grid(alpha=0.3)
    axes[0].set_title("train loss (lines), test NLL (points) against iteration", fontsize=10)
    axes[1].set_title("against wall time", fontsize=10)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside right upper", frameon=False, fontsize=7)
    return to_png(fig)
