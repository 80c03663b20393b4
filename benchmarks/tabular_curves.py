"""``docs/img/bench_tabular.png``: test NLL per dimension against wall time, one panel per table,
and (when ``bench_scaling`` results are given) the cost against D.

Run: ``python -m benchmarks.tabular_curves`` (redraws from ``results/bench_tabular.json`` and
``results/bench_scaling.json``; both benchmarks call it too).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from matplotlib.ticker import FixedLocator, FuncFormatter, NullFormatter

from benchmarks.report import RESULTS
from service.plots.canvas import new_figure, to_png
from service.storage.models_store import atomic_write

__all__ = ["IMAGE", "tabular_png", "write_tabular_curves"]

TIME_TICKS = (1, 2, 4, 8, 15, 30, 60, 120, 240)
IMAGE = Path(__file__).resolve().parent.parent / "docs" / "img" / "bench_tabular.png"


def _load(name: str) -> dict[str, Any] | None:
    path = RESULTS / f"{name}.json"
    return json.loads(path.read_text()) if path.is_file() else None


def tabular_png(results: dict[str, Any], scaling: dict[str, Any] | None) -> bytes:
    tables = list(results)
    panels = len(tables) + (1 if scaling else 0)
    fig, axes = new_figure(4.6 * panels, 3.8, ncols=panels, squeeze=False)
    for ax, table in zip(axes[0], tables, strict=False):
        finals = []
        for method, run in results[table].items():
            points = [
                (p["wall_s"], p["nll_per_dim"]) for p in run["curve"] if math.isfinite(p["nll_per_dim"])
            ]
            if points:
                style = {"linestyle": "--"} if method.startswith("zuko") else {"linewidth": 1.6}
                ax.plot(*zip(*points, strict=True), marker="o", markersize=3, label=method, **style)
                finals.append(points[-1][1])
        if finals:
            low = min(finals)
            ax.set_ylim(low - 0.15, low + 1.2)
        ax.set_xscale("log")
        ax.xaxis.set_major_locator(FixedLocator(TIME_TICKS))
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_xlabel("training wall time (s, log scale)")
        ax.set_ylabel("test NLL (nats / dim)")
        ax.set_title(table)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7, loc="best")
    if scaling:
        ax = axes[0][-1]
        from benchmarks.bench_scaling import SERIES

        for key, label in SERIES.items():
            points = [(row["dim"], row[key]) for row in scaling["rows"] if row.get(key) is not None]
            if points:
                ax.plot(*zip(*points, strict=True), marker="o", markersize=3, label=label)
        ax.set_xscale("log", base=2)
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        ax.set_yscale("log")
        ax.set_xlabel("dimension D")
        ax.set_ylabel("ms")
        ax.set_title("cost against D")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=6, loc="best")
    return to_png(fig)


def write_tabular_curves(
    results: dict[str, Any] | None = None, scaling: dict[str, Any] | None = None, target: Path = IMAGE
) -> None:
    """Draw the latest results (arguments override what is on disk) into ``target``."""
    if results is None:
        saved = _load("bench_tabular")
        results = saved["results"] if saved else {}
    if scaling is None:
        scaling = _load("bench_scaling")
    target.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(target, tabular_png(results, scaling))
    print(f"wrote {target}")


if __name__ == "__main__":
    write_tabular_curves()
