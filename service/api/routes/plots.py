"""Figures of runs: ``GET /runs/{id}/plots/{kind}.png`` and ``GET /runs/{id}/plots/flow.gif``.

``density``, ``samples``, ``flow`` and ``flow.gif`` need a succeeded point-density run (FFJORD);
``forecast`` a succeeded time-series run (latent ODE); ``loss`` any run that has recorded at least
one iteration (a live run's curve is redrawn on every request). Other statuses answer 409 with
``run_status``; a plot that does not fit the run's model answers 422 naming ``kind``.

Figures of succeeded runs are rendered once and cached under the run's directory in the models
store, keyed by the checkpoint digest (``ModelStore.plot_key``); deleting the run removes them.
"""

from __future__ import annotations

import enum
import uuid
from typing import Any

from fastapi import APIRouter, Response
from sqlalchemy.orm import Session

from service.api.deps import ModelCacheDep, SessionDep, StoreDep
from service.api.errors import ApiError
from service.api.serving import get_run_or_404, run_not_ready
from service.db import RunRow, RunStatus
from service.db import repository as repo
from service.ml.models import MODELS
from service.schemas.runs import Problem
from service.serving.model_cache import ModelCache
from service.serving.run_figures import (
    PlotKind,
    load_point_data,
    needs_kind,
    render_forecast,
    render_history,
    render_points,
)
from service.storage.models_store import ModelStore

__all__ = ["GifResponse", "PngResponse", "router", "run_history"]

router = APIRouter(tags=["plots"])

PngKind = enum.StrEnum("PngKind", {k.value: k.value for k in PlotKind if k != PlotKind.flow_gif})


class PngResponse(Response):
    media_type = "image/png"


class GifResponse(Response):
    media_type = "image/gif"


def _responses(media: str) -> dict[int | str, dict]:
    return {
        200: {"content": {media: {}}, "description": f"The figure ({media})"},
        404: {"model": Problem, "description": "Unknown run"},
        409: {"model": Problem, "description": "Run not succeeded (loss: no iterations yet)"},
        422: {"model": Problem, "description": "This plot does not fit the run's model"},
    }


def _check_model(row: RunRow, kind: PlotKind) -> None:
    wanted, has = needs_kind(kind), MODELS[row.model].data_kind
    if wanted is not None and wanted != has:
        fits = [k.value for k in PlotKind if needs_kind(k) in (None, has)]
        raise ApiError(
            422,
            "wrong_model_kind",
            f"{kind.value} plots need a model of {wanted}; run {row.id} is a {row.model} model of {has}",
            errors=[("kind", f"plots of {row.model} runs: {', '.join(fits)}")],
        )


def run_history(session: Session, run_id: str) -> list[dict[str, Any]]:
    """The run's per-iteration records as the loss figures take them."""
    return [
        {
            "iteration": m.iteration,
            "wall_s": m.wall_s,
            "loss": m.loss,
            "nfe_forward": m.nfe_forward,
            "nfe_backward": m.nfe_backward,
            **(m.extra or {}),
        }
        for m in repo.run_metrics(session, run_id)
    ]


def _loss(session: Session, row: RunRow, store: ModelStore) -> bytes:
    history = run_history(session, row.id)
    if not history:
        raise run_not_ready(row, "this plot needs at least one recorded iteration")
    if row.status != RunStatus.succeeded or not row.checkpoint_sha256:
        return render_history(history)  # still changing (or never finalised): not cached
    key = store.plot_key(row.id, PlotKind.loss.value, row.checkpoint_sha256)
    return store.cached(key, lambda: render_history(history))


def _model_plot(
    session: Session, row: RunRow, kind: PlotKind, store: ModelStore, cache: ModelCache, suffix: str
) -> bytes:
    if row.status != RunStatus.succeeded or not row.checkpoint_sha256:
        raise run_not_ready(row, "this plot needs a succeeded run")
    _check_model(row, kind)
    digest = row.checkpoint_sha256
    seed = int((row.training or {}).get("seed", 0))

    def make() -> bytes:
        entry = cache.get(row.id, digest)
        if kind == PlotKind.forecast:
            with entry.lock:
                return render_forecast(entry.model, row.dataset, seed)
        upload = None
        if row.dataset_id and (found := repo.get_dataset(session, row.dataset_id)) is not None:
            upload = (found.id, found.sha256)
        data = load_point_data(row.dataset, seed, store, upload)
        with entry.lock:  # the CNF keeps per-solve state (NFE counters)
            return render_points(kind, entry.model, data)

    return store.cached(store.plot_key(row.id, kind.value, digest, suffix), make)


@router.get(
    "/runs/{run_id}/plots/flow.gif",
    response_class=GifResponse,
    responses=_responses("image/gif"),
)
def run_flow_gif(run_id: uuid.UUID, session: SessionDep, store: StoreDep, cache: ModelCacheDep) -> Response:
    """Animated flow of held-out points from data (t = 0) to the base distribution (t = T)."""
    row = get_run_or_404(session, run_id)
    return GifResponse(_model_plot(session, row, PlotKind.flow_gif, store, cache, "gif"))


@router.get(
    "/runs/{run_id}/plots/{kind}.png",
    response_class=PngResponse,
    responses=_responses("image/png"),
)
def run_plot(
    run_id: uuid.UUID, kind: PngKind, session: SessionDep, store: StoreDep, cache: ModelCacheDep
) -> Response:
    """A PNG figure of a run: ``density``, ``samples``, ``flow`` (FFJORD), ``forecast`` (latent
    ODE) or ``loss`` (any run with recorded iterations)."""
    row = get_run_or_404(session, run_id)
    plot = PlotKind(kind.value)
    if plot == PlotKind.loss:
        headers = {} if row.status == RunStatus.succeeded else {"Cache-Control": "no-store"}
        return PngResponse(_loss(session, row, store), headers=headers)
    return PngResponse(_model_plot(session, row, plot, store, cache, "png"))
