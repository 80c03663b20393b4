"""Test NLL against training time from ``bench_train``'s JSON, as ``docs/img/bench_train.png``.

One panel per dataset: each preset's held-out NLL over its training wall time (log scale, so the
first seconds, where the time-to-the-reference's-NLL headline is decided, are readable next to the
reference's minutes), the reference's final NLL (the target) and the true entropy.

Run: ``python -m benchmarks.train_curves [results JSON] [PNG]`` (``bench_train`` calls it too).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from benchmarks.report import RESULTS
from service.plots.canvas import new_figure, to_png
from service.storage.models_store import atomic_write

__all__ = ["IMAGE", "curves_png", "main", "short_label", "write_curves"]

IMAGE = Path(__file__).resolve().parent.parent / "docs" / "img" / "bench_train.png"


_RECIPE = " exact rk4-h0.5 RNODE-0.01 step-check T<=2 b256 lr3e-3"


def short_label(name: str) -> str:
    """A legend label for a ``bench_train`` preset name: the default recipe named once, not spelled out."""
    if name.endswith(_RECIPE):
        head = name.removesuffix(_RECIPE)
        return head if head.startswith("default") else f"{head}, default recipe"
    return name.replace("2x64 exact rk4-h0.5 RNODE-0.01 step-check ", "") if len(name) >= 30 else name


def curves_png(results: dict[str, Any]) -> bytes:
    """The figure for ``results`` (``bench_train``'s ``results``: dataset -> entropy and runs)."""
    datasets = list(results)
    fig, axes = new_figure(5.0 * len(datasets), 3.8, ncols=len(datasets), squeeze=False)
    for ax, dataset in zip(axes[0], datasets, strict=True):
        entry = results[dataset]
        runs = entry["runs"]
        for name, run in runs.items():
            points = [(p["train_s"], p["test_nll"]) for p in run["curve"]]
            label = short_label(name)
            style = {"color": "black", "marker": "o"} if name == "reference" else {"linewidth": 1.2}
            ax.plot(*zip(*points, strict=True), label=label, **style)
        target = runs["reference"]["final_test_nll"]
        ax.axhline(target, color="grey", linestyle="--", linewidth=0.8, label="reference's final NLL")
        ax.axhline(entry["entropy"], color="grey", linestyle=":", linewidth=0.8, label="entropy (KL = 0)")
        ax.set_xscale("log")
        ax.set_ylim(entry["entropy"] - 0.05, target + 0.6)
        ax.set_xlabel("training wall time (s, log scale)")
        ax.set_ylabel("test NLL (nats)")
        ax.set_title(dataset)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7, loc="best")
    return to_png(fig)


def write_curves(results: dict[str, Any], target: Path = IMAGE) -> None:
    """Draw ``results`` into ``target`` (its folder is created)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(target, curves_png(results))
    print(f"wrote {target}")


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    source = Path(args[0]) if args else RESULTS / "bench_train.json"
    write_curves(json.loads(source.read_text())["results"], Path(args[1]) if len(args) > 1 else IMAGE)


if __name__ == "__main__":
    main()
