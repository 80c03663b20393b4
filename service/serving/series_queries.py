"""Latent ODE queries on a loaded model: posterior prediction, prior trajectories, likelihood bounds.

Each function runs the model under the cache entry's lock (the model keeps per-solve NFE state) and
returns JSON-ready lists; non-finite floats become null. Shapes: one series ``times`` (T,),
``values`` (T, D); predictions (P, D); trajectories (n, T, D). Latent ODE: arXiv:1907.03907.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from service.ml.errors import DataError
from service.ml.memory import format_bytes, greedy_chunks
from service.ml.series_io import series_from_json
from service.schemas.json_values import json_floats
from service.schemas.series import MAX_TRAJECTORY_TIMES, MAX_TRAJECTORY_VALUES, PredictRequest, SeriesIn
from service.serving.model_cache import CachedModel

__all__ = [
    "parse_times_param",
    "predict",
    "series_log_density",
    "split_missing",
    "trajectories",
    "validation_rmse",
]

Nested = list[list[float | None]]


def split_missing(rows: Sequence[Sequence[float | None]]) -> tuple[list[list[float]], list[list[float]]]:
    """``null`` entries -> (values with 0 there, a 0/1 mask of the observed entries)."""
    values = [[0.0 if v is None else float(v) for v in row] for row in rows]
    mask = [[0.0 if v is None else 1.0 for v in row] for row in rows]
    return values, mask


def predict(entry: CachedModel, body: PredictRequest, budget: int | None = None) -> tuple[Nested, Nested]:
    """Posterior predictive (mean, std), each (P, D), of one observed series at ``predict_times``.

    ``budget``: bytes the query may be estimated at (``predict_bytes``); over it a ``DataError``
    names ``n_samples`` and the largest count that fits (None: not checked)."""
    if budget is not None:
        _check_predict_memory(entry, body, budget)
    if len(body.values) != len(body.times):
        raise DataError(
            f"{len(body.times)} times but {len(body.values)} value rows",
            value=[len(body.times), len(body.values)],
            fix="give one row of values per time",
            field="values",
        )
    times = body.times
    unsorted = next((i for i in range(1, len(times)) if times[i] <= times[i - 1]), None)
    if unsorted is not None:
        raise DataError(
            f"times must be strictly increasing: times[{unsorted - 1}] = {times[unsorted - 1]} is "
            f"followed by times[{unsorted}] = {times[unsorted]}",
            value=times[unsorted],
            fix="sort the observations by time and merge those taken at the same time",
            field="times",
        )
    values, mask = split_missing(body.values)
    if any(len(row) != entry.model.dim for row in values):
        raise DataError(
            f"every row of values needs {entry.model.dim} entries (the run's series dimension)",
            fix=f"give {entry.model.dim} values per time (null for a missing one)",
            field="values",
        )
    generator = torch.Generator().manual_seed(body.seed)
    with entry.lock, torch.no_grad():
        mean, std = entry.model.predict(  # type: ignore[operator]
            body.times,
            values,
            mask,
            body.predict_times,
            n_samples=body.n_samples,
            generator=generator,
            include_noise=body.include_noise,
        )
    return json_floats(mean), json_floats(std)


def _check_predict_memory(entry: CachedModel, body: PredictRequest, budget: int) -> None:
    cost = entry.model.predict_bytes  # type: ignore[attr-defined]
    times, queries = len(body.times), len(body.predict_times)
    estimate = cost(body.n_samples, times, queries)
    if estimate <= budget:
        return
    fits = next((n for n in range(body.n_samples - 1, -1, -1) if cost(n, times, queries) <= budget), None)
    fix = f"lower n_samples to <= {fits}" if fits else "ask for fewer predict_times"
    raise DataError(
        f"the prediction is estimated at {format_bytes(estimate)}, over the query memory budget of "
        f"{format_bytes(budget)} (ODESERVE_QUERY_MEMORY_BYTES)",
        value=estimate,
        fix=f"{fix}, or split predict_times over several requests",
        field="n_samples" if fits else "predict_times",
    )


def validation_rmse(entry: CachedModel) -> tuple[float | None, float | None]:
    """(model, last-value baseline) forecast RMSE on the run's validation series; None if unknown."""
    found = [getattr(entry.model, name, None) for name in ("val_rmse", "val_rmse_last_value")]
    values = [float(v) if v is not None else math.nan for v in found]
    model, baseline = (v if math.isfinite(v) else None for v in values)
    return model, baseline


def parse_times_param(text: str, field: str = "t") -> list[float]:
    """``"0,0.5,1"`` -> ``[0.0, 0.5, 1.0]``; non-numbers, NaN/inf and too many times raise DataError."""
    cells = text.split(",")
    if len(cells) > MAX_TRAJECTORY_TIMES:
        raise DataError(
            f"{len(cells)} times; at most {MAX_TRAJECTORY_TIMES} are allowed",
            value=len(cells),
            fix=f"ask for at most {MAX_TRAJECTORY_TIMES} times",
            field=field,
        )
    times = []
    for i, cell in enumerate(cells):
        try:
            value = float(cell)
        except ValueError:
            value = math.nan
        if not math.isfinite(value):
            raise DataError(
                f"{field}[{i}] is not a finite number: {cell.strip()[:40]!r}",
                value=cell[:80],
                fix=f"give comma-separated finite times, e.g. {field}=0,0.5,1.0",
                field=field,
            )
        times.append(value)
    return times


def trajectories(
    entry: CachedModel, n: int, seed: int, times: list[float] | None
) -> tuple[list[float], list[Nested]]:
    """``n`` prior trajectories (n, T, D) at ``times`` (default: the model's grid) and the times."""
    count = len(times) if times is not None else 100
    if n * count > MAX_TRAJECTORY_VALUES:
        raise DataError(
            f"n x times = {n} x {count} trajectory points; at most {MAX_TRAJECTORY_VALUES} per request",
            value=n * count,
            fix="lower n or ask for fewer times",
            field="n",
        )
    generator = torch.Generator().manual_seed(seed)
    with entry.lock, torch.no_grad():
        if times is None:
            span = float(entry.model.train_span)  # type: ignore[arg-type]
            times = torch.linspace(0, span, count, dtype=torch.float64).tolist()
        samples = entry.model.sample(n, generator, times=times)
    return list(times), json_floats(samples)


def series_log_density(
    entry: CachedModel, series: Sequence[SeriesIn], budget: int | None = None
) -> list[float | None]:
    """Importance-weighted lower bound on each series' log-likelihood (nats, data units), (B,).

    The series are scored in consecutive chunks whose estimate (``bound_bytes``: the latent states
    on each chunk's union time grid) is within ``budget`` bytes (None: one pass); all chunks draw
    from one generator seeded 0, so one chunk gives what one pass gave. A single series over the
    budget is a ``DataError`` naming it."""
    raw = [item.model_dump() for item in series]
    parsed = series_from_json(raw, observed_fraction=1.0)
    chunks = [(0, len(parsed))]
    if budget is not None:
        cost = entry.model.bound_bytes  # type: ignore[attr-defined]
        lengths = [len(s) for s in parsed]
        chunks = greedy_chunks(lengths, cost, budget, what="series", field="series")
    generator = torch.Generator().manual_seed(0)
    with entry.lock, torch.no_grad():
        bound = torch.cat([entry.model.log_prob(parsed[a:b], generator) for a, b in chunks])  # type: ignore[call-arg]
    return json_floats(bound)
