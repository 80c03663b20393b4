"""Validate user time series from JSON or long-format CSV into :class:`~service.ml.series.Series`.

JSON: a list of ``{"times": [t_1, ...], "values": [[v_11, ..., v_1D], ...]}``; ``null`` marks a
missing channel. CSV: a header ``series_id,time,value_1,...,value_D`` and one row per observation;
an empty cell marks a missing channel. Every problem raises a ``DataError`` that names the field
(``series[3].times``, ``csv line 12``) and says how to fix it: unsorted or duplicate times, ragged
values, NaN or inf, too few points, rows with no value, empty input, too many channels.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch

from service.ml.csv_text import csv_lines, decode_csv
from service.ml.errors import DataError
from service.ml.series import Series, make_series

__all__ = [
    "MAX_POINTS_PER_SERIES",
    "MAX_SERIES",
    "MAX_SERIES_DIM",
    "MIN_POINTS_PER_SERIES",
    "series_from_csv",
    "series_for_prediction",
    "series_from_json",
]

MAX_SERIES_DIM = 32
MAX_SERIES = 100_000
MAX_POINTS_PER_SERIES = 10_000
MIN_POINTS_PER_SERIES = 3

Row = list[float | None]


def _number(raw: Any, where: str, what: str) -> float:
    if isinstance(raw, bool) or not isinstance(raw, int | float):
        raise DataError(
            f"{where}: {what} must be a number, got {raw!r}",
            value=raw,
            fix=f"write every {what} as a JSON number",
            field=where,
        )
    value = float(raw)
    if not math.isfinite(value):
        raise DataError(
            f"{where}: {what} is {value} (NaN or inf)",
            value=str(value),
            fix="drop or impute non-finite entries (use null / an empty cell for a missing value)",
            field=where,
        )
    return value


def _check_times(times: Sequence[float], where: str) -> None:
    for i in range(1, len(times)):
        if times[i] == times[i - 1]:
            raise DataError(
                f"{where}: duplicate time {times[i]} at positions {i - 1} and {i}",
                value=times[i],
                fix="merge observations taken at the same time into one row",
                field=where,
            )
        if times[i] < times[i - 1]:
            raise DataError(
                f"{where}: times are not sorted ({times[i - 1]} before {times[i]} at position {i})",
                value=times[i],
                fix="sort each series by time (strictly increasing)",
                field=where,
            )


def _build(
    times: list[float], rows: list[Row], where: str, dim: int, max_dim: int, observed_fraction: float
) -> Series:
    """Common checks for one series; ``rows`` hold floats or ``None`` (missing)."""
    n = len(times)
    if n < MIN_POINTS_PER_SERIES or n > MAX_POINTS_PER_SERIES:
        raise DataError(
            f"{where}: {n} points; a series needs {MIN_POINTS_PER_SERIES} to {MAX_POINTS_PER_SERIES}",
            value=n,
            fix="drop very short series or split very long ones",
            field=where,
        )
    if dim < 1 or dim > max_dim:
        raise DataError(
            f"{where}: series have {dim} value channels; allowed 1 to {max_dim}",
            value=dim,
            fix=f"use at most {max_dim} value columns (and at least one)",
            field=where,
        )
    _check_times(times, f"{where}.times")
    for j, row in enumerate(rows):
        if all(v is None for v in row):
            raise DataError(
                f"{where}.values[{j}]: no channel is observed at time {times[j]}",
                fix="drop rows without any value",
                field=f"{where}.values[{j}]",
            )
    values = torch.tensor([[0.0 if v is None else v for v in row] for row in rows])
    mask = torch.tensor([[0.0 if v is None else 1.0 for v in row] for row in rows])
    return make_series(torch.tensor(times, dtype=torch.float64), values, mask, observed_fraction)


def _check_count(count: int) -> None:
    if count == 0:
        raise DataError("no series given", fix="send at least two series", field="series")
    if count > MAX_SERIES:
        raise DataError(
            f"{count} series; at most {MAX_SERIES} are accepted",
            value=count,
            fix="upload a subset",
            field="series",
        )


def series_from_json(
    items: Any, *, observed_fraction: float = 1.0, max_dim: int = MAX_SERIES_DIM
) -> list[Series]:
    """Validate ``[{"times": [...], "values": [[...], ...]}, ...]`` into series of one dimension.

    ``observed_fraction`` of each series' time span is its encoder part (1.0: all points).
    """
    if not isinstance(items, list):
        raise DataError(
            f"series must be a list, got {type(items).__name__}",
            fix='send [{"times": [...], "values": [[...]]}, ...]',
            field="series",
        )
    _check_count(len(items))
    out: list[Series] = []
    dim: int | None = None
    for i, item in enumerate(items):
        where = f"series[{i}]"
        if not isinstance(item, dict) or not {"times", "values"} <= item.keys():
            raise DataError(
                f"{where} must be an object with 'times' and 'values'",
                fix='send {"times": [t, ...], "values": [[v, ...], ...]}',
                field=where,
            )
        raw_times, raw_values = item["times"], item["values"]
        if not isinstance(raw_times, list) or not isinstance(raw_values, list):
            raise DataError(f"{where}: times and values must be lists", fix="send JSON arrays", field=where)
        if len(raw_values) != len(raw_times):
            raise DataError(
                f"{where}: {len(raw_times)} times but {len(raw_values)} value rows",
                value=[len(raw_times), len(raw_values)],
                fix="give one row of values per time",
                field=f"{where}.values",
            )
        times = [_number(t, f"{where}.times[{j}]", "time") for j, t in enumerate(raw_times)]
        rows: list[Row] = []
        for j, row in enumerate(raw_values):
            cell = f"{where}.values[{j}]"
            if not isinstance(row, list) or (dim is not None and len(row) != dim):
                raise DataError(
                    f"{cell}: expected a row of {dim or 'D'} values, got {row!r}",
                    value=row,
                    fix="give every row the same number of values (null for a missing one)",
                    field=cell,
                )
            dim = len(row) if dim is None else dim
            rows.append([None if v is None else _number(v, cell, "value") for v in row])
        out.append(_build(times, rows, where, dim or 0, max_dim, observed_fraction))
    return out


def series_from_csv(
    content: bytes | str, *, observed_fraction: float = 1.0, max_dim: int = MAX_SERIES_DIM
) -> list[Series]:
    """Parse long-format CSV ``series_id,time,value_1,...`` (series in order of first appearance)."""
    reader = csv_lines(decode_csv(content, "file"), "csv")
    header = next(reader, (1, None))[1]
    if header is None or not [h for h in header if h.strip()]:
        raise DataError("the CSV is empty", fix="upload series_id,time,value_1,... rows", field="csv")
    names = [h.strip().lower() for h in header]
    if names[:2] != ["series_id", "time"] or len(names) < 3:
        raise DataError(
            f"CSV header must start with series_id,time and have value columns, got {header!r}",
            value=header,
            fix="use the header series_id,time,value_1,...,value_D",
            field="csv.header",
        )
    dim = len(names) - 2
    groups: dict[str, tuple[list[float], list[Row]]] = {}
    for line_no, cells in reader:
        if not cells or all(not c.strip() for c in cells):
            continue
        where = f"csv line {line_no}"
        if len(cells) != len(names):
            raise DataError(
                f"{where}: {len(cells)} cells, the header has {len(names)}",
                value=len(cells),
                fix="give every row series_id, time and one cell per value column",
                field=where,
            )
        time = _number(_parse(cells[1], where, allow_empty=False), where, "time")
        row: Row = []
        for cell in cells[2:]:
            parsed = _parse(cell, where, allow_empty=True)
            row.append(None if parsed is None else _number(parsed, where, "value"))
        times, rows = groups.setdefault(cells[0].strip(), ([], []))
        times.append(time)
        rows.append(row)
    _check_count(len(groups))
    return [
        _build(times, rows, f"series_id={sid}", dim, max_dim, observed_fraction)
        for sid, (times, rows) in groups.items()
    ]


def _parse(cell: str, where: str, *, allow_empty: bool) -> float | None:
    cell = cell.strip()
    if not cell:
        if allow_empty:
            return None
        raise DataError(f"{where}: the time is empty", fix="give every row a time", field=where)
    try:
        return float(cell)
    except ValueError:
        raise DataError(
            f"{where}: {cell!r} is not a number",
            value=cell,
            fix="write numbers with a dot as decimal separator; leave missing values empty",
            field=where,
        ) from None


def _tensor(raw: Any, name: str) -> torch.Tensor:
    try:
        tensor = torch.as_tensor(raw, dtype=torch.float64)
    except (TypeError, ValueError, RuntimeError):
        raise DataError(
            f"{name} must be a (nested) list of numbers", fix="send JSON numbers", field=name
        ) from None
    if not bool(torch.isfinite(tensor).all()):
        raise DataError(f"{name} contains NaN or inf", fix="drop non-finite entries", field=name)
    return tensor


def series_for_prediction(
    times: Any, values: Any, mask: Any, predict_times: Any, dim: int
) -> tuple[list[Series], torch.Tensor]:
    """Validate one series (T,), (T, D) or a padded batch (B, T), (B, T, D) plus query times.

    Rows whose mask is all zero are padding and dropped. Returns the series (every point
    observed) and the query times as float64 (B, P).
    """
    times_t = _tensor(times, "times")
    single = times_t.dim() == 1
    values_t = _tensor(values, "values")
    times_b = times_t.unsqueeze(0) if single else times_t
    values_b = values_t.unsqueeze(0) if single else values_t
    if times_b.dim() != 2 or values_b.shape != (*times_b.shape, dim):
        raise DataError(
            f"values must have shape {(*times_t.shape, dim)}, got {tuple(values_t.shape)}",
            value=list(values_t.shape),
            fix=f"give one row of {dim} values per time",
            field="values",
        )
    mask_b = torch.ones_like(values_b) if mask is None else _tensor(mask, "mask")
    mask_b = mask_b.unsqueeze(0) if single and mask is not None else mask_b
    if mask_b.shape != values_b.shape or not bool(((mask_b == 0) | (mask_b == 1)).all()):
        raise DataError(
            "mask must have the shape of values and hold only 0 and 1",
            fix="send 1 for observed and 0 for missing entries",
            field="mask",
        )
    query = times_b[:, -1:] if predict_times is None else _tensor(predict_times, "predict_times")
    query = query.reshape(1, -1).expand(times_b.shape[0], -1) if query.dim() == 1 else query
    if query.dim() != 2 or query.shape[0] != times_b.shape[0] or query.shape[1] < 1:
        raise DataError(
            f"predict_times must have shape (P,) or ({times_b.shape[0]}, P)",
            value=list(query.shape),
            fix="send a list of times (one list per series for a batch)",
            field="predict_times",
        )
    series: list[Series] = []
    for b in range(times_b.shape[0]):
        keep = mask_b[b].sum(-1) > 0
        where = "series" if single else f"series[{b}]"
        kept = times_b[b][keep]
        if kept.numel() == 0:
            raise DataError(f"{where}: no observed value", fix="send at least one", field=where)
        _check_times(kept.tolist(), f"{where}.times")
        series.append(Series(kept, values_b[b][keep].float(), mask_b[b][keep].float(), len(kept)))
    return series, query.contiguous()
