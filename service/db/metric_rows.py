"""Per-iteration metric rows (``run_metrics``): how a history record becomes a row, and the read.

Split from :mod:`service.db.repository`, which re-exports ``run_metrics`` and writes these rows
(fenced) in ``record_progress``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from service.db.models import RunMetricRow

__all__ = ["METRIC_COLUMNS", "metric_row", "run_metrics"]

METRIC_COLUMNS = ("iteration", "wall_s", "loss", "nfe_forward", "nfe_backward")


def metric_row(run_id: str, record: Mapping[str, Any]) -> RunMetricRow:
    """One history record of the training loop as a row: its named columns, the rest in ``extra``."""
    extra = {k: float(v) for k, v in record.items() if k not in METRIC_COLUMNS}
    return RunMetricRow(
        run_id=run_id,
        iteration=int(record["iteration"]),
        wall_s=float(record["wall_s"]),
        loss=float(record["loss"]),
        nfe_forward=int(record["nfe_forward"]),
        nfe_backward=int(record["nfe_backward"]),
        extra=extra,
    )


def run_metrics(
    session: Session, run_id: str, *, limit: int | None = None, after: int | None = None
) -> list[RunMetricRow]:
    """The run's metric rows by iteration: those after iteration ``after``, at most ``limit``."""
    query = select(RunMetricRow).where(RunMetricRow.run_id == run_id)
    if after is not None:
        query = query.where(RunMetricRow.iteration > after)
    query = query.order_by(RunMetricRow.iteration)
    if limit is not None:
        query = query.limit(limit)
    return list(session.scalars(query))
