"""How low can a smooth flow's KL go on checkerboard, and how far does longer training take it?

``checkerboard`` is uniform on 8 cells of side 2 with hard edges; a flow's density is smooth, so its
KL to the truth is bounded by how sharply it can make an edge. Two measurements:

1. **Edge width needed for a given KL (exact).** KL(p || p * N(0, s^2 I)) for the checkerboard blurred
   by a Gaussian of width ``s``: the blurred cell is a product of two normal-CDF differences, so the
   blurred density is closed form and the KL is an expectation under p (Monte Carlo on 2 million
   points, standard error stated). It is about ``s`` nats for small ``s`` (each edge costs
   ``s * int_0^inf -log Phi(u) du`` per unit length over the cell side), so KL 0.01 asks for edges
   as sharp as ``s ~ 0.011``: about 1/190 of a cell.
2. **Long training.** Presets of ``bench_train`` trained on checkerboard for ten times the
   wall time the reference preset needed for its 1500 iterations (read from
   ``results/bench_train.json``), one process each side by side, test NLL on the same 4096 points
   with dopri5 at 1e-5 and the exact trace. Reported: KL at 1x, 2x, 4x, ... that time, and the blur
   width ``s`` whose KL equals the model's ("effective edge width").

Run: ``python -m benchmarks.bench_kl_floor [--quick] [--multiple 10]`` (full: 10x the reference's
time, about 20 min on this machine; quick: 60 s per preset). Draws ``docs/img/checkerboard_kl_floor.png``.
"""

from __future__ import annotations

import argparse
import json
import math
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from benchmarks.bench_train import DEFAULT, WIDE, train
from benchmarks.report import RESULTS, write_results
from benchmarks.train_curves import short_label
from benchmarks.train_scores import evaluation_at
from service.ml.toy2d import checkerboard, checkerboard_log_prob
from service.plots.canvas import new_figure, to_png
from service.storage.models_store import atomic_write

__all__ = ["IMAGE", "blur_kl", "blurred_log_density", "edge_kl_1d", "floor_png", "main", "width_for_kl"]

IMAGE = Path(__file__).resolve().parent.parent / "docs" / "img" / "checkerboard_kl_floor.png"

CELL = 2.0
# The checkerboard's own log-density at the 16 cell centres of [-4, 4)^2 says which 8 are occupied.
_CENTRES = torch.cartesian_prod(*[torch.arange(-3.0, 4.0, CELL, dtype=torch.float64)] * 2)
_CENTRE_LOG_P = checkerboard_log_prob(_CENTRES).to(torch.float64)
_CORNERS = _CENTRES[torch.isfinite(_CENTRE_LOG_P)] - CELL / 2  # lower-left corners of those cells
_LOG_P = float(_CENTRE_LOG_P.max())  # -log 32: uniform on 8 cells of area 4
BLUR_WIDTHS = (0.003, 0.01, 0.03, 0.1, 0.2, 0.3, 0.5)


def blurred_log_density(x: Tensor, width: float) -> Tensor:
    """``log (p * N(0, width^2 I))(x)`` for the checkerboard ``p``: ``(B, 2) -> (B,)``, float64.

    Each cell is a product of intervals, so its blurred mass density is
    ``prod_d [Phi((x_d - a_d) / s) - Phi((x_d - a_d - 2) / s)] / 32``, summed over the 8 cells.
    """
    rel = (x.to(torch.float64)[:, None, :] - _CORNERS[None]) / width  # (B, 8, 2)
    per_axis = torch.special.ndtr(rel) - torch.special.ndtr(rel - CELL / width)
    return torch.log(per_axis.prod(dim=2).sum(dim=1)) + _LOG_P


def blur_kl(width: float, points: Tensor) -> tuple[float, float]:
    """KL(p || blurred p) and its Monte Carlo standard error, from ``points`` drawn from ``p``."""
    gap = _LOG_P - blurred_log_density(points, width)
    return float(gap.mean()), float(gap.std() / math.sqrt(points.shape[0]))


def edge_kl_1d(width: float, length: float = CELL, steps: int = 200_001) -> float:
    """KL of ``U[0, length]`` from its blur by ``N(0, width^2)``, by the trapezoid rule on ``steps`` points.

    A single square is the product of two such intervals, so its KL is twice this: the exact answer
    the checkerboard's KL approaches as the blur shrinks (its cells touch only at corners).
    """
    x = torch.linspace(0.0, length, steps, dtype=torch.float64)
    q = torch.special.ndtr(x / width) - torch.special.ndtr((x - length) / width)
    return float(torch.trapezoid(-torch.log(q), x) / length)


def width_for_kl(kl: float, points: Tensor, low: float = 1e-4, high: float = 2.0) -> float:
    """The blur width whose KL equals ``kl`` (bisection in log width; the KL grows with the width)."""
    for _ in range(40):
        mid = math.sqrt(low * high)
        low, high = (mid, high) if blur_kl(mid, points)[0] < kl else (low, mid)
    return math.sqrt(low * high)


def floor_png(payload: dict[str, Any]) -> bytes:
    """KL against training time for each run (log-log), with the 0.01 target, the reference's time
    and the KL of a few blur widths as horizontal guides."""
    fig, ax = new_figure(7.0, 4.2)
    for name, run in payload["runs"].items():
        points = [(p["train_s"], p["test_nll"] + _LOG_P) for p in run["curve"] if p["test_nll"] + _LOG_P > 0]
        ax.plot(*zip(*points, strict=True), marker=".", linewidth=1.2, label=short_label(name))
    for blur in payload["blur"]:
        if blur["width"] in (0.01, 0.1):
            ax.axhline(blur["kl"], color="grey", linestyle=":", linewidth=0.8)
            label = f"edges blurred by s = {blur['width']:g}"
            ax.text(
                0.01,
                blur["kl"],
                label,
                transform=ax.get_yaxis_transform(),
                fontsize=7,
                color="grey",
                va="bottom",
            )
    ax.axhline(0.01, color="red", linestyle="--", linewidth=0.8, label="target KL 0.01")
    ax.axvline(
        payload["reference_s"],
        color="black",
        linestyle="--",
        linewidth=0.8,
        label="reference's time for 1500 iterations",
    )
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("training wall time (s)")
    ax.set_ylabel("held-out KL (nats)")
    ax.set_title("checkerboard: KL against training time")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7, loc="upper right")
    return to_png(fig)


def _reference_seconds() -> float:
    results = json.loads((RESULTS / "bench_train.json").read_text())["results"]
    return float(results["checkerboard"]["runs"]["reference"]["train_s"])


def _train_preset(name: str, budget_s: float, reference_s: float, seed: int) -> dict[str, Any]:
    torch.set_num_threads(1)
    from service.ml.data import load_dataset

    data = load_dataset("checkerboard", seed=seed)
    marks = [reference_s * m for m in (0.25, 0.5, 1, 1.5, 2, 3, 4, 5, 6, 8, 10)]
    grid = [budget_s * k / 24 for k in range(1, 25)]
    evals = sorted({round(t, 1) for t in marks + grid if t < budget_s})
    test = data.test[:4096]
    run = train(name, data, test, max_iterations=None, max_train_s=budget_s, eval_at_s=evals, seed=seed)
    return run.summary()


def _kl_at(curve: list[dict[str, float]], seconds: float) -> float | None:
    """KL of the last evaluation at or before ``seconds`` of training (None past the run's end)."""
    point = evaluation_at(curve, seconds) if seconds <= curve[-1]["train_s"] * 1.02 else None
    return None if point is None else point["test_nll"] + _LOG_P


def _add_best(run: dict[str, Any], points: Tensor) -> None:
    """Store the run's lowest KL over its evaluations and the blur width with that KL."""
    run["best_kl"] = min(p["test_nll"] for p in run["curve"]) + _LOG_P
    run["edge_width_at_best"] = width_for_kl(run["best_kl"], points) if run["best_kl"] > 0 else 0.0


def _model_row(name: str, run: dict[str, Any], multiples: list[float], reference_s: float) -> list:
    kls = [_kl_at(run["curve"], m * reference_s) for m in multiples]
    return (
        [name, run["iterations"], f"{run['s_per_iter'] * 1e3:.1f}"]
        + ["-" if kl is None else f"{kl:.3f}" for kl in kls]
        + [f"{run['best_kl']:.3f}", f"{run['edge_width_at_best']:.3f}"]
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="60 s per preset")
    parser.add_argument("--multiple", type=float, default=10.0, help="budget in reference wall times")
    parser.add_argument("--presets", nargs="+", default=[DEFAULT, WIDE])
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    reference_s = _reference_seconds()
    budget_s = 60.0 if args.quick else args.multiple * reference_s
    points = checkerboard(2_000_000, torch.Generator().manual_seed(args.seed)).double()
    blur = [{"width": s, "kl": kl, "stderr": se} for s in BLUR_WIDTHS for kl, se in [blur_kl(s, points)]]
    print("blur KL:", ", ".join(f"s={b['width']:g}: {b['kl']:.4f}" for b in blur), flush=True)
    jobs = [(name, budget_s, reference_s, args.seed) for name in args.presets]
    with ProcessPoolExecutor(max_workers=len(jobs), mp_context=get_context("spawn")) as pool:
        runs = dict(zip(args.presets, pool.map(_train_preset, *zip(*jobs, strict=True)), strict=True))
    multiples = [m for m in (1, 2, 4, 6, 8, 10) if m * reference_s <= budget_s * 1.02] or [
        budget_s / reference_s
    ]
    for run in runs.values():
        _add_best(run, points[:200_000])
    rows = [_model_row(name, run, multiples, reference_s) for name, run in runs.items()]
    headers = ["preset", "iterations", "ms/iter"]
    headers += [f"KL at {m:g}x ref. time" for m in multiples]
    headers += ["best KL seen", "edge width s of that KL"]
    notes = [
        f"Reference time: {reference_s:.0f} s (the checkerboard reference preset's 1500 iterations, "
        f"results/bench_train.json); {budget_s:.0f} s of training per preset, side by side, 1 thread each.",
        "KL = test NLL on 4096 held-out points (dopri5 rtol=atol=1e-5, exact trace) - log 32. "
        "Best KL seen: the lowest of all evaluations (an optimistic pick).",
        "Edge width s: the Gaussian blur of the checkerboard with that KL. KL(p || p * N(0, s^2 I)), "
        "closed form, Monte Carlo over 2e6 points (standard error at most "
        f"{max(b['stderr'] for b in blur):.1e}): "
        + ", ".join(f"s = {b['width']:g}: {b['kl']:.4f}" for b in blur)
        + ".",
    ]
    payload = {
        "quick": args.quick,
        "reference_s": reference_s,
        "budget_s": budget_s,
        "blur": blur,
        "runs": runs,
    }
    name = "bench_kl_floor" + ("_quick" if args.quick else "")
    write_results(name, "Checkerboard: the KL floor", payload, headers, rows, notes)
    if not args.quick:
        IMAGE.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(IMAGE, floor_png(payload))
        print(f"wrote {IMAGE}")


if __name__ == "__main__":
    main()
