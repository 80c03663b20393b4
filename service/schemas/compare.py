"""``POST /runs/compare``: a few runs side by side, the settings in which they differ and their metrics."""

from __future__ import annotations

import json
import uuid
from collections.abc import Mapping, Sequence
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from service.db.models import RunRow, RunStatus
from service.schemas.runs import RunOut

__all__ = ["MAX_COMPARE_RUNS", "CompareOut", "CompareRequest", "CompareRun", "check_run_ids", "flatten"]

MAX_COMPARE_RUNS = 20
"""Most runs one comparison may hold."""

SETTING_SECTIONS = ("model_config", "solver", "training", "dataset")


def check_run_ids(run_ids: Sequence[uuid.UUID]) -> list[uuid.UUID]:
    """``run_ids`` when each appears once; ValueError naming the first repeat."""
    seen: set[uuid.UUID] = set()
    for run_id in run_ids:
        if run_id in seen:
            raise ValueError(f"run {run_id} is listed twice; list each run once")
        seen.add(run_id)
    return list(run_ids)


class CompareRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    run_ids: list[uuid.UUID] = Field(
        ...,
        min_length=2,
        max_length=MAX_COMPARE_RUNS,
        description=f"2 to {MAX_COMPARE_RUNS} distinct run ids, in the order of the columns.",
    )

    @field_validator("run_ids")
    @classmethod
    def _distinct(cls, run_ids: list[uuid.UUID]) -> list[uuid.UUID]:
        return check_run_ids(run_ids)


class CompareRun(BaseModel):
    id: str
    name: str | None
    status: RunStatus
    model: str
    dataset: dict[str, Any]


def flatten(value: Mapping[str, Any], prefix: str) -> dict[str, Any]:
    """``{"a": {"b": 1}, "c": [2]}`` under ``p`` -> ``{"p.a.b": 1, "p.c": [2]}`` (lists stay whole)."""
    out: dict[str, Any] = {}
    for key, item in value.items():
        path = f"{prefix}.{key}"
        out |= flatten(item, path) if isinstance(item, Mapping) and item else {path: item}
    return out


def _canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True)


class CompareOut(BaseModel):
    """One column per run, in the order asked for."""

    runs: list[CompareRun]
    settings: dict[str, list[Any]] = Field(
        ...,
        description="Dotted setting path (model_config, solver, training, dataset) -> one value per "
        "run (null where the run has no such setting); only the paths whose values differ.",
    )
    metrics: dict[str, list[Any]] = Field(
        ..., description="Every metric key of any of the runs -> one value per run (null where missing)."
    )
    curves_png: str = Field(..., description="Their loss and test NLL curves overlaid (PNG).")

    @classmethod
    def from_rows(cls, rows: Sequence[RunRow]) -> CompareOut:
        outs = [RunOut.from_row(row) for row in rows]
        flat = [
            {k: v for s in SETTING_SECTIONS for k, v in flatten(getattr(row, s) or {}, s).items()}
            for row in rows
        ]
        paths = sorted({p for f in flat for p in f})
        settings = {
            p: [f.get(p) for f in flat] for p in paths if len({_canonical(f.get(p)) for f in flat}) > 1
        }
        keys = sorted({k for out in outs for k in out.metrics})
        metrics = {k: [out.metrics.get(k) for out in outs] for k in keys}
        return cls(
            runs=[
                CompareRun(id=o.id, name=o.name, status=o.status, model=o.model, dataset=o.dataset)
                for o in outs
            ],
            settings=settings,
            metrics=metrics,
            curves_png=f"/runs/compare/curves.png?run_ids={','.join(o.id for o in outs)}",
        )
