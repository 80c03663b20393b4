"""Uploaded data sets (``DatasetRow``): create, get and list.

Split from :mod:`service.db.repository`, which re-exports these three, as
:mod:`service.db.sweeps_repository` holds the sweep rows. Upload rows carry no job state.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from service.db.models import DatasetRow

__all__ = ["create_dataset", "get_dataset", "list_datasets"]


def create_dataset(session: Session, **fields: Any) -> DatasetRow:
    row = DatasetRow(**fields)
    session.add(row)
    session.commit()
    return row


def get_dataset(session: Session, dataset_id: str) -> DatasetRow | None:
    return session.get(DatasetRow, dataset_id)


def list_datasets(session: Session) -> list[DatasetRow]:
    return list(session.scalars(select(DatasetRow).order_by(DatasetRow.created_at.desc())))
