"""Honest test likelihoods: re-score a trained density model with a tight solver.

A run reports ``test_nll`` at its own tolerances, and a loose tolerance flatters the model: the
solver's error enters the log-density it reports (``benchmarks/results/tolerance_study.md``: at
atol 1e-1 the reported NLL was 0.012 nats better on average, 0.035 on beta_2, than the same
weights scored at 1e-8). So every
point-density run (FFJORD, arXiv:1810.01367) also re-scores the first ``points`` test points with
``TIGHT_SOLVER``: dopri5 at rtol = atol = 1e-8, the exact trace (``log_prob`` always uses it), in
float64, since float32 cannot resolve a relative error of 1e-8.

The cost is bounded twice: every solve has a step budget (``TIGHT_SOLVER.max_num_steps``, counting
accepted and rejected steps) and the points are scored in chunks of ``CHUNK`` with a wall-clock
deadline checked before each chunk. A solve that fails or a deadline that passes gives
``test_nll_tight = None`` and the reason in ``test_nll_tight_error``; it never fails the run.

Series models (latent ODE, arXiv:1907.03907) are re-scored the same way on their first
``TIGHT_SERIES`` test series: their ``test_nll`` is an importance-weighted bound (nats per series)
whose draws come from a fixed seed, so the own-solver and the tight numbers see the same draws and
differ only by the solver (latent dynamics and, with ``ode_rnn``, the encoder's ODE).
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from service.ml.errors import OdeServeError
from service.ml.models import DensityModel
from service.ml.ode import SolverConfig

__all__ = [
    "CHUNK",
    "TIGHT_MAX_SECONDS",
    "TIGHT_POINTS",
    "TIGHT_SERIES",
    "TIGHT_SOLVER",
    "tight_solver_label",
    "tight_test_nll",
]

TIGHT_SOLVER = SolverConfig(method="dopri5", rtol=1e-8, atol=1e-8, max_num_steps=5000)
TIGHT_POINTS = 1000
"""Test points re-scored (the first ones of the test set; all of it when smaller)."""
TIGHT_SERIES = 100
"""Test series re-scored for a series model (at most ``points`` of them)."""
TIGHT_MAX_SECONDS = 120.0
"""Wall-clock budget of one re-score, checked between chunks."""
CHUNK = 250
SERIES_CHUNK = 25


class _DeadlinePassed(Exception):
    pass


def tight_solver_label(points: int, solver: SolverConfig = TIGHT_SOLVER, what: str = "points") -> str:
    """What ``test_nll_tight`` was scored with, for the run's metrics."""
    trace = "exact trace, " if what == "points" else ""
    return (
        f"{solver.method} rtol={solver.rtol:g} atol={solver.atol:g}, {trace}float64, "
        f"max {solver.max_num_steps} steps per solve, first {points} test {what}"
    )


def _chunks(items: Any) -> list[Any]:
    if isinstance(items, Tensor):
        return list(items.split(CHUNK))
    return [items[i : i + SERIES_CHUNK] for i in range(0, len(items), SERIES_CHUNK)]


def _mean_nll(model: DensityModel, items: Any, deadline: float) -> float:
    total = 0.0
    for chunk in _chunks(items):
        if time.perf_counter() > deadline:
            raise _DeadlinePassed
        total -= float(model.log_prob(chunk).sum())
    return total / len(items)


def _subset(model: DensityModel, test: Any, points: int) -> tuple[Any, str] | None:
    """The test items to re-score and what they are, or None when there is nothing to score."""
    if model.data_kind == "points" and isinstance(test, Tensor) and test.ndim == 2 and len(test):
        return test[:points], "points"
    if model.data_kind == "series" and isinstance(test, Sequence) and len(test):
        return list(test[: min(points, TIGHT_SERIES)]), "series"
    return None


@torch.no_grad()
def tight_test_nll(
    model: DensityModel,
    test: Any,
    *,
    points: int = TIGHT_POINTS,
    max_seconds: float = TIGHT_MAX_SECONDS,
    solver: SolverConfig = TIGHT_SOLVER,
) -> dict[str, Any]:
    """Metrics of ``model`` re-scored on the first ``points`` rows of ``test`` (N, D) with ``solver``.

    ``test`` is a point tensor (N, D) or, for a series model, a sequence of series (the first
    ``TIGHT_SERIES`` are scored). Returns ``{}`` when there is nothing to score. Otherwise:

    - ``test_nll_tight``: mean NLL (nats per point or per series) at ``solver`` in float64, or None;
    - ``test_nll_tight_gap``: ``test_nll_tight`` minus the NLL of the same points at the model's
      own solver (positive: the own tolerance flattered the model), or None;
    - ``test_nll_tight_solver`` (``tight_solver_label``), ``test_nll_tight_points``,
      ``test_nll_tight_s`` (seconds of the tight scoring), and ``test_nll_tight_error`` when it failed.

    ``model`` is left untouched (a float64 copy is scored).
    """
    picked = _subset(model, test, points)
    if picked is None:
        return {}
    subset, what = picked
    n = len(subset)
    started = time.perf_counter()
    deadline = started + max_seconds
    out: dict[str, Any] = {
        "test_nll_tight": None,
        "test_nll_tight_gap": None,
        "test_nll_tight_solver": tight_solver_label(n, solver, what),
        "test_nll_tight_points": n,
    }
    was_training = model.training
    try:
        tight = copy.deepcopy(model).double().eval()
        tight.query_solver = solver
        value = _mean_nll(tight, subset.double() if what == "points" else subset, deadline)
        out["test_nll_tight_s"] = time.perf_counter() - started
        out["test_nll_tight"] = value if math.isfinite(value) else None
        if not math.isfinite(value):
            out["test_nll_tight_error"] = "the tight re-score gave a non-finite NLL"
        model.eval()
        own = _mean_nll(model, subset, math.inf)
        if math.isfinite(value) and math.isfinite(own):
            out["test_nll_tight_gap"] = value - own
    except _DeadlinePassed:
        out["test_nll_tight_error"] = f"the tight re-score ran past its budget of {max_seconds:g} s"
    except OdeServeError as exc:
        out["test_nll_tight_error"] = f"the tight re-score failed: {exc}"
    except (RuntimeError, ValueError, ArithmeticError) as exc:  # e.g. out of memory
        out["test_nll_tight_error"] = f"the tight re-score failed: {type(exc).__name__}: {exc}"[:500]
    finally:
        model.train(was_training)
    out.setdefault("test_nll_tight_s", time.perf_counter() - started)
    return out
