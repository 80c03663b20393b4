"""Request and response models of the sweep routes (``POST /sweeps``, ``GET /sweeps/{id}``, ...)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from service.db.models import RunRow, RunStatus, SweepRow
from service.db.sweeps_repository import sweep_status
from service.jobs.sweeps import MAX_SWEEP_RUNS, SECTIONS, comparison_rows
from service.schemas.runs import RunOut, TrainRequest

__all__ = ["MAX_GRID_PATHS", "SweepList", "SweepOut", "SweepRequest", "SweepStatus", "SweepSummary"]

MAX_GRID_PATHS = 8
"""Most paths one grid may vary."""

SweepStatus = Literal["queued", "running", "succeeded", "failed", "canceled", "partial", "empty"]


class SweepRequest(BaseModel):
    """``POST /sweeps``: a train request and a grid of values to vary in it."""

    model_config = ConfigDict(extra="forbid")

    base: TrainRequest = Field(..., description="A POST /train body every combination starts from.")
    grid: dict[str, list[Any]] = Field(
        ...,
        min_length=1,
        max_length=MAX_GRID_PATHS,
        description=(
            'Dotted path -> values, e.g. {"solver.atol": [0.1, 1e-4, 1e-9]}. Paths: '
            + ", ".join(f"{s}.<field>" for s in SECTIONS[:-1])
            + f", dataset.name. The product of the list lengths is at most {MAX_SWEEP_RUNS}."
        ),
        examples=[{"solver.atol": [0.1, 1e-4, 1e-9]}],
    )
    name: str | None = Field(None, max_length=200, description="Free-form label.")


def _utc(value: datetime | None) -> datetime | None:
    # SQLite hands back naive datetimes; everything is stored in UTC.
    return value.replace(tzinfo=UTC) if value is not None and value.tzinfo is None else value


def _counts(runs: Sequence[RunRow]) -> dict[str, int]:
    counts = {status.value: 0 for status in RunStatus}
    counts.update(Counter(run.status for run in runs))
    return counts


class SweepSummary(BaseModel):
    """A sweep without its runs (``GET /sweeps``)."""

    id: str
    name: str | None
    model: str
    status: SweepStatus = Field(..., description="Derived from the runs' statuses.")
    cancel_requested: bool
    grid: dict[str, list[Any]]
    run_count: int
    counts: dict[str, int] = Field(..., description="Runs per status.")
    created_at: datetime
    canceled_at: datetime | None

    @classmethod
    def fields_from(cls, sweep: SweepRow, runs: Sequence[RunRow]) -> dict[str, Any]:
        return {
            "id": sweep.id,
            "name": sweep.name,
            "model": sweep.model,
            "status": sweep_status(run.status for run in runs),
            "cancel_requested": sweep.status == "canceled",
            "grid": sweep.grid,
            "run_count": sweep.run_count,
            "counts": _counts(runs),
            "created_at": _utc(sweep.created_at),
            "canceled_at": _utc(sweep.canceled_at),
        }

    @classmethod
    def from_rows(cls, sweep: SweepRow, runs: Sequence[RunRow]) -> SweepSummary:
        return cls(**cls.fields_from(sweep, runs))


class SweepOut(SweepSummary):
    """A sweep, its runs in grid order and a comparison table (one row per run)."""

    base: dict[str, Any]
    grid_keys: list[str]
    runs: list[RunOut]
    table: list[dict[str, Any]] = Field(
        ...,
        description="Per run: run_id, its grid values, wall_clock_s, nfe_forward_mean, "
        "nfe_backward_mean (per training iteration, mean over the run), train_loss (final), test_nll "
        "(own solver), test_nll_tight (re-scored at rtol = atol = 1e-8 on the first test points), "
        "test_nll_tight_gap (the two on those same points), kl_to_truth (null where the true "
        "density is unknown), status.",
    )
    plot: str = Field(..., description="Link to the comparison chart (PNG).")

    @classmethod
    def from_rows(cls, sweep: SweepRow, runs: Sequence[RunRow]) -> SweepOut:
        outs = [RunOut.from_row(run) for run in runs]
        plain = [{"status": o.status.value, "metrics": o.metrics, "grid": o.sweep_values} for o in outs]
        rows = comparison_rows(plain, sweep.grid_keys)
        table = [{"run_id": o.id, **row} for o, row in zip(outs, rows, strict=True)]
        return cls(
            **cls.fields_from(sweep, runs),
            base=sweep.base,
            grid_keys=sweep.grid_keys,
            runs=outs,
            table=table,
            plot=f"/sweeps/{sweep.id}/plot.png",
        )


class SweepList(BaseModel):
    items: list[SweepSummary]
    next: str | None = Field(None, description="Link to the next page, null on the last one.")
