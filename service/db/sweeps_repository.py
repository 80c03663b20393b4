"""Sweep persistence: create a sweep with all its runs at once, read, list, cancel, derive status.

A sweep's runs are ordinary ``runs`` rows with ``sweep_id`` set, ``sweep_index`` (position in the
grid's cartesian order) and ``sweep_values`` (``{grid path: value}``). The worker never touches the
``sweeps`` table: a sweep's reported status is derived from its runs by :func:`sweep_status`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from service.db.clock import db_now
from service.db.models import RunRow, RunStatus, SweepRow, utcnow
from service.db.run_filters import after_keyset

__all__ = [
    "SWEEP_STATUSES",
    "cancel_sweep",
    "create_sweep",
    "get_sweep",
    "get_sweep_by_idempotency_key",
    "list_sweeps",
    "runs_by_sweep",
    "sweep_runs",
    "sweep_status",
]

SWEEP_STATUSES = ("queued", "running", "succeeded", "failed", "canceled", "partial", "empty")
"""What ``sweep_status`` can return."""


def sweep_status(statuses: Iterable[str]) -> str:
    """The status of a sweep whose runs have ``statuses``.

    ``queued``: every run is queued. ``running``: some run is running or canceling, or some are
    done while others still wait. Once every run is terminal: the common status when they share
    one (``succeeded``, ``failed``, ``canceled``), else ``partial``. ``empty``: its runs were deleted.
    """
    seen = set(statuses)
    if not seen:
        return "empty"
    if seen == {RunStatus.queued.value}:
        return "queued"
    if not all(RunStatus(s).terminal for s in seen):
        return "running"
    return seen.pop() if len(seen) == 1 else "partial"


def get_sweep_by_idempotency_key(session: Session, key: str) -> SweepRow | None:
    return session.scalars(select(SweepRow).where(SweepRow.idempotency_key == key)).first()


def create_sweep(
    session: Session, sweep: Mapping[str, Any], runs: Sequence[Mapping[str, Any]]
) -> tuple[SweepRow, bool]:
    """Insert the sweep and its queued runs in one transaction (all or nothing).

    Returns ``(sweep, created)``: when a concurrent request with the same ``idempotency_key``
    committed first, its sweep and False (the caller compares ``request_sha256``).
    """
    row = SweepRow(status="open", **sweep)
    session.add(row)
    try:
        session.flush()  # the sweep row first: runs refer to it by id
        queued = {"status": RunStatus.queued.value, "enqueued_at": db_now(session)}  # the reconciler's clock
        session.add_all(RunRow(iteration=0, metrics={}, attempt=0, fence=0, **queued, **f) for f in runs)
        session.commit()
    except IntegrityError:
        session.rollback()
        key = sweep.get("idempotency_key")
        existing = get_sweep_by_idempotency_key(session, key) if key else None
        if existing is None:
            raise
        return existing, False
    return row, True


def get_sweep(session: Session, sweep_id: str) -> SweepRow | None:
    return session.get(SweepRow, sweep_id, populate_existing=True)


def sweep_runs(session: Session, sweep_id: str) -> list[RunRow]:
    """The sweep's runs in grid order."""
    query = select(RunRow).where(RunRow.sweep_id == sweep_id).order_by(RunRow.sweep_index, RunRow.id)
    return list(session.scalars(query))


def runs_by_sweep(session: Session, sweep_ids: Sequence[str]) -> dict[str, list[RunRow]]:
    """``{sweep id: its runs in grid order}`` for a page of sweeps, in one query."""
    out: dict[str, list[RunRow]] = {sweep_id: [] for sweep_id in sweep_ids}
    if not sweep_ids:
        return out
    query = select(RunRow).where(RunRow.sweep_id.in_(sweep_ids)).order_by(RunRow.sweep_index, RunRow.id)
    for run in session.scalars(query):
        out[run.sweep_id].append(run)  # type: ignore[index]
    return out


def list_sweeps(session: Session, *, limit: int, after: tuple[datetime, str] | None = None) -> list[SweepRow]:
    """Newest first; ``after`` is the ``(created_at, id)`` of the last row of the previous page."""
    query = select(SweepRow).order_by(SweepRow.created_at.desc(), SweepRow.id.desc()).limit(limit)
    return list(session.scalars(after_keyset(query, SweepRow, after)))


def cancel_sweep(session: Session, sweep_id: str) -> SweepRow | None:
    """Mark the sweep canceled; its queued runs end ``canceled``, running ones turn ``canceling``.

    Finished runs keep their results. Idempotent; returns None for an unknown sweep.
    """
    row = get_sweep(session, sweep_id)
    if row is None:
        return None
    now = utcnow()
    if row.status != "canceled":
        row.status, row.canceled_at = "canceled", now
    mine = RunRow.sweep_id == sweep_id
    session.execute(
        update(RunRow)
        .where(mine, RunRow.status == RunStatus.queued.value)
        .values(status=RunStatus.canceled.value, finished_at=now, updated_at=now)
    )
    session.execute(
        update(RunRow)
        .where(mine, RunRow.status == RunStatus.running.value)
        .values(status=RunStatus.canceling.value, updated_at=now)
    )
    session.commit()
    return get_sweep(session, sweep_id)
