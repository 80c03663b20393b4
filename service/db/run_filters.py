"""``GET /runs`` and ``GET /sweeps`` filters: the WHERE clauses of the list queries.

Split from :mod:`service.db.repository`, whose ``list_runs`` applies these and which re-exports
``after_keyset``; the ordering lives in :mod:`service.db.run_sort`. Read-only: nothing here writes.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import Select, func, literal, or_, select
from sqlalchemy.sql.elements import ColumnElement

from service.db.models import RunRow

__all__ = ["after_keyset", "filter_runs"]


def filter_runs(
    query: Select,
    dialect: str,
    *,
    status: str | None = None,
    model: str | None = None,
    dataset: str | None = None,
    sweep_id: str | None = None,
    name: str | None = None,
    tags: Sequence[str] = (),
) -> Select:
    """``query`` restricted to the runs matching every given filter.

    ``dataset``: a built-in name or an upload's id; ``name``: case-insensitive substring of the
    run's name; ``tags``: the run has every one.
    """
    if status is not None:
        query = query.where(RunRow.status == status)
    if model is not None:
        query = query.where(RunRow.model == model)
    if dataset is not None:
        query = query.where(or_(RunRow.dataset_name == dataset, RunRow.dataset_id == dataset))
    if sweep_id is not None:
        query = query.where(RunRow.sweep_id == sweep_id)
    if name:
        query = query.where(func.lower(RunRow.name).contains(name.lower(), autoescape=True))
    for tag in dict.fromkeys(tags):
        query = query.where(_has_tag(dialect, tag))
    return query


def _has_tag(dialect: str, tag: str) -> ColumnElement[bool]:
    """``runs.tags`` (a JSON list of strings) holds ``tag``: one correlated EXISTS per dialect."""
    elements = "json_array_elements_text" if dialect == "postgresql" else "json_each"
    values = getattr(func, elements)(RunRow.tags).table_valued("value")
    return select(literal(1)).select_from(values).where(values.c.value == tag).exists()


def after_keyset(query: Select, row: Any, after: tuple[datetime, str] | None) -> Select:
    """Keyset pagination, newest first: rows strictly after ``(created_at, id)`` of the last page."""
    if after is None:
        return query
    created, last_id = after
    return query.where(or_(row.created_at < created, (row.created_at == created) & (row.id < last_id)))
