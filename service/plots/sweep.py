"""Sweep chart: wall clock and test NLL (own solver and tight re-score) against the swept value,
one line per other combination."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from service.jobs.sweeps import METRIC_COLUMNS
from service.plots.canvas import new_figure, to_png

__all__ = ["sweep_png"]

_LOG_FIELDS = ("rtol", "atol", "lr", "weight_decay", "step_size")


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _log_x(swept_key: str, values: list[Any]) -> bool:
    """Log scale for tolerances and rates, or any positive values spanning two decades."""
    if not values or not all(_is_number(v) and v > 0 for v in values):
        return False
    return swept_key.rsplit(".", 1)[-1] in _LOG_FIELDS or max(values) / min(values) >= 100


def _label(value: Any) -> str:
    return json.dumps(value) if isinstance(value, list | dict) else str(value)


def _metric(row: Mapping[str, Any], key: str) -> float:
    value = row.get(key)
    return float(value) if _is_number(value) else np.nan


def sweep_png(
    rows: Sequence[Mapping[str, Any]],
    swept_key: str,
    group_keys: Sequence[str] | None = None,
) -> bytes:
    """PNG with two panels: ``wall_clock_s``, and ``test_nll`` (solid) with ``test_nll_tight``
    (dashed, where rows have it) against ``rows[i][swept_key]``.

    ``rows`` are flat dicts as built by ``service.jobs.sweeps.comparison_rows``. Rows are grouped by the
    other grid keys (``group_keys``; default: every key of the first row that is neither the swept
    key, a metric nor ``status``), one line per group. The x axis is logarithmic for tolerances and
    rates; non-numeric swept values (methods, datasets) are placed at evenly spaced category
    positions. Failed runs (no metrics) leave gaps.
    """
    if group_keys is None:
        skip = {swept_key, "status", *METRIC_COLUMNS}
        group_keys = [k for k in (rows[0] if rows else {}) if k not in skip]
    swept = [row.get(swept_key) for row in rows]
    numeric = bool(swept) and all(_is_number(v) for v in swept)
    categories = list(dict.fromkeys(_label(v) for v in swept))
    position = {label: i for i, label in enumerate(categories)}
    groups: dict[str, list[Mapping[str, Any]]] = {}
    for row in rows:
        name = ", ".join(f"{k}={_label(row.get(k))}" for k in group_keys)
        groups.setdefault(name, []).append(row)
    fig, axes = new_figure(8, 3.6, ncols=2)
    panels = (("wall_clock_s", "wall clock (s)"), ("test_nll", "test NLL (nats)"))
    tight = any(_is_number(row.get("test_nll_tight")) for row in rows)
    for ax, (metric, label) in zip(axes, panels, strict=True):
        for i, (name, members) in enumerate(groups.items()):
            if numeric:
                members = sorted(members, key=lambda r: r[swept_key])
                xs = [float(r[swept_key]) for r in members]
            else:
                xs = [position[_label(r.get(swept_key))] for r in members]
            ys = [_metric(r, metric) for r in members]
            ax.plot(xs, ys, "o-", color=f"C{i % 10}", ms=4, label=name or None)
            if metric == "test_nll" and tight:
                ys = [_metric(r, "test_nll_tight") for r in members]
                ax.plot(xs, ys, "s--", color=f"C{i % 10}", ms=3, alpha=0.8)
        if numeric and _log_x(swept_key, swept):
            ax.set_xscale("log")
        if not numeric:
            ax.set_xticks(range(len(categories)), categories, rotation=20, fontsize=8)
        ax.set(xlabel=swept_key, ylabel=label)
        ax.grid(alpha=0.3)
    if not rows:
        axes[0].text(0.5, 0.5, "no runs", ha="center", va="center", transform=axes[0].transAxes)
    if any(group_keys) and len(groups) > 1:
        axes[1].legend(frameon=False, fontsize=7)
    if tight:
        axes[1].set_title("solid: own solver; dashed: re-scored at 1e-8", fontsize=8)
    fig.suptitle(f"Sweep over {swept_key}")
    return to_png(fig)
